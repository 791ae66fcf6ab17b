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
    x += 0.05 * (cell.ablation == "lever") + 0.2 * (cell.recipe == "armhubert")
    score = 100 * (0.5 + x) / 3
    return {"key": cell.key, "row": cell.row, "method": cell.method, "schedule": cell.schedule,
            "seed": cell.seed, "ablation": cell.ablation, "recipe": cell.recipe,
            "wall_s": 10 + x, "steps_s": 8 + x,
            "compile_s": 1.0, "eval_s": 2.0, "profile_r": x, "cka_diagonal": [1.0, x, 2 * x],
            "final_losses": {"loss": 1 - x},
            "downstream": {"pr_per": 0.5, "sid_acc": x, "ks_acc": 0.5, "score": score},
            "evals": [{"step": 4, "wall_s": 5.0, "score": score - 1}, {"step": 8, "wall_s": 10.0,
                       "score": score}],
            "curve": [[1.0, 2, 2.0], [2.0, 4, 1.5], [3.0, 6, 1.2], [4.0, 8, 1.0]]}

pt.ensure_teacher = lambda spec, workdir: workdir
pt.ensure_masked_teacher = lambda teacher_dir: teacher_dir
pt.check_recipe_teachers = lambda spec, teacher_dir: None  # no teacher folder here
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


def test_recipe_rows_are_measured_against_their_own_full(tmp_path):
    overrides = {"methods": ["full", "interleaved"], "schedules": ["equal"], "seeds": [0, 1]}
    overrides.update(recipes=["armhubert", "starhubert"], steps=8, log_every=2)
    (tmp_path / "spec_overrides.json").write_text(json.dumps(overrides))
    assert _run_fake(tmp_path, kill_at="").returncode == 0
    table = json.loads((tmp_path / "table.json").read_text())
    rows = {r["row"]: r for r in table["rows"]}
    assert list(rows) == [
        "Full",
        "Interleaved, equal",
        "ARMHuBERT: Full",
        "ARMHuBERT: Interleaved, equal",
        "ARMHuBERT: Interleaved, equal, lever",
        "STaRHuBERT: Full",
        "STaRHuBERT: Interleaved, equal",
        "STaRHuBERT: Interleaved, equal, lever",
    ]
    # The fake's x: 0.1 (full) or 0.5 (interleaved) + 0.01 seed, + 0.05 lever, + 0.2 ARMHuBERT;
    # wall = 10 + x, score = 100 (0.5 + x) / 3.
    arm_full = 100 * (0.5 + 0.3 + 0.005) / 3  # mean over seeds 0 and 1
    np.testing.assert_allclose(table["recipe_targets"]["armhubert"], arm_full)
    np.testing.assert_allclose(table["full_target"], 100 * (0.5 + 0.105) / 3)
    lever = rows["ARMHuBERT: Interleaved, equal, lever"]
    np.testing.assert_allclose(lever["speedup_wall"], (10 + 0.305) / (10 + 0.755))
    pairs = {(c["a"], c["b"]) for c in table["paired"]}
    assert pairs == {
        ("Interleaved, equal", "Full"),
        ("ARMHuBERT: Interleaved, equal", "ARMHuBERT: Full"),
        ("ARMHuBERT: Interleaved, equal, lever", "ARMHuBERT: Interleaved, equal"),
        ("ARMHuBERT: Interleaved, equal, lever", "ARMHuBERT: Full"),
        ("STaRHuBERT: Interleaved, equal", "STaRHuBERT: Full"),
        ("STaRHuBERT: Interleaved, equal, lever", "STaRHuBERT: Interleaved, equal"),
        ("STaRHuBERT: Interleaved, equal, lever", "STaRHuBERT: Full"),
    }
    c = next(p for p in table["paired"] if p["a"] == "STaRHuBERT: Interleaved, equal, lever"
             and p["b"] == "STaRHuBERT: Full")  # fmt: skip
    np.testing.assert_allclose(c["score"]["mean"], 100 * 0.45 / 3)
    assert "ARMHuBERT: Full's" not in (tmp_path / "table.md").read_text()
    assert "armhubert " + f"{arm_full:.1f}" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize("recipe", ["maskhubert", "armhubert", "starhubert", "armwavlm_s"])
