"""stackdistill.hostmem: STACKDISTILL_MALLOC=keep makes glibc keep freed memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stackdistill import hostmem

# Mallocs, touches and frees a 256 MB buffer five times, after hostmem.configure(mode); prints
# the minor page faults of each round.
_SCRIPT = """
import ctypes, json, resource, sys
from stackdistill import hostmem
applied = hostmem.configure(sys.argv[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf = libc.malloc(256 << 20)
    ctypes.memset(buf, 1, 256 << 20)
    libc.free(buf)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_stops_refaulting_freed_buffers():
    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    default = _faults("default")
    assert not default["applied"]
    # glibc's default unmaps the buffer on free: every round faults all of it in again.
    assert all(f > 0.9 * pages for f in default["faults"]), default
    keep = _faults("keep")
    assert keep["applied"]
    assert keep["faults"][0] > 0.9 * pages  # the first touch still faults
    assert all(f < 0.01 * pages for f in keep["faults"][1:]), keep


def test_bad_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv(hostmem.ENV, "fast")
    with pytest.raises(ValueError, match="STACKDISTILL_MALLOC='fast'"):
        hostmem.configure()
