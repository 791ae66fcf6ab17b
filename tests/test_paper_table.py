"""benchmarks/paper_table.py: its statistics by hand, resuming after a kill, the whole harness.

The fast tests drive the real harness (cells, resume, table, JSON, PNG) with cheap stand-ins
for the distillation and evaluation of a cell; the slow ones run it for real: a 2-cell,
1-seed, few-step table that is killed between cells and resumed, and `--quick` end to end."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats as scipy_stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import table_stats  # noqa: E402


def test_paired_comparison_against_a_hand_computation():
    a, b = [0.80, 0.70, 0.90], [0.60, 0.65, 0.70]
    # By hand: d = (0.20, 0.05, 0.20), mean 0.15, sample sd sqrt(0.0075), se 0.05, t = 3.0 on
    # 2 degrees of freedom; t_0.975(2) = 4.302653 (Student-t table).
    out = table_stats.paired(a, b, higher_is_better=True)
    assert out["n"] == 3 and out["wins"] == 3
    np.testing.assert_allclose(out["mean"], 0.15, rtol=1e-12)
    np.testing.assert_allclose(out["t"], 3.0, rtol=1e-9)
    np.testing.assert_allclose(out["ci"], [0.15 - 4.302653 * 0.05, 0.15 + 4.302653 * 0.05], 1e-6)
    reference = scipy_stats.ttest_rel(a, b)
    np.testing.assert_allclose(out["p"], reference.pvalue, rtol=1e-9)
    np.testing.assert_allclose(out["t"], reference.statistic, rtol=1e-9)
    # Lower is better (PER, loss, time): a wins where a - b < 0.
    assert table_stats.paired([1.0, 3.0], [2.0, 2.0], higher_is_better=False)["wins"] == 1
    single = table_stats.paired([1.0], [2.0], True)
    assert single["ci"] is None and single["p"] is None and single["mean"] == -1.0
    m = table_stats.mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3)
    np.testing.assert_allclose(
        m["ci"], [2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)], 1e-6
    )


def test_score_depth_match_and_profile_correlation():
    assert table_stats.superb_score(
        {"ks_acc": 0.5, "sid_acc": 0.8, "pr_per": 0.3}
    ) == pytest.approx(100 * (0.5 + 0.8 + 0.7) / 3)
    assert table_stats.relative_depth_index(12, 6) == [0, 2, 4, 6, 8, 10, 12]
    teacher = {"speaker": [0.1, 0.5, 0.9, 0.6]}
    student = {"speaker": [0.2, 0.0, 0.6, 0.0, 1.0, 0.0, 0.7]}  # the even entries track it
    r = table_stats.profile_correlation(student, teacher, [0, 2, 4, 6])
    np.testing.assert_allclose(r, np.corrcoef([0.2, 0.6, 1.0, 0.7], teacher["speaker"])[0, 1])


def _paper_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_table", ROOT / "benchmarks/paper_table.py")
    module = sys.modules["paper_table"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_superb_config_sets_the_head_steps_that_training_reads(tmp_path):
    pt = _paper_table()
    spec = pt.table_spec()
    config = pt.superb_config(spec, tmp_path, tmp_path)
    for task, steps in dict(spec.head_steps).items():
        assert config.superb[task].total_steps == steps
        assert "steps" not in config.superb[task]  # no stray field beside the one read


def test_a_table_folder_takes_more_cells_but_not_another_spec(tmp_path):
    pt = _paper_table()
    spec = pt.table_spec()
    pt.check_spec(spec, tmp_path)
    spec.seeds, spec.ablations = (0, 1, 2, 3), ("weight_0",)  # more cells: welcome
    pt.check_spec(spec, tmp_path)
    spec.steps += 1
    spec.head_steps.ks_synth += 1
    with pytest.raises(SystemExit, match="head_steps, steps differ"):
        pt.check_spec(spec, tmp_path)


FAKE_RUN = """
import importlib.util, json, os, pathlib, signal, sys
sys.path.insert(0, str(pathlib.Path(sys.argv[1]).parent))  # benchmarks/, as for the script
spec = importlib.util.spec_from_file_location("paper_table", sys.argv[1])
pt = sys.modules["paper_table"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pt)
workdir, kill_at = pathlib.Path(sys.argv[2]), sys.argv[3]