def test_recipe_cells_keep_the_recipe_at_the_tables_size(tmp_path, recipe):
    """Each recipe's own loss, heads and layer pattern at 12 x 96 on the tiny teacher; its small
    CNN gives the teacher's frame count (masking hands the teacher's mask to the student)."""
    from stackdistill import distill, stacking
    from stackdistill.models import EncoderConfig, student

    pt = _paper_table()
    spec = pt.table_spec()
    spec.recipes = (recipe,)
    cells = {(c.method, c.ablation): c for c in pt.cells_of(spec) if c.seed == 0 and c.recipe}
    assert set(cells) == {("full", ""), ("interleaved", ""), ("interleaved", "lever")}
    (tmp_path / "teacher").mkdir()  # the tiny teacher's CNN: 64 channels (its config.json)
    (tmp_path / "teacher" / "config.json").write_text(json.dumps({"conv_dim": [64] * 7}))
    configs = {k: pt.distill_config(spec, c, tmp_path, 6) for k, c in cells.items()}
    full, inter, lever = configs.values()
    own = pt.harness.config_file(recipe)
    for c in configs.values():
        assert c.distill.loss == own.distill.loss and c.student.head == own.student.head
        assert c.total_steps == 600 and c.batch_size == 8 and c.student.hidden_size == 96
        masked = "teacher_masked" if recipe in pt.MASKED_RECIPES else "teacher"
        assert c.teacher.name == str(tmp_path / masked) and c.distill.loss == own.distill.loss
    assert full.stacking.method == "none" and inter.stacking.method == "interleaved"
    reuse = recipe in ("armhubert", "armwavlm_s")
    assert bool(inter.student.reuse_pattern) == reuse
    assert (recipe in pt.MASKED_RECIPES) == (own.distill.loss == "masked")
    block = student.layers_per_block(inter.student)
    assert block == (2 if reuse else 1)
    depths = [s.depth for s in stacking.plan_stages(inter.stacking, 600, 12, block)]
    assert depths == ([4, 8, 12] if reuse else [3, 6, 9, 12])
    teacher_cfg = EncoderConfig(conv_dim=(64,) * 7)
    for c in (full, inter):
        cfg = student.student_encoder_config(c.student, teacher_cfg)
        assert cfg.conv_dim[0] == 16 and cfg.conv_dim[-1] == 96 and not cfg.feat_proj
        for n in (4_000, 24_000):
            assert cfg.num_frames(n) == teacher_cfg.num_frames(n)
    assert lever.student.frozen_shared_frontend and lever.student.conv_layers is None
    if recipe == "starhubert":
        assert full.distill.teacher_layers == (1, 2, 3, 4, 5, 6)
        assert distill.initial_student_layers(full.distill, 12) == (1, 3, 5, 7, 9, 11)
        assert inter.distill.teacher_layers == (2, 4, 6)
    else:
        assert full.distill.targets == "every_layer"
        assert full.distill.teacher_layers == inter.distill.teacher_layers == (1, 2, 3, 4, 5, 6)


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
    """`--quick`: its own quick teacher, 3 methods and ARMHuBERT's 3 rows, one seed."""
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
        "ARMHuBERT: Full",
        "ARMHuBERT: Interleaved, equal",
        "ARMHuBERT: Interleaved, equal, lever",
    ]
    assert "armhubert" in table["recipe_targets"]
    for cell in table["cells"]:
        assert 0 <= cell["downstream"]["sid_acc"] <= 1 and cell["downstream"]["pr_per"] >= 0
        assert len(cell["cka_diagonal"]) == 7 and len(cell["profile"]["speaker"]) == 13
    assert (tmp_path / "table.png").stat().st_size > 1000
    assert "| Interleaved, equal |" in (tmp_path / "table.md").read_text()
    print(f"--quick took {seconds:.0f} s (load average {os.getloadavg()[0]:.1f})")


