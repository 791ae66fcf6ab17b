"""One run per workdir: an advisory lock on WORKDIR/run.lock, held while a run writes there.

The lock is the kernel's (`fcntl.flock`) on a file that names its owner (host, pid, start
time), so it goes when its process goes: a run killed, crashed or preempted never blocks
the resume that follows, and nothing has to be cleaned by hand. A second run on the same
workdir stops at once, naming the owner.

What is guaranteed where:
- a local folder: exactly one run at a time, for every process of the machine;
- a shared network folder (NFS): as far as the server honours locks (NFSv4 and Linux's
  NFS client do; a client that dies holds its lock until the server's lease ends);
- several processes of one job (multi-host): process 0 takes the lock for the job and
  tells the others whether it got it, so they all stop together;
- `gs://` and other object stores: no lock (they have no advisory locks); a warning says so
  and the caller must not start two runs on one bucket folder.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator

import jax

from stackdistill import errors

LOCK_NAME = "run.lock"
log = logging.getLogger("stackdistill")


def _owner() -> dict[str, object]:
    now = datetime.datetime.now().astimezone()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now.isoformat("T", "seconds"),
    }


def _describe(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
        return f"host {owner['host']}, pid {owner['pid']}, started {owner['started']}"
    except (OSError, ValueError, KeyError):
        return "an owner that has not written its name yet"


def acquire(workdir: str) -> int | None:
    """Takes the workdir's lock for this process (file descriptor) or raises RunError."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise errors.RunError(
            f"{workdir} is in use by another run ({_describe(path)}).\n"
            "Wait for it to end, or use another --workdir."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(_owner()) + "\n").encode())
    os.fsync(fd)
    return fd


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """While the block runs, this job owns `workdir` (module docstring for what that means)."""
    workdir = str(workdir)
    if "://" in workdir:
        log.warning("%s: object stores have no locks; start one run per folder", workdir)
        yield
        return
    fd, refusal = None, None
    if jax.process_index() == 0:
        try:
            fd = acquire(workdir)
        except errors.RunError as e:
            refusal = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        got = multihost_utils.broadcast_one_to_all(int(refusal is None))
        if not int(got) and refusal is None:
            refusal = errors.RunError(f"{workdir} is in use by another run (see process 0).")
    if refusal is not None:
        raise refusal
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays (unlinking it would race)
