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
    # TFDS's audio builders (librispeech, speech_commands) need TensorFlow even to construct.
    "tfds": ["tensorflow-cpu>=2.17"],
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
