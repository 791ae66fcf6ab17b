"""The command line's process setup: the persistent compilation cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Configures the cache as main() does, compiles one function, reports jax's cache events.
_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, ml_collections
from stackdistill import main
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
main._use_compilation_cache(ml_collections.ConfigDict({"compilation_cache_dir": sys.argv[1]}))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
y = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64)))
print(json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses"),
                  "y": float(y)}))
"""


def _compile_once(cache_dir) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(cache_dir)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_compiled_step_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first = _compile_once(cache)
    assert first["hits"] == 0 and first["misses"] >= 1
    assert any(cache.iterdir()), "nothing written to the cache directory"
    second = _compile_once(cache)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert second["y"] == first["y"]


@pytest.mark.parametrize("value", ["", None])
def test_compilation_cache_off_when_empty_or_absent(value, monkeypatch):
    import jax
    import ml_collections

    from stackdistill import main

    calls = []
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    cfg = ml_collections.ConfigDict({} if value is None else {"compilation_cache_dir": value})
    main._use_compilation_cache(cfg)
    assert calls == []
