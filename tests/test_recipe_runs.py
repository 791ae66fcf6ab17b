"""Demo-size runs of the issue-23 recipes, stacked 2 -> 4, as the command line runs them.

Each recipe's `:runlocal` (offline: a random 12 x 48 teacher of the recipe teacher's type,
espeak-ng speech, a 4 x 32 student with the small CNN's shape: recipes/arm_family.demo_size)
runs with `stacking=interleaved` for STEPS steps, logging every step, through
`train.train_and_evaluate` (what stackdistill.main calls). The teachers and the corpus
(conftest's synthetic_corpus) are shared between the runs. Checked: the run completes, every
logged loss is finite, the loss falls within each stage (mean of a stage's first K logged
points against its last K), the depth grows to the config's num_layers, and summary.json's
student_params counts the encoder the last checkpoint holds. Each run costs two stage
compiles (15-65 s each on 2 loaded cores; about a minute a run on quiet cores), so all four are
slow-marked (`pytest -m slow tests/test_recipe_runs.py`): the default suite keeps each recipe's
jitted-step tests (test_masking.py, test_reuse.py, test_star.py) inside its 20 minutes."""

import json
import pathlib

import jax
import numpy as np
import pytest
from helpers import ROOT, final_params, load_config

from stackdistill import config as config_lib
from stackdistill import train

STEPS, K = 64, 8  # two stages of 32 steps; K logged points at each end of a stage
ARG = f"runlocal,stacking=interleaved,total_steps={STEPS},log_every=1,batch_size=8"
SLOW = pytest.mark.slow  # 90-160 s each on 2 loaded cores: two compiles of a masked step


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> pathlib.Path:
    """The folder of the runs' random teachers (one per model type, written by the first run)."""
    return tmp_path_factory.mktemp("recipe_runs")


def _run(recipe: str, shared: pathlib.Path, corpus: str, workdir: pathlib.Path):
    """`--config=configs/RECIPE.py:ARG` pointed at the shared teacher and corpus, run in
    process as stackdistill.main runs it; (config, summary.json)."""
    config = load_config(ROOT / "configs" / f"{recipe}.py", ARG)
    overrides = {
        "teacher.name": str(shared / f"teacher_{config.teacher.random_arch['model_type']}"),
        "data.path": str(pathlib.Path(corpus).parent),
        "data.synth_num": 48,  # conftest's corpus
        "data.max_samples": 16_000,  # 1 s crops: half runlocal's step cost
        "checkpoint_every": STEPS,
    }
    config_lib.apply_overrides(config, overrides)
    train.train_and_evaluate(config, str(workdir))
    return config, json.loads((workdir / "summary.json").read_text())


def _stage_losses(workdir: pathlib.Path, stages: list[dict]) -> list[list[float]]:
    """The logged losses of each stage, in step order (a row at step s ends step s)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # log_every=1
    terms = [v for r in rows for k, v in r.items() if k.startswith("loss/")]
    assert terms and np.isfinite(terms).all()  # every logged term; the totals per stage below
    return [
        [r["loss"] for r in rows if s["start_step"] < r["step"] <= s["start_step"] + s["num_steps"]]
        for s in stages
    ]


@pytest.mark.parametrize(
    "recipe",
    [
        pytest.param("starhubert", marks=SLOW),
        pytest.param("maskhubert", marks=SLOW),
        pytest.param("armhubert", marks=SLOW),
        pytest.param("armwavlm_s", marks=SLOW),
    ],
)
def test_recipe_runlocal_interleaved_completes_and_loss_falls(
    recipe, shared, synthetic_corpus, tmp_path
):
    config, summary = _run(recipe, shared, synthetic_corpus, tmp_path)
    # The random teacher is of the recipe teacher's family (WavLM Base for ARMwavLM-S).
    model_type = "wavlm" if recipe == "armwavlm_s" else "hubert"
    teacher_json = json.loads((pathlib.Path(config.teacher.name) / "config.json").read_text())
    assert teacher_json["model_type"] == model_type
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    depths = [s["depth"] for s in summary["stages"]]
    assert depths == [2, 4] and summary["final_depth"] == config.student.num_layers == 4
    for stage, losses in zip(summary["stages"], _stage_losses(tmp_path, summary["stages"])):
        assert len(losses) == stage["num_steps"] >= 2 * K
        assert np.isfinite(losses).all(), (recipe, stage["index"], losses)
        first, last = np.mean(losses[:K]), np.mean(losses[-K:])
        assert last < first, (recipe, stage["index"], losses)
    # student_params: the final 4-layer encoder, counted here from the checkpoint's tensors.
    step, params = final_params(tmp_path)
    assert step == STEPS
    counted = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params["encoder"]))
    assert summary["student_params"]["encoder"] == counted
    assert summary["student_params"]["with_heads"] >= counted
