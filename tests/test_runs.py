"""Runs under a person's hands: the resume guard, finished runs, kills, and the console.

One 16-step demo run through the command line (`reference`) is the run every test reruns,
resumes or compares with; the compilation cache it fills makes the later runs cheap.
"""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from helpers import cli_args, compilation_cache, demo_config

from stackdistill import distributed, resume, train, writers
from stackdistill import stage as stage_lib

# Console lines of a run on a non-terminal: one per log window and per stage, and at most
# this many others (README, "Console").
OTHER_LINES = 6


@pytest.fixture(scope="module")
def shared(demo_shared):
    return demo_shared


def _config(shared, **overrides):
    """The demo config as the command line of `cli_args` builds it."""
    return demo_config(shared, compilation_cache_dir=str(shared / "xla_cache"), **overrides)


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    """(workdir, console output) of an uninterrupted 16-step run through the command line."""
    workdir = tmp_path_factory.mktemp("reference")
    out = subprocess.run(cli_args(_config(shared), workdir), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out.stdout + out.stderr


def _snapshot(workdir):
    """Bytes of every report file a rerun must leave alone."""
    files = [workdir / "summary.json", workdir / "loss.png"]
    files += sorted((workdir / "tensorboard").iterdir())
    return {str(p): p.read_bytes() for p in files}


def test_console_stays_under_its_line_budget(reference):
    workdir, output = reference
    lines = output.splitlines()
    c = demo_config(workdir)
    windows = c.total_steps // c.log_every
    assert sum(line.startswith("step ") for line in lines) == windows
    for stage in range(4):  # each stage's line once, not through both tqdm and logging
        assert sum(line.startswith(f"stage {stage}: depth") for line in lines) == 1
    assert len(lines) <= windows + 4 + OTHER_LINES, output
    assert "orbax" not in output and "_NonBlockingMetadataStore" not in output
    log_txt = (workdir / "log.txt").read_text()
    assert "stage 3: depth 12" in log_txt and "orbax" in log_txt  # the full log


def _metrics(workdir):
    """metrics.jsonl: (log windows, compile records)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if "loss" in r], [r for r in records if "compile_s" in r]


def test_metrics_jsonl_holds_every_window_and_compile_at_full_precision(reference):
    workdir, _ = reference
    summary = json.loads((workdir / "summary.json").read_text())
    windows, compiles = _metrics(workdir)
    assert [[r["step"], r["loss"]] for r in windows] == summary["loss_history"]
    assert windows[-1] == {"step": 16, "time": windows[-1]["time"], **summary["final_metrics"]}
    assert [(r["stage"], r["step"]) for r in compiles] == [(0, 0), (1, 4), (2, 8), (3, 12)]
    assert {str(r["stage"]): r["compile_s"] for r in compiles} == summary["compile_seconds"]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    times = [json.loads(line)["time"] for line in lines]
    assert len(times) == 20 and times == sorted(times)


def test_verbosity_flag_brings_third_party_info_back(shared, reference):
    workdir, _ = reference
    args = cli_args(_config(shared), workdir) + ["--verbosity=0"]
    out = subprocess.run(args, capture_output=True, text=True)  # finished: nothing compiles
    assert out.returncode == 0, out.stderr[-3000:]
    assert "info (absl): " in out.stderr and "is finished" in out.stderr


def test_finished_run_rerun_changes_nothing_and_compiles_nothing(shared, reference, monkeypatch):
    workdir, _ = reference
    before = _snapshot(workdir)

    def fail(*_):
        raise AssertionError("a finished run compiled or reopened its writers")

    monkeypatch.setattr(stage_lib, "compile_step", fail)
    monkeypatch.setattr(train, "RunWriter", fail)
    summary = train.train_and_evaluate(_config(shared), str(workdir))
    assert _snapshot(workdir) == before
    assert summary == json.loads(before[str(workdir / "summary.json")])
    assert summary["steps"] == 16 and len(summary["loss_history"]) == 16
    assert "is finished (checkpoint at step 16" in (workdir / "log.txt").read_text()
    # Killed between its last checkpoint and its report: the report comes from the checkpoint.
    (workdir / "summary.json").unlink()
    again = train.train_and_evaluate(_config(shared), str(workdir))
    assert json.loads((workdir / "summary.json").read_text()) == again
    seconds, seconds_again = summary.pop("stage_seconds"), again.pop("stage_seconds")
    assert again == summary and seconds_again.keys() == seconds.keys() == {"0", "1", "2", "3"}
    for stage, value in seconds.items():  # the last save came a moment before the stage end
        assert 0 < seconds_again[stage] <= value


def test_changed_stacking_method_is_refused_unless_named(shared, reference, monkeypatch):
    workdir, _ = reference
    with pytest.raises(resume.ResumeMismatch, match="stacking.method: 'interleaved' -> 'top'"):
        train.train_and_evaluate(_config(shared, **{"stacking.method": "top"}), str(workdir))
    monkeypatch.setattr(stage_lib, "compile_step", lambda *_: pytest.fail("compiled"))
    allowed = _config(shared, **{"stacking.method": "top", "resume_changed": "stacking.method"})
    assert train.train_and_evaluate(allowed, str(workdir))["steps"] == 16  # finished: left be


def test_changed_width_fails_fast_with_one_message(shared, reference):
    workdir, _ = reference
    steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    args = cli_args(_config(shared), workdir) + ["--config.student.hidden_size=48"]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 1
    assert "student.hidden_size: 32 -> 48" in out.stderr
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) <= 6, out.stderr
    assert lines[-1].startswith("To train a different run, use a new --workdir")
    assert "--config.resume_changed=student.hidden_size" in lines[-1]
    assert "compiled" not in out.stderr + out.stdout
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == steps


class _Killed(Exception):
    """Stands for a SIGKILL: the process stops where it is, no final save."""


def test_run_killed_twice_reports_all_its_steps(shared, reference, tmp_path, monkeypatch, caplog):
    workdir, _ = reference
    expected = json.loads((workdir / "summary.json").read_text())["loss_history"]
    with compilation_cache(_config(shared).compilation_cache_dir):  # the reference's steps
        _kill_twice_and_resume(shared, expected, tmp_path, monkeypatch, caplog)


def _kill_twice_and_resume(shared, expected, tmp_path, monkeypatch, caplog):
    kill_at: list[int] = []

    def stop_before(self, step):
        if step in kill_at:
            raise _Killed(step)
        return False

    monkeypatch.setattr(distributed.Preemption, "stop_before", stop_before)
    plotted = []
    plot = writers._plot_loss
    monkeypatch.setattr(
        writers, "_plot_loss", lambda path, h, b: (plotted.append(list(h)), plot(path, h, b))
    )
    c = _config(shared)  # checkpoints every 2 steps: each kill loses the step after one
    for kill in (5, 11):
        kill_at[:] = [kill]
        with pytest.raises(_Killed):
            train.train_and_evaluate(c, str(tmp_path))
    kill_at[:] = []
    with caplog.at_level(logging.INFO, logger="stackdistill"):
        summary = train.train_and_evaluate(_config(shared, log_every=2), str(tmp_path))
    assert "resume: log_every: 1 -> 2" in caplog.text  # a cadence change passes, noted
    steps = [s for s, _ in summary["loss_history"]]
    assert steps == list(range(1, 11)) + [12, 14, 16]  # from step 10's checkpoint on: every 2
    np.testing.assert_array_equal(summary["loss_history"][:10], expected[:10])
    pairs = np.asarray(expected, np.float32)[10:, 1].reshape(3, 2)
    np.testing.assert_allclose(
        [v for _, v in summary["loss_history"][10:]], pairs.mean(axis=1), rtol=1e-6
    )
    assert plotted[-1] == summary["loss_history"] and (tmp_path / "loss.png").exists()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    windows, compiles = _metrics(tmp_path)  # the three runs' lines, appended
    last = {r["step"]: r["loss"] for r in windows}  # a step logged twice: the later line
    assert all(last[s] == v for s, v in summary["loss_history"])
    assert last.keys() - {s for s, _ in summary["loss_history"]} == {11}  # logged, then killed
    seconds = {}
    for r in compiles:
        seconds[str(r["stage"])] = seconds.get(str(r["stage"]), 0.0) + r["compile_s"]
    # A compile before a kill counts in the record when a checkpoint followed it.
    assert seconds.keys() == summary["compile_seconds"].keys() == set("0123")
    assert seconds["3"] == pytest.approx(summary["compile_seconds"]["3"])


def test_empty_folder_manifest_exits_nonzero(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    out = subprocess.run(
        [sys.executable, "-m", "stackdistill.data.manifest", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert f"no usable audio in {tmp_path}" in out.stderr
    assert not (tmp_path / "manifest.tsv").exists()
