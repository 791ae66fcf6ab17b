"""The DPHuBERT pipeline (stackdistill/pruning/pipeline.py): configs, stage plan, resume guard,
refusals, and a demo-size run killed in each training stage that ends bit-identical."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, load_config

from stackdistill import resume
from stackdistill.pruning import pipeline

DPHUBERT = ROOT / "configs" / "dphubert.py"
DPWAVLM = ROOT / "configs" / "dpwavlm.py"
THEIRS = pathlib.Path("/work/.mirror/pyf98+DPHuBERT/repo")  # their repo, when present


def _run_sh() -> dict[str, str]:
    """run.sh's shell variables (name=value lines) from their repository, if it is here."""
    if not THEIRS.exists():
        pytest.skip("pyf98/DPHuBERT is not mirrored here")
    text = subprocess.run(
        ["git", "-C", str(THEIRS), "show", "HEAD:run.sh"], capture_output=True, text=True
    ).stdout
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isidentifier():
            out[name] = value.split("#")[0].strip()
    return out


@pytest.mark.parametrize("path", (DPHUBERT, DPWAVLM))
def test_configs_carry_run_sh_values(path):
    c = load_config(path)
    pipeline.validate(c)
    theirs = _run_sh()
    assert c.prune.target_sparsity == float(theirs["target_sparsity"])
    assert c.prune.learning_rate == float(theirs["lr"])
    assert c.prune.warmup == int(theirs["warmup"]) and c.prune.steps == int(theirs["max"])
    assert c.prune.reg_learning_rate == float(theirs["reg_lr"])
    assert c.prune.sparsity_warmup == int(theirs["sparsity_warmup"])
    assert c.prune.units == theirs["pruning_units"]
    assert c.final.learning_rate == float(theirs["final_lr"])
    assert c.final.warmup == int(theirs["final_warmup"])
    assert c.final.steps == int(theirs["final_max"])
    assert c.dp.layers == theirs["distill_layers"] and c.dp.mode == theirs["distill_mode"]
    assert c.dp.cos_type == theirs["cos_type"]
    for w in ("l2_weight", "l1_weight", "cos_weight"):
        assert c.dp[w] == float(theirs[w])
    assert c.teacher.name == {DPHUBERT: "facebook/hubert-base-ls960"}.get(
        path, "microsoft/wavlm-base-plus"
    )
    local = load_config(path, "runlocal")
    pipeline.validate(local)
    assert local.teacher.random_arch and local.data.source == "synthetic"
    assert local.prune.steps + local.final.steps <= 60


def test_plan_and_guard(tmp_path):
    c = load_config(DPHUBERT, "runlocal")
    assert pipeline.plan(tmp_path) == {"prune": False, "pruned": False, "final": False}
    (tmp_path / "prune").mkdir()
    (tmp_path / "prune" / pipeline.DONE).write_text("{}")
    assert pipeline.plan(tmp_path) == {"prune": True, "pruned": False, "final": False}

    assert pipeline.guard(c, tmp_path) == []  # a new run
    pipeline.record(c, tmp_path)
    assert pipeline.guard(c, tmp_path) == []
    c.log_every = 7
    assert pipeline.guard(c, tmp_path) == ["log_every: 4 -> 7"]  # passes with a note
    c.prune.target_sparsity = 0.5
    with pytest.raises(resume.ResumeMismatch, match=r"prune.target_sparsity: 0.75 -> 0.5"):
        pipeline.guard(c, tmp_path)
    c.resume_changed = "prune.target_sparsity"
    pipeline.guard(c, tmp_path)  # let through on purpose, then recorded
    pipeline.record(c, tmp_path)
    c.resume_changed = ""
    assert pipeline.guard(c, tmp_path) == []


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("prune.units", "conv,neuron", "config.prune.units"),
        ("prune.target_sparsity", 1.0, "config.prune.target_sparsity"),
        ("prune.conv", "drop", "config.prune.conv"),
        ("final.warmup", 99, "config.final.warmup"),
        ("prune.steps", 0, "config.prune.steps"),
        ("dp.cos_type", "cos", "config.dp"),
        ("dp.layers", "0.4,x", "config.dp"),
        ("recipe", "arm", "config.recipe"),
    ],
)
def test_bad_fields_are_refused_naming_them(field, value, message):
    c = load_config(DPHUBERT, "runlocal")
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(ValueError, match=message):
        pipeline.validate(c)


