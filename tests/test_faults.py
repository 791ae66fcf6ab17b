"""Faults a long run meets, as a person meets them through the command line.

Each fault ends in one `error:` message (naming the flag, file or folder, and what to do)
or one warning, never a traceback; the slow tests also check that a run which met a
damaged checkpoint, a full disk or a second run ends with the params of an uninterrupted one.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import DEMO, ROOT, cli_args, demo_config, final_params, load_config

from stackdistill import errors, teacher, workdir_lock
from stackdistill.data import recordio
from stackdistill.data import targets as stored
from stackdistill.models.config import EncoderConfig


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stackdistill.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _one_error(out: subprocess.CompletedProcess, *names: str) -> list[str]:
    """Exit status 1, `error:` then one line of what to do, no traceback; names every name."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 2 and lines[0].startswith("error: "), out.stderr[-3000:]
    for name in names:
        assert name in lines[0], lines
    return lines


# ---------------------------------------------------------------------- config and flags


def test_misspelt_section_names_the_flag_and_the_nearest_field(tmp_path):
    out = _cli(f"--config={DEMO}", f"--workdir={tmp_path}", "--config.studnet.hidden_size=8")
    _one_error(out, "--config.studnet.hidden_size", "config.student")
    assert not (tmp_path / "log.txt").exists()


def test_missing_config_file_is_named(tmp_path):
    _one_error(_cli("--config=configs/nope.py", f"--workdir={tmp_path}"), "configs/nope.py")


def test_nearest_field_walks_the_dotted_name():
    config = {"student": {"hidden_size": 8, "num_layers": 2}, "seed": 0}
    assert errors.nearest_field(config, "student.hiden_size") == (
        "student.hiden_size",
        "student.hidden_size",
    )
    assert errors.nearest_field(config, "studnet.hidden_size") == ("studnet", "student")
    assert errors.nearest_field(config, "zzz") == ("zzz", None)
    assert errors.nearest_field(config, "student.num_layers") == ("", None)


@pytest.mark.parametrize(
    "error,fact",
    [
        (PermissionError(13, "Permission denied", "/x/out"), "cannot write /x/out: permission"),
        (OSError(30, "Read-only file system", "/x/out"), "read-only file system"),
        (NotADirectoryError(20, "Not a directory", "/x/f/out"), "/x/f/out: a file is in the way"),
        (FileExistsError(17, "File exists", "/x/out"), "/x/out exists and is not a folder"),
    ],
)
def test_os_errors_name_the_path_and_the_fact(error, fact):
    message = errors.os_error_message(error, "/w")
    assert fact in message.splitlines()[0] and len(message.splitlines()) == 2


def test_no_space_is_found_through_a_library_wrapper():
    wrapped = ValueError("RESOURCE_EXHAUSTED: Failed to write 9 bytes [os_error_code='28']")
    assert errors.is_no_space(wrapped) and not errors.is_no_space(ValueError("bad"))
    message = errors.no_space_message(wrapped, "/w", 10)
    assert message.startswith("no space left on device in /w (the last good checkpoint is step 10)")


# ---------------------------------------------------------------------- the workdir lock


def test_second_run_on_a_workdir_stops_at_once_naming_the_owner(tmp_path):
    fd = workdir_lock.acquire(str(tmp_path))
    try:
        start = time.time()
        out = _cli(f"--config={DEMO}", f"--workdir={tmp_path}")
        lines = _one_error(out, str(tmp_path), f"pid {os.getpid()}", "in use by another run")
        assert "started 20" in lines[0] and time.time() - start < 60
    finally:
        os.close(fd)
    assert not (tmp_path / "log.txt").exists()  # the owner's log is not written to