def test_masked_teacher_embeds_the_mean_projected_frame(tmp_path):
    """The masking recipes' tiny teacher: every tensor kept, `masked_spec_embed` = the mean of
    transformers' own feature projection over the utterances; transformers loads it."""
    import soundfile as sf
    import torch
    import transformers

    from stackdistill import teacher
    from stackdistill.data import synth
    from stackdistill.models import EncoderConfig

    pt = _paper_table()
    cfg = EncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                        conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                        num_conv_pos_embedding_groups=4)  # fmt: skip
    params = dict(teacher.load(str(teacher.write_random(tmp_path / "random", cfg)))[1])
    del params["masked_spec_embed"]  # the tiny teacher has none
    teacher.save(tmp_path / "teacher", cfg, params)
    rng = np.random.default_rng(0)
    (tmp_path / "synth" / "wav").mkdir(parents=True)
    rows = []
    for i, n in enumerate((12_000,) * 3):  # one length: one compile of the front-end
        sf.write(tmp_path / "synth" / "wav" / f"{i}.wav", 0.1 * rng.standard_normal(n), 16_000)
        rows.append(json.dumps({"path": f"wav/{i}.wav", "num_samples": n}))
    (tmp_path / "synth" / synth.MANIFEST_NAME).write_text("\n".join(rows) + "\n")
    out = pt.ensure_masked_teacher(tmp_path, num=3)
    model = transformers.HubertModel.from_pretrained(out).eval()
    frames = []
    with torch.no_grad():
        for i in range(3):
            wav, _ = sf.read(tmp_path / "synth" / "wav" / f"{i}.wav", dtype="float32")
            features = model.feature_extractor(torch.from_numpy(wav)[None]).transpose(1, 2)
            projected = model.feature_projection(features)  # HuBERT's: (B, T, D), no tuple
            frames.append(projected[0].numpy())
    expected = np.concatenate(frames).mean(0)
    np.testing.assert_allclose(model.masked_spec_embed.detach().numpy(), expected, atol=1e-5)
    _, before = teacher.load(str(tmp_path / "teacher"))
    _, after = teacher.load(str(out))
    assert "masked_spec_embed" not in before and "masked_spec_embed" in after
    for path, leaf in jax_leaves(before):
        np.testing.assert_array_equal(leaf, jax_get(after, path))
    assert pt.ensure_masked_teacher(tmp_path, num=3) == out  # made once


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_flatten_with_path(tree)[0]


def jax_get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_a_recipe_refuses_a_teacher_of_another_family(tmp_path):
    """ARMwavLM-S distils from WavLM, the others from HuBERT: a table with one teacher refuses
    the other family's recipes by name, and says which --teacher gives them theirs."""
    pt = _paper_table()
    assert set(pt.RECIPE_TEACHER) == set(pt.RECIPES)
    for recipe, family in pt.RECIPE_TEACHER.items():  # each config's own teacher
        name = pt.harness.config_file(recipe).teacher.name
        assert family in name.lower(), (recipe, name)
    spec = pt.table_spec()
    (tmp_path / "teacher").mkdir()
    for family in ("hubert", "wavlm"):
        (tmp_path / "teacher" / "config.json").write_text(json.dumps({"model_type": family}))
        for recipe, want in pt.RECIPE_TEACHER.items():
            spec.recipes = (recipe,)
            if want == family:
                pt.check_recipe_teachers(spec, tmp_path)
            else:
                with pytest.raises(
                    SystemExit, match=f"{recipe} distil from a {want}.*--teacher {want}"
                ):
                    pt.check_recipe_teachers(spec, tmp_path)


def test_wavlm_teacher_flag_and_folder(tmp_path, monkeypatch):
    """--teacher wavlm trains configs/tiny_teacher.py:wavlm in its own folder (never the HuBERT
    teacher's), and --recipes without names then means ARMwavLM-S."""
    pt = _paper_table()
    seen = {}

    monkeypatch.setattr(pt, "run_table", lambda spec, workdir: seen.update(spec=spec))
    monkeypatch.setattr("stackdistill.console.setup", lambda *a, **k: None)
    pt.main(["--workdir", str(tmp_path), "--teacher", "wavlm", "--recipes"])
    assert seen["spec"].teacher_config == "tiny_teacher.py:wavlm"
    assert seen["spec"].recipes == ("armwavlm_s",)
    pt.main(["--workdir", str(tmp_path), "--recipes"])
    assert seen["spec"].recipes == ("maskhubert", "armhubert", "starhubert")
    pt.main(["--workdir", str(tmp_path), "--quick", "--teacher", "wavlm"])
    assert seen["spec"].teacher_config == "tiny_teacher.py:quick,wavlm"
    assert seen["spec"].recipes == ("armwavlm_s",)
    calls = []
    monkeypatch.setattr(pt.harness, "ensure_tiny_teacher", lambda *a: calls.append(a) or a[0])
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path / "cache"))
    wavlm = pt.ensure_teacher(seen["spec"], tmp_path)
    spec = pt.table_spec()
    spec.teacher_config = "tiny_teacher.py:wavlm"
    assert pt.ensure_teacher(spec, tmp_path).name == "tiny_teacher_wavlm"
    assert pt.ensure_teacher(pt.table_spec(), tmp_path).name == "tiny_teacher"
    assert wavlm == tmp_path / "teacher" / "tiny_teacher_wavlm"
    assert calls[1][1:] == ("tiny_teacher.py:wavlm", True)