def test_cli_refuses_a_bad_field_with_one_line(tmp_path):
    args = [
        sys.executable,
        "-m",
        "stackdistill.main",
        f"--config={DPHUBERT}:runlocal",
        f"--workdir={tmp_path / 'run'}",
        "--config.prune.units=conv,neuron",
    ]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    assert "config.prune.units" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "prune").exists()
    args[-1] = "--mode=eval"  # the other modes do not know the pipeline's config
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert (
        out.returncode == 1
        and "--mode=distill, --mode=export and --mode=compile only" in out.stderr
    )
    assert "Traceback" not in out.stderr
    args[-1] = "--mode=export"  # before the pipeline has finished: says so, writes nothing
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "is not finished" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "run" / "export").exists()


# ---- the whole pipeline, killed and resumed --------------------------------------------------


def _cli(workdir: pathlib.Path, shared: pathlib.Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stackdistill.main",
        f"--config={DPHUBERT}:runlocal",
        f"--workdir={workdir}",
        f"--config.teacher.name={shared / 'teacher'}",
        f"--config.data.path={shared / 'synth'}",
        f"--config.compilation_cache_dir={shared / 'xla'}",
    ]


def _logged_step(metrics: pathlib.Path) -> int:
    """The last step in a stage's metrics.jsonl (written synchronously at each log step)."""
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return 0
    return json.loads(lines[-1])["step"] if lines else 0


def _kill_at(args: list[str], stage: pathlib.Path, step: int) -> None:
    """Starts the run, SIGKILLs it once `stage` logged `step`; checks the stage was unfinished.

    (Checkpoints are saved asynchronously: the newest one may be older than `step`; the
    resumed run's log says which one it resumed from.)
    """
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while _logged_step(stage / "metrics.jsonl") < step:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {stage} step {step}: {proc.stderr.read()}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (stage / pipeline.DONE).exists(), f"{stage} finished before the kill"


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