def fake_cell(spec, cell, teacher_dir, teacher_cell, workdir):
    with open(workdir / "calls.txt", "a") as f:
        f.write(cell.key + "\\n")
    if cell.key == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    x = 0.1 * (pt.METHODS.index(cell.method) + 1) + 0.01 * cell.seed
    score = 100 * (0.5 + x) / 3
    return {"key": cell.key, "row": cell.row, "method": cell.method, "schedule": cell.schedule,
            "seed": cell.seed, "ablation": cell.ablation, "wall_s": 10 + x, "steps_s": 8 + x,
            "compile_s": 1.0, "eval_s": 2.0, "profile_r": x, "cka_diagonal": [1.0, x, 2 * x],
            "final_losses": {"loss": 1 - x},
            "downstream": {"pr_per": 0.5, "sid_acc": x, "ks_acc": 0.5, "score": score},
            "evals": [{"step": 4, "wall_s": 5.0, "score": score - 1}, {"step": 8, "wall_s": 10.0,
                       "score": score}],
            "curve": [[1.0, 2, 2.0], [2.0, 4, 1.5], [3.0, 6, 1.2], [4.0, 8, 1.0]]}

pt.ensure_teacher = lambda spec, workdir: workdir
pt.evaluate_teacher = lambda spec, teacher_dir, workdir: {
    "key": "teacher", "num_layers": 6, "profile": {"speaker": [0.1, 0.2]},
    "downstream": {"pr_per": 0.2, "sid_acc": 0.9, "ks_acc": 0.8, "score": 83.3}}