def test_a_killed_owner_does_not_block_the_next_run(tmp_path):
    script = (
        "import sys, time; from stackdistill import workdir_lock;"
        "workdir_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(errors.RunError, match=f"pid {proc.pid}"):
        workdir_lock.acquire(str(tmp_path))
    proc.send_signal(signal.SIGKILL)  # a crash or a preemption: no clean-up runs
    proc.wait()
    os.close(workdir_lock.acquire(str(tmp_path)))


# ---------------------------------------------------------------------- damaged shards


def _write_shards(folder, num_shards=3, per_shard=4):
    folder.mkdir()
    for k in range(num_shards):
        w = recordio.writer(folder / f"targets-p000-{k:05d}{recordio.SUFFIX}")
        for i in range(per_shard):
            rng = np.random.default_rng([k, i])  # random: nothing to compress
            arrays = {
                "audio": rng.integers(-(2**15), 2**15, 2000).astype(np.int16),
                "targets": rng.normal(size=(1, 50, 64)).astype(np.float32),
            }
            w.write(stored.encode_record(f"u{k}-{i}", arrays, 50))
        w.close()


@pytest.mark.parametrize("where,named", [(0.1, "(record 1)"), (0.5, "(its index does not read)")])
def test_damaged_shard_is_named_with_its_record_and_what_to_do(tmp_path, where, named):
    folder = tmp_path / "targets"
    _write_shards(folder)
    bad = folder / f"targets-p000-00001{recordio.SUFFIX}"
    data = bytearray(bad.read_bytes())
    at = int(len(data) * where)  # 0.1: a record's chunk; 0.5: the block holding the index
    data[at : at + 64] = b"\xff" * 64  # bytes overwritten in the middle of the file
    bad.write_bytes(bytes(data))
    with pytest.raises(errors.RunError) as err:
        source = stored.TargetSource(folder)
        assert source[0]["name"] == "u0-0"
        for i in range(len(source)):
            source[i]
    first, todo = str(err.value).splitlines()
    assert first.startswith(f"damaged shard {bad} {named}: Corrupted Riegeli"), first
    assert "--mode=cache" in todo


# ---------------------------------------------------------------------- the teacher cache


def test_teacher_cache_keeps_one_entry_per_checkpoint_and_drops_gone_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path / "cache"))
    arch = {**dict(load_config(DEMO).teacher.random_arch), "num_layers": 1}
    cfg = EncoderConfig(**arch)
    first = teacher.write_random(tmp_path / "run1" / "teacher", cfg)
    second = tmp_path / "run2" / "teacher"
    shutil.copytree(first, second)  # the same checkpoint in another (temporary) workdir
    teacher.load(str(first))
    teacher.load(str(second))
    entries = [p for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir()]
    assert len(entries) == 1
    shutil.rmtree(tmp_path / "run1")
    shutil.rmtree(tmp_path / "run2")
    other = teacher.write_random(tmp_path / "run3" / "teacher", cfg, seed=1)
    teacher.load(str(other))
    entries = [p for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir()]
    assert len(entries) == 1 and str(other.resolve()) in (entries[0] / "sources.json").read_text()


# ---------------------------------------------------------------------- whole runs (slow)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


def _args(shared, workdir, *extra):
    c = demo_config(shared)
    return cli_args(c, workdir)[3:] + list(extra)  # without `python -m stackdistill.main`


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    """An uninterrupted 16-step run that keeps every checkpoint (2, 4, ..., 16)."""
    workdir = tmp_path_factory.mktemp("reference")
    out = _cli(*_args(shared, workdir, "--config.keep_checkpoints=20"))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def _same_final_params(workdir, reference):
    step_a, params_a = final_params(reference)
    step_b, params_b = final_params(workdir)
    assert step_a == step_b == 16
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)