@pytest.mark.slow  # ~4 CLI runs of the demo-size pipeline: a few CPU minutes
def test_pipeline_killed_in_each_stage_ends_bit_identical(tmp_path):
    shared = tmp_path / "shared"
    ref, run = tmp_path / "ref", tmp_path / "run"
    out = subprocess.run(_cli(ref, shared), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]

    _kill_at(_cli(run, shared), run / "prune", 16)
    _kill_at(_cli(run, shared), run / "final", 12)
    assert (run / "pruned" / pipeline.DONE).exists()
    out = subprocess.run(_cli(run, shared), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    log = (run / "log.txt").read_text()
    assert "prune: resumed from step" in log and "final: resumed from step" in log

    for stage in ("pruned", "final"):
        a, b = _arrays(ref / stage / "params.npz"), _arrays(run / stage / "params.npz")
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stage}: {k}")
    for stage in ("prune", "final"):  # every logged step once, the same numbers
        lines = [(run / stage / "metrics.jsonl").read_text(), (ref / stage / "metrics.jsonl")]
        assert lines[0] == lines[1].read_text()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == {"prune": 24, "final": 16}
    p = summary["params"]
    assert p["params_after"] < p["params_before"] == p["teacher_num_params"]  # HuBERT: no extras
    assert p["sparsity"] == pytest.approx(1 - p["params_after"] / p["teacher_num_params"])
    assert all(summary["seconds"][s] > 0 for s in pipeline.STAGES)
    # The pruned model's own count (its widths read off its non-zero structure) agrees.
    from stackdistill.pruning import params, store

    cfg, tree = store.load_model(run / "pruned")
    kept = params.units_of_padded(cfg, tree["student"])
    assert float(params.count(cfg, **kept)) == pytest.approx(p["params_after"])
    # Their format, read back by our reader of their checkpoints: the final model's function.
    fcfg, _ = store.load_model(run / "final")
    if (run / "final" / "pruned_hubert_base.pth").exists() or _has_torch():
        from stackdistill.pruning import checkpoint

        assert checkpoint.read(run / "final" / "pruned_hubert_base.pth")[0] == fcfg
    # A rerun of the finished pipeline trains nothing and keeps the results.
    before = (run / "final" / "params.npz").stat().st_mtime
    out = subprocess.run(_cli(run, shared), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and (run / "final" / "params.npz").stat().st_mtime == before


@pytest.mark.slow  # two short CLI pipelines (4 compiles): ~2 CPU minutes
def test_pipeline_on_four_devices_matches_one(tmp_path):
    """config.mesh: the batch split over 4 (CPU) devices, data x fsdp = 2 x 2 with FSDP params,
    gives the one-device pipeline's losses, expected sparsity and pruned sizes."""
    shared = tmp_path / "shared"
    short = ["--config.prune.steps=8", "--config.prune.warmup=2", "--config.final.steps=4"]
    short += ["--config.prune.sparsity_warmup=4", "--config.final.warmup=1"]
    short += ["--config.log_every=2", "--config.checkpoint_every=8"]
    runs = {}
    for n, mesh in ((1, []), (4, ["--config.mesh.fsdp=2", "--config.mesh.params=fsdp"])):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        run = tmp_path / f"d{n}"
        out = subprocess.run(
            [*_cli(run, shared), *short, *mesh], cwd=ROOT, capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr[-3000:]
        runs[n] = run
    for stage in ("prune", "final"):
        one, four = (
            [json.loads(x) for x in (runs[n] / stage / "metrics.jsonl").read_text().splitlines()]
            for n in (1, 4)
        )
        assert [r["step"] for r in one] == [r["step"] for r in four]
        for a, b in zip(one, four):
            for k in ("loss", "loss_distill"):
                np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=(stage, k))
    sizes = [json.loads((runs[n] / "summary.json").read_text())["params"] for n in (1, 4)]
    assert sizes[0] == sizes[1]
    # A batch that does not split over the devices: one line naming the fields, nothing run.
    out = subprocess.run(
        [*_cli(tmp_path / "bad", shared), "--config.batch_size=6"],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 1 and "config.batch_size=6 does not split over the 4" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "bad" / "prune").exists()


# ---- their final checkpoint format -----------------------------------------------------------


@pytest.mark.parametrize("model", ("hubert", "hubert_ln", "wavlm"))
def test_written_pth_is_their_pruned_checkpoint(model, tmp_path):
    """Our prune of their gated fixture, written in their format, is the checkpoint their
    prune.py + save_final_ckpt.py wrote (tests/data/dphubert_tiny), tensor for tensor."""
    pytest.importorskip("torch")
    from test_pruning_gated import DATA, META, _their_gated_model

    from stackdistill.pruning import checkpoint, prune, their_format

    cfg, p, log_alpha = _their_gated_model(model)
    pcfg, pp = prune.shrink_ffn(*prune.prune(cfg, p, log_alpha))
    heads = [{"kernel": np.eye(32, dtype=np.float32), "bias": np.zeros(32, np.float32)}]
    path = their_format.write(tmp_path / "m.pth", pcfg, pp, heads, (0, 0), "layer2layer")
    ours, theirs = checkpoint.load_torch(path), checkpoint.load_torch(DATA / f"dp{model}_tiny.pth")
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    a, b = ours["state_dict"], theirs["state_dict"]
    g = "encoder.transformer.pos_conv_embed.conv.weight_g"
    v = g.replace("_g", "_v")
    for k in b.keys() - {g, v}:
        np.testing.assert_allclose(a[k], b[k], atol=2e-6, err_msg=k)
    for sd in (a, b):  # the positional conv's weight g v / ||v|| (norm over all but dim 2)
        sd["w"] = sd[g] * sd[v] / np.sqrt((sd[v] ** 2).sum((0, 1), keepdims=True))
    np.testing.assert_allclose(a["w"], b["w"], atol=2e-6)
    conf, ref = ours["config"], META[model]["pruned_config"]
    heads = "encoder_remaining_heads" if model == "wavlm" else "encoder_num_heads"
    per_layer = (heads, "encoder_ff_interm_features")
    assert {k: v for k, v in conf.items() if k not in per_layer} == {
        k: v for k, v in ref.items() if k not in per_layer
    }
    for key, use in zip(per_layer, ("encoder_use_attention", "encoder_use_feed_forward")):
        kept = [n for n, on in zip(ref[key], ref[use]) if on]  # theirs keeps a removed one's size
        assert [n for n, on in zip(conf[key], conf[use]) if on] == kept
    import torch

    projs = torch.load(path, weights_only=True)["distill_linear_projs"]  # one per layer, shared
    assert set(projs) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert checkpoint.read(path)[0] == pcfg  # and our reader takes it back


# ---- --mode=export of a finished pipeline ----------------------------------------------------


def _finished_pipeline(workdir: pathlib.Path, model: str, with_conv: bool):
    """A workdir whose final/ holds our prune of their gated fixture (as the pipeline leaves
    it: encoder_config.json, params.npz with a head per distill group of :runlocal's
    "0.4,8,12", DONE.json, summary.json); (cfg, params)."""
    from test_pruning_gated import _their_gated_model

    from stackdistill.pruning import prune, store

    cfg, p, log_alpha = _their_gated_model(model)
    if not with_conv:
        log_alpha = {k: v for k, v in log_alpha.items() if k != "conv"}
    pcfg, pp = prune.shrink_ffn(*prune.prune(cfg, p, log_alpha))
    d = cfg.hidden_size
    heads = [{"kernel": np.eye(d, dtype=np.float32), "bias": np.zeros(d, np.float32)}] * 2
    store.save_model(workdir / "final", pcfg, {"student": pp, "heads": heads})
    store.write_json(workdir / "final" / pipeline.DONE, {"steps": 16, "seconds": 1.0})
    summary = {
        "params": {"params_before": 1000, "params_after": 600, "sparsity": 0.4},
        "target_sparsity": 0.75,
        "steps": {"prune": 24, "final": 16},
        "seconds": {"prune": 10.0, "pruned": 0.5, "final": 5.0},
    }
    store.write_json(workdir / "summary.json", summary)
    return pcfg, pp


@pytest.mark.parametrize("model", ("hubert", "wavlm"))
def test_export_to_transformers_is_the_pruned_models_function(model, tmp_path):
    """Pruned heads and FFN units (no CNN channels): transformers' HubertModel / WavLMModel
    read from the export give our pruned model's hidden states; the card names the sizes."""
    import transformers
    from hf_fixtures import hf_hidden_states, padded_batch

    from stackdistill import export, models

    pcfg, pp = _finished_pipeline(tmp_path, model, with_conv=False)
    assert not pcfg.feature_scale
    c = load_config(DPWAVLM if model == "wavlm" else DPHUBERT, "runlocal")
    out = export.run(c, str(tmp_path))
    assert out == tmp_path / "export"
    cls = {"hubert": transformers.HubertModel, "wavlm": transformers.WavLMModel}[model]
    torch_model = cls.from_pretrained(out).eval()
    wav, lengths = padded_batch(4000)
    ref = hf_hidden_states(torch_model, wav, lengths)
    ours = models.encode(pcfg, pp, wav, lengths)
    mask = np.asarray(ours.mask)
    for i in range(pcfg.num_layers + 1):
        np.testing.assert_allclose(np.asarray(ours.hidden_states[i])[mask], ref[i][mask],
                                   atol=1e-4, rtol=1e-4, err_msg=f"hidden state {i}")  # fmt: skip
    card = (out / "README.md").read_text()
    assert "| parameters before pruning | 1000 |" in card and "sparsity 0.400" in card
    assert json.loads((out / "stackdistill_export.json").read_text())["formats"] == ["transformers"]


def test_export_refuses_what_transformers_cannot_express_and_writes_theirs(tmp_path):
    """A pruned CNN keeps their per-channel scale: the transformers export is refused naming
    it and the way out, nothing written; the "dphubert" format writes their .pth, which their
    reader (ours of their format) takes back to the same model."""
    from stackdistill import export
    from stackdistill.pruning import checkpoint

    pcfg, pp = _finished_pipeline(tmp_path, "hubert", with_conv=True)
    assert pcfg.feature_scale
    c = load_config(DPHUBERT, "runlocal")
    with pytest.raises(ValueError, match="dummy_weight.*format=dphubert"):
        export.run(c, str(tmp_path))
    assert not (tmp_path / "export").exists()
    c.export.format = "s3prl_distiller"
    with pytest.raises(ValueError, match="exports as one of"):
        export.run(c, str(tmp_path))
    pytest.importorskip("torch")
    c.export.format = "dphubert"
    out = export.run(c, str(tmp_path))
    cfg, params = checkpoint.read(out / "pruned_hubert_base.pth")
    assert cfg == pcfg  # kept heads come back in the first slots: the same function
    from hf_fixtures import padded_batch

    from stackdistill import models

    wav, lengths = padded_batch(4000)
    a, b = models.encode(cfg, params, wav, lengths), models.encode(pcfg, pp, wav, lengths)
    np.testing.assert_allclose(a.hidden_states, b.hidden_states, atol=1e-5)
    assert "pruned_hubert_base.pth" in (out / "README.md").read_text()