def test_dp_cells_prune_the_teacher_to_the_students_size(tmp_path, monkeypatch):
    """--dp adds DP cells: configs/dphubert.py on the table's teacher, run.sh's 50k + 25k
    steps and warm-ups (15k, 5k sparsity, 5k final) scaled into the table's 600, distill
    layers "0.4,8,12" at the same depths of a 6-layer teacher, and the target sparsity that
    leaves the table student's parameter count (both counted as DPHuBERT counts)."""
    import jax

    from stackdistill import models, teacher
    from stackdistill.models import EncoderConfig, student
    from stackdistill.pruning import params

    key = jax.random.key(0)
    pt = _paper_table()
    t_cfg = EncoderConfig(hidden_size=64, num_layers=6, num_heads=4, intermediate_size=128,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=4)  # fmt: skip
    teacher.write_random(tmp_path / "teacher", t_cfg)
    spec = pt.table_spec()
    spec.methods = ("full", "dp")
    cells = [c for c in pt.cells_of(spec) if c.method == "dp"]
    assert [c.key for c in cells] == ["dp-s0", "dp-s1", "dp-s2"]
    assert cells[0].row == "DP (teacher pruned)"
    c = pt.distill_config(spec, cells[1], tmp_path, 6)
    assert c.recipe == "dp" and c.seed == 1 and c.teacher.name == str(tmp_path / "teacher")
    assert (c.prune.steps, c.final.steps) == (400, 200)
    assert (c.prune.warmup, c.prune.sparsity_warmup, c.final.warmup) == (120, 40, 40)
    assert c.dp.layers == "0.2,4,6" and c.batch_size == 8 and c.data.max_samples == 24_000
    assert c.prune.reg_learning_rate == pt.DP_REG_LEARNING_RATE
    s = pt.harness.tiny_student_config("none", tmp_path, 600).student
    s.update(dict(spec.student))
    s_cfg = student.student_encoder_config(s, t_cfg)
    assert (s_cfg.num_layers, s_cfg.hidden_size) == (12, 96)
    # Their count is every array of the model: ours, plus the positional conv's weight-norm
    # g (one per kernel tap: ours holds the normed weight) and the last conv's dummy_weight.
    counts = []
    for cfg in (s_cfg, t_cfg):
        arrays = sum(np.size(x) for x in jax.tree_util.tree_leaves(models.init_params(cfg, key)))
        theirs = params.teacher_num_params(cfg)
        assert theirs == arrays + cfg.num_conv_pos_embeddings + cfg.conv_dim[-1]
        counts.append(theirs)
    assert c.prune.target_sparsity == pytest.approx(1 - counts[0] / counts[1])
    seen = {}
    monkeypatch.setattr(pt, "run_table", lambda spec, workdir: seen.update(spec=spec))
    monkeypatch.setattr("stackdistill.console.setup", lambda *a, **k: None)
    pt.main(["--workdir", str(tmp_path), "--dp"])
    assert seen["spec"].methods == (*pt.METHODS, "dp", "dp_interleaved")
    # DP at half depth: every second teacher layer pruned, grown back by interleaved stacking
    spec.methods = ("dp_interleaved",)
    cell = pt.cells_of(spec)[0]
    assert cell.key == "dp_interleaved-s0"
    c2 = pt.distill_config(spec, cell, tmp_path, 6)
    assert c2.prune.depth == 3 and c.prune.depth == 0
    assert c2.prune.target_sparsity == c.prune.target_sparsity  # the same size in the end
    from stackdistill.pruning import pipeline

    assert pipeline.layer_copies(c2, 6) == 2
    assert pipeline.student_spec(c2, 2).layer_groups == ((0,), (1, 2, 3))


