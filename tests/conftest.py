import os
import pathlib
import sys

import pytest

# The suite is a CPU suite. With libtpu installed (the `tpu` extra, for the compile-only TPU
# tests) JAX would otherwise try a TPU backend first in every test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# tests/ helpers (hf_fixtures) import as plain modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> str:
    """Manifest of a small espeak-ng corpus (48 utterances, seed 0), generated once a session."""
    from stackdistill.data import synth

    return synth.generate(str(tmp_path_factory.mktemp("synth")), 48, seed=0)


@pytest.fixture(scope="session")
def demo_shared(tmp_path_factory):
    """Demo teacher, corpus and XLA compilation cache (`xla_cache`) shared by a session's runs.

    Runs of the same config load each stage's compiled step from the cache instead of
    compiling it again (about 1 s instead of 10 s on 2 cores).
    """
    return tmp_path_factory.mktemp("demo_shared")
