"""The mini-SUPERB side of benchmarks/paper_table.py: one evaluation config for every upstream,
an upstream's scores and per-layer ridge profile, and the teacher's reference row."""

from __future__ import annotations

import pathlib
import time
from typing import Any

import ml_collections
import numpy as np
import table_stats as stats


def superb_config(spec: ml_collections.ConfigDict, teacher_dir: pathlib.Path, workdir):
    """The mini-SUPERB evaluation config shared by every upstream of the table."""
    from stackdistill.config import base_config

    c = base_config()
    c.teacher.name = str(teacher_dir / "teacher")
    c.superb.tasks = ("pr_synth", "sid_synth", "ks_synth")
    c.superb.synth.path = str(pathlib.Path(workdir) / "superb_corpus")
    c.superb.synth.num = spec.superb_num
    for task, steps in dict(spec.head_steps).items():
        c.superb[task].total_steps = steps  # (ConfigDict takes a misspelt field as a new key)
    c.superb.progress = False  # the table's own bar
    c.superb.cka_utterances = spec.cka_utterances
    c.superb.cka = False
    c.superb.pad_ratio = spec.pad_ratio
    return c


def downstream(up, task_list, config) -> tuple[dict[str, float], Any]:
    """Mini-SUPERB of one upstream: PER, accuracies, the score; and its feature store."""
    from stackdistill.superb import run as superb_run

    results, store = superb_run.evaluate_upstream(up, task_list, config)
    t = {name: r["test"] for name, r in results["tasks"].items()}
    scores = {"pr_per": t["pr_synth"], "sid_acc": t["sid_synth"], "ks_acc": t["ks_synth"]}
    scores["score"] = stats.superb_score(scores)
    return scores, store


def profile(store, task_list, alpha: float) -> dict[str, list[float]]:
    """Per hidden state: ridge accuracy of speaker (SID split) and keyword (KS split)."""
    from stackdistill.superb import features, probes

    options = features.ReadOptions(max_samples=480_000, batch_size=16, pad_ratio=1.25)
    out = {}
    for task in task_list:
        if task.kind != "utterance":
            continue
        train, test = task.splits["train"], task.splits["test"]
        x, y = store.pooled([*train, *test], task.target_fn, options)
        idx = np.arange(len(train)), np.arange(len(train), len(train) + len(test))
        correct = probes.ridge_profile(x, y[:, 0], *idx, alpha)
        out["speaker" if task.name == "sid_synth" else "keyword"] = correct.mean(1).tolist()
    return out


def evaluate_teacher(spec, teacher_dir, workdir) -> dict[str, Any]:
    """The teacher's own mini-SUPERB scores and probe profile (the reference row)."""
    from stackdistill.superb import benchmark, upstream

    config = superb_config(spec, teacher_dir, workdir)
    task_list = [benchmark.build(name, config.superb, str(workdir)) for name in config.superb.tasks]
    started = time.perf_counter()
    up = upstream.load("teacher", config, str(workdir))
    scores, store = downstream(up, task_list, config)
    return {
        "key": "teacher",
        "num_layers": up.num_layers,
        "downstream": scores,
        "profile": profile(store, task_list, spec.probe_alpha),
        "eval_s": time.perf_counter() - started,
    }