def test_dp_rows_in_the_table_keep_their_loss_apart_and_report_their_stages(tmp_path):
    """A DP row (paper_table.train_dp_cell's record): compared with interleaved on the scores
    and times, never on the loss (theirs is another loss); its sizes and stage seconds are
    averaged over seeds into one line; the plot draws no loss curve for it."""
    pt = _paper_table()
    spec = pt.table_spec()
    spec.eval_fractions = (0.5, 1.0)

    def record(method, seed, score, **extra):
        return {"key": f"{method}-{seed}", "row": pt.NAMES[method], "method": method,
                "schedule": "-" if method != "interleaved" else "equal", "seed": seed,
                "ablation": "", "recipe": "", "wall_s": 100.0 + seed, "steps_s": 80.0,
                "compile_s": 10.0, "profile_r": 0.5, "cka_diagonal": [1.0, 0.8],
                "final_losses": {"loss": 2.0 + seed},
                "downstream": {"pr_per": 0.5, "sid_acc": 0.5, "ks_acc": 0.5, "score": score},
                "evals": [{"step": 300, "wall_s": 50.0, "train_s": 40.0, "score": score - 5},
                          {"step": 600, "wall_s": 100.0, "train_s": 90.0, "score": score}],
                "curve": [[1.0, 10, 3.0], [2.0, 20, 2.5]], **extra}  # fmt: skip

    def dp(seed, score, after, prune_s, method="dp"):
        r = record(method, seed, score, final_losses={"loss": None}, curve=[])
        r["dp"] = {"params": {"params_before": 1000, "params_after": after,
                              "sparsity": 1 - after / 1000}, "target_sparsity": 0.5,
                   "stage_seconds": {"prune": prune_s, "pruned": 0.5, "final": 20.0},
                   "compile_seconds": {"prune": 5.0, "final": 3.0}}  # fmt: skip
        return r

    records = [record("full", s, 45.0) for s in (0, 1)]
    records += [record("interleaved", s, 50.0 + s) for s in (0, 1)]
    records += [dp(0, 40.0, 500, 60.0), dp(1, 47.0, 520, 70.0)]
    records += [dp(s, 44.0 - s, 505, 30.0, "dp_interleaved") for s in (0, 1)]
    for r in records[-2:]:
        r["dp"]["depth"] = {"pruned": 3, "final": 6}
    teacher = {"profile": {}, "downstream": {"pr_per": 0.2, "sid_acc": 0.9, "ks_acc": 0.8}}
    teacher["downstream"]["score"] = 83.3
    table = table_stats.summarise(records, teacher, spec)
    assert list(table["dp"]) == [pt.NAMES["dp"], pt.NAMES["dp_interleaved"]]
    grown = next(c for c in table["paired"] if c["a"] == pt.NAMES["dp_interleaved"]
                 and c["b"] == pt.NAMES["dp"])  # fmt: skip
    assert grown["score"]["diffs"] == pytest.approx([4.0, -4.0])  # 44 - 40, 43 - 47
    d = table["dp"][pt.NAMES["dp"]]
    assert d["params_after"]["mean"] == 510 and d["prune_s"]["mean"] == 65.0
    assert d["sparsity"]["values"] == pytest.approx([0.5, 0.48])
    assert d["score_pruned"]["mean"] == pytest.approx(38.5)  # the pruned model, before final
    pair = next(c for c in table["paired"] if c["b"] == pt.NAMES["dp"])
    assert pair["a"] == "Interleaved" and pair["loss"] is None
    assert pair["score"]["mean"] == pytest.approx(7.0)  # 50 - 40, 51 - 47
    row = next(r for r in table["rows"] if r["method"] == "dp")
    assert row["metrics"]["loss"]["mean"] is None
    assert row["time_to_full"] == [None, 90.0]  # Full's 45: seed 1's final model only
    text = table_stats.markdown(table, spec)
    assert "pruned to 510 [" in text and "prune 65.0 [" in text
    assert "one in 2 of the teacher's layers" in text and "grown back to 6 layers" in text
    dp_line = next(line for line in text.splitlines() if line.startswith(f"| {pt.NAMES['dp']} |"))
    assert dp_line.split(" | ")[5] == "-"  # the loss column
    table_stats.plot(table, records, tmp_path / "table.png")
    assert (tmp_path / "table.png").stat().st_size > 0
