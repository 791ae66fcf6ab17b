"""stackdistill: distil speech foundation models into small students with interleaved stacking."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain>=0.2.18",
    "array-record>=0.8",
    "transformers>=5.0",
    "safetensors>=0.6",
    "huggingface-hub>=1.0",
    "tensorflow-datasets>=4.9.10",
    "ml-collections>=1.1",
    "absl-py>=2.1",
    "tensorboardX>=2.6",  # clu imports TensorFlow everywhere; tensorboardX writes events without it
    "soundfile>=0.13",
    "scipy>=1.14",
    "numpy>=2.0",
    "matplotlib>=3.9",
    "tqdm>=4.66",
    "espeakng-loader>=0.2.4",  # ships libespeak-ng: the offline demo's synthetic speech
]

EXTRAS = {
    # torch is pinned: a bare `torch` pulls a multi-GB CUDA build; 2.13.0 is the CPU build
    # the reference/conversion tests and benchmarks run against.
    "dev": [
        "pytest>=8",
        "ruff>=0.6",
        "torch==2.13.0",
        "nbclient>=0.10",  # executes the notebooks in tests
        "nbformat>=5.10",
        "ipykernel>=6.29",
    ],
    # libtpu (~0.7 GB) at jax's own version: real TPU VMs, and compile-only TPU devices on a
    # CPU machine for `--mode=compile` and the TPU compile tests CI runs (tests/test_aot.py,
    # test_costmodel.py, test_chips.py).
    "tpu": ["jax[tpu]"],
    # TFDS's audio builders (librispeech, speech_commands) need TensorFlow even to construct.
    "tfds": ["tensorflow-cpu>=2.17"],
    # Evaluating exports with s3prl (tests/test_export_s3prl.py; README "Evaluate a student
    # with s3prl"): s3prl's pure-python dependency only. s3prl==0.4.18 and torchaudio==2.8.0
    # themselves go in with `pip install --no-deps`: with their dependencies pip would
    # replace the pinned CPU torch (every torchaudio wheel pins its own torch build).
    "s3prl": ["omegaconf>=2.1"],
}

setup(
    name="stackdistill",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["stackdistill", "stackdistill.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