pt.run_cell = fake_cell
pt.main(["--workdir", str(workdir), "--spec", str(workdir / "spec_overrides.json")])
"""


def _run_fake(tmp_path, kill_at: str) -> subprocess.CompletedProcess:
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    args = [sys.executable, str(script), str(ROOT / "benchmarks/paper_table.py"), str(tmp_path)]
    return subprocess.run([*args, kill_at], capture_output=True, text=True, timeout=120)


def test_resume_after_a_kill_redoes_nothing_finished_and_outputs_agree(tmp_path):
    overrides = {"methods": ["full", "top", "interleaved"], "schedules": ["equal", "prop"]}
    overrides.update(seeds=[0, 1], steps=8, log_every=2, eval_fractions=[0.5, 1.0])
    (tmp_path / "spec_overrides.json").write_text(json.dumps(overrides))
    first = _run_fake(tmp_path, kill_at="top-equal-s1")
    assert first.returncode == -signal.SIGKILL, first.stderr
    done = sorted(p.name for p in (tmp_path / "cells").glob("*.json"))
    assert done == ["full-s0.json", "full-s1.json", "teacher.json", "top-equal-s0.json"]
    before = {n: (tmp_path / "cells" / n).stat().st_mtime_ns for n in done}
    (tmp_path / "calls.txt").write_text("")
    second = _run_fake(tmp_path, kill_at="")
    assert second.returncode == 0, second.stderr
    assert "3 of 10 cells done" in second.stdout
    redone = (tmp_path / "calls.txt").read_text().split()
    assert redone[0] == "top-equal-s1" and len(redone) == 7  # the killed cell and the rest
    assert not set(redone) & {"full-s0", "full-s1", "top-equal-s0"}
    assert all((tmp_path / "cells" / n).stat().st_mtime_ns == before[n] for n in done)

    table = json.loads((tmp_path / "table.json").read_text())
    markdown = (tmp_path / "table.md").read_text()
    assert (tmp_path / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(table["cells"]) == 10 and len(table["rows"]) == 5
    for row in table["rows"]:  # the JSON's means are the cells' means, and the table shows them
        cells = [c for c in table["cells"] if c["row"] == row["row"]]
        score = row["metrics"]["score"]
        np.testing.assert_allclose(
            score["mean"], np.mean([c["downstream"]["score"] for c in cells])
        )
        line = next(ln for ln in markdown.splitlines() if ln.startswith(f"| {row['row']} |"))
        assert f"{score['mean']:.1f} [{score['ci'][0]:.1f}, {score['ci'][1]:.1f}]" in line
        assert f"{row['speedup_wall']:.2f}x" in line
    # interleaved (2 schedules) against full, top equal, top prop: 6 paired comparisons.
    assert len(table["paired"]) == 6
    c = next(p for p in table["paired"] if p["a"] == "Interleaved, equal" and p["b"] == "Full")
    assert c["seeds"] == [0, 1] and c["score"]["wins"] == 2
    np.testing.assert_allclose(c["score"]["mean"], 100 * 0.4 / 3)  # x: 0.5 vs 0.1 per seed


@pytest.mark.slow
def test_real_two_cells_killed_between_cells_and_resumed(tmp_path):
    """Full and interleaved, one seed, 6 steps, on a random 3-layer teacher."""
    from stackdistill import teacher
    from stackdistill.models import EncoderConfig

    teacher.write_random(
        tmp_path / "teacher_dir" / "teacher",
        EncoderConfig(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=4),
    )  # fmt: skip
    spec = {
        "teacher_dir": str(tmp_path / "teacher_dir"),
        "methods": ["full", "interleaved"],
        "schedules": ["equal"],
        "seeds": [0],
        "steps": 6,
        "log_every": 3,
        "eval_fractions": [1.0],
        "corpus_num": 24,
        "max_samples": 16000,
        "student": {"num_layers": 6, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2},
        "superb_num": 32,
        "head_steps": {"ks_synth": 5, "sid_synth": 5, "pr_synth": 5},
        "cka_utterances": 4,
        "pad_ratio": 2.0,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    workdir = tmp_path / "table"
    cmd = [sys.executable, str(ROOT / "benchmarks/paper_table.py"), "--workdir", str(workdir)]
    cmd += ["--spec", str(tmp_path / "spec.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = workdir / "cells" / "full-s0.json"
    deadline = time.time() + 600
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file()
    stamp = first.stat().st_mtime_ns
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 of 2 cells done" in out.stdout or "2 of 2 cells done" in out.stdout
    assert first.stat().st_mtime_ns == stamp
    table = json.loads((workdir / "table.json").read_text())
    assert [c["key"] for c in table["cells"]] == ["full-s0", "interleaved-equal-s0"]
    interleaved = table["cells"][1]
    assert interleaved["compile_s"] > 0 and interleaved["steps_s"] > 0
    assert len(interleaved["cka_diagonal"]) == 4 and interleaved["evals"][-1]["depth"] == 6
    markdown = (workdir / "table.md").read_text()
    for row in table["rows"]:
        loss = row["metrics"]["loss"]["mean"]
        assert loss == table["cells"][table["rows"].index(row)]["final_losses"]["loss"]
        assert f"| {row['row']} |" in markdown and f"{loss:.3f}" in markdown
    assert (workdir / "table.png").stat().st_size > 1000


@pytest.mark.slow
def test_quick_table_end_to_end(tmp_path):
    """`--quick`: its own quick teacher, 3 methods, one seed, within 6 minutes."""
    started = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "benchmarks/paper_table.py"), "--quick"]
    out = subprocess.run(
        [*cmd, "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seconds = time.perf_counter() - started
    table = json.loads((tmp_path / "table.json").read_text())
    assert [r["row"] for r in table["rows"]] == [
        "Full",
        "GradStack (top), equal",
        "Interleaved, equal",
    ]
    for cell in table["cells"]:
        assert 0 <= cell["downstream"]["sid_acc"] <= 1 and cell["downstream"]["pr_per"] >= 0
        assert len(cell["cka_diagonal"]) == 7 and len(cell["profile"]["speaker"]) == 13
    assert (tmp_path / "table.png").stat().st_size > 1000
    assert "| Interleaved, equal |" in (tmp_path / "table.md").read_text()
    print(f"--quick took {seconds:.0f} s (load average {os.getloadavg()[0]:.1f})")