@pytest.mark.slow
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes(shared, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    for step in (10, 12, 14, 16):  # as if the run had stopped at step 8 ...
        shutil.rmtree(workdir / "checkpoints" / str(step))
    os.remove(workdir / "summary.json")
    data = max((workdir / "checkpoints/8/state").rglob("d/*"), key=lambda p: p.stat().st_size)
    os.truncate(data, data.stat().st_size // 2)  # ... in the middle of writing step 8
    out = _cli(*_args(shared, workdir, "--config.keep_checkpoints=20"))
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "step 8 does not restore" in warnings[0], out.stderr
    assert f"moved aside to {workdir}/checkpoints_damaged/8" in warnings[0]
    assert "resuming from step 6" in warnings[0] and "Traceback" not in out.stderr
    assert (workdir / "checkpoints_damaged" / "8" / "state").is_dir()  # kept, not deleted
    _same_final_params(workdir, reference)


@pytest.mark.slow
def test_no_checkpoint_restores_is_one_error_naming_them(shared, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    for step in (10, 12, 14, 16):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    for path in (workdir / "checkpoints").rglob("d/*"):
        os.truncate(path, 10)
    out = _cli(*_args(shared, workdir, "--config.keep_checkpoints=20"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[-2].startswith(f"error: no checkpoint in {workdir}/checkpoints restores")
    assert "steps 8, 6, 4, 2, 1" in lines[-2] and not (workdir / "checkpoints_damaged").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 5 MiB tmpfs (root only): the demo's checkpoints fill it after a few saves."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)])
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


@pytest.mark.slow
def test_full_disk_is_one_error_and_the_run_resumes_once_space_is_freed(
    shared, reference, small_disk
):
    workdir = small_disk / "run"
    out = _cli(*_args(shared, workdir))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[-2].startswith(f"error: no space left on device in {workdir} (the last good ")
    last = int(lines[-2].split("checkpoint is step ")[1].split(")")[0])
    assert last == final_params(workdir)[0]
    assert len(lines) <= 16 + 4 + 3, out.stderr  # step, stage and teacher lines, the error
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    out = _cli(*_args(shared, workdir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {last}" in out.stderr
    _same_final_params(workdir, reference)


@pytest.mark.slow
def test_two_runs_racing_for_one_workdir(shared, reference, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "stackdistill.main", *_args(shared, workdir)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = outs[[p.returncode for p in procs].index(1)][1]
    lines = loser.strip().splitlines()
    assert lines[-2].startswith(f"error: {workdir} is in use by another run (host ")
    assert "Traceback" not in loser and len(lines) <= 3
    _same_final_params(workdir, reference)


@pytest.mark.slow
def test_damaged_targets_shard_is_named_and_rebuilt_alone(shared, tmp_path):
    flags = ["--config.targets.dir=targets", "--config.targets.shards=3"]
    out = _cli(*_args(shared, tmp_path, "--mode=cache", *flags))
    assert out.returncode == 0, out.stderr[-3000:]
    bad = tmp_path / "targets" / f"targets-p000-00001{recordio.SUFFIX}"
    good = bad.read_bytes()
    data = bytearray(good)
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    bad.write_bytes(bytes(data))
    out = _cli(*_args(shared, tmp_path, *flags))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[-2].startswith(f"error: damaged shard {bad} (")
    assert "Corrupted Riegeli/records file" in lines[-2] and "--mode=cache" in lines[-1]
    bad.unlink()
    out = _cli(*_args(shared, tmp_path, "--mode=cache", *flags))
    assert out.returncode == 0 and f"rebuilt {bad.name}" in out.stderr, out.stderr[-3000:]
    assert bad.read_bytes() == good


@pytest.mark.slow
def test_export_onto_a_file_is_one_error(shared, reference, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = _cli(*_args(shared, reference, "--mode=export", f"--config.export.out_dir={blocker}/x"))
    _one_error(out, f"{blocker}/x", "a file is in the way")


@pytest.mark.slow
def test_export_into_a_read_only_folder_is_one_error(shared, reference, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
    elif subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)]
    ).returncode:
        pytest.skip("root ignores file modes and no read-only tmpfs can be mounted here")
    try:
        out = _cli(
            *_args(shared, reference, "--mode=export", f"--config.export.out_dir={folder}/x")
        )
        _one_error(out, f"cannot write {folder}/x")
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.slow
def test_sigterm_saves_within_a_step_or_two(shared, tmp_path):
    """A SIGTERM mid-window saves at the next step, not at the window's end (step 200)."""
    args = _args(shared, tmp_path) + [
        "--config.total_steps=800",  # stage 0: steps 0-200
        "--config.log_every=100",
        "--config.checkpoint_every=1000",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackdistill.main", *args],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    for line in proc.stderr:
        if line.startswith("step 100:"):
            time.sleep(0.3)  # the loop has dispatched the window and waits on the device
            proc.send_signal(signal.SIGTERM)
            break
    proc.stderr.read()
    assert proc.wait(timeout=300) == 0
    step = final_params(tmp_path)[0]
    assert 100 <= step < 180, step
