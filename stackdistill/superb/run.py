"""--mode=eval and --mode=compare: SUPERB-style evaluation of frozen upstreams.

    python -m stackdistill.main --config=configs/demo.py --workdir=/tmp/sd_demo --mode=eval

For every upstream of `config.superb.upstreams` and every task of `config.superb.tasks`: features
once, a head on the weighted layer sum and/or the last hidden state (`layer_selection`) trained
on the train split (checkpointed under `<upstream>/heads/<task>/`, resumed after an
interruption), its metrics on the test split; ER trains one head per fold and averages; QbE
trains none (DTW, superb/qbe.py).
Writes `<workdir>/superb/<upstream>/results.{md,json}` (SUPERB's table, its score where every
task it needs is there, the protocol and deviations per task) and `layer_weights.png`; for students,
`cka.png`/`cka.json` (linear CKA of every layer against every teacher layer); with several
upstreams (or --mode=compare) `<workdir>/superb/compare.{md,json}`.
"""

from __future__ import annotations

import collections
import json
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from stackdistill.superb import (
    asv,
    benchmark,
    cka,
    features,
    heads,
    qbe,
    report,
    sd,
    tasks,
    training,
    upstream,
)
from stackdistill.superb.config import LAYER_SELECTIONS

log = logging.getLogger(__name__)
EVAL_MAX_SAMPLES = 480_000  # CKA's utterances are cropped to 30 s at most
WHOLE = 2**31 - 1  # eval_max_samples 0: utterances read whole


def _read_options(config: ml_collections.ConfigDict, max_samples: int) -> features.ReadOptions:
    c = config.superb
    return features.ReadOptions(
        max_samples=max_samples,
        normalize_audio=bool(config.data.normalize),
        batch_size=c.extract_batch_size,
        pad_ratio=c.pad_ratio,
        seed=c.seed,
    )


def majority_baseline(train_targets: np.ndarray, test_targets: np.ndarray) -> float:
    """Accuracy on test of always answering the most frequent training label (per group)."""
    guess = [
        collections.Counter(train_targets[:, g].tolist()).most_common(1)[0][0]
        for g in range(train_targets.shape[1])
    ]
    return float((test_targets == np.array(guess)[None, :]).all(axis=1).mean())


def _views(task: tasks.Task, records: Sequence[dict], views: int):
    """Records with one entry per random crop, and their sampling weights (None: uniform)."""
    expanded = features.crop_views(records, views)
    if task.weight_fn is None:
        return expanded, None
    counts = [views if "crop_samples" in r else 1 for r in records]
    weights = [w / k for w, k in zip(task.weight_fn(records), counts) for _ in range(k)]
    return expanded, np.array(weights)


def _features(task, splits, store, config, hp) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each split's features, and the train/dev weights of class-balanced tasks."""
    train_options = _read_options(config, hp.max_samples)
    eval_options = _read_options(config, hp.eval_max_samples or WHOLE)
    data, weights = {}, {}
    for split, records in splits.items():
        if not len(records):
            continue
        options = train_options if split == "train" else eval_options
        if not isinstance(records, list):  # a TFDS source: no crops, no weights
            expanded, w = records, None
        else:
            expanded, w = _views(task, records, hp.crop_views if split != "test" else 1)
        weights[split] = w
        if task.kind == "utterance":
            data[split] = store.pooled(expanded, task.target_fn, options)
        else:
            data[split] = store.frames(expanded, task.target_fn, options)
    if hp.standardize:
        names = list(data)
        data = dict(zip(names, features.standardize(*(data[k] for k in names))))
    return data, weights


def _fit(task, data, weights, hp, config, up, selection, out_dir, head_config):
    """One head on one upstream's features: its test metrics and how it was trained.

    With `out_dir`, the head is checkpointed in it and resumed from it.
    """
    layer = -1 if selection == "last" else None
    if task.kind == "sd":
        head = sd.make_head(task, hp, layer, up.cfg.hop)
    else:
        head = (asv if task.kind == "asv" else heads).make_head(task, hp, layer)
    checkpoint = None if out_dir is None else training.HeadCheckpoint(out_dir, head_config)
    title = f"{up.name} {head_config['name']}" if config.superb.progress else None
    try:
        params, history = training.train(
            head,
            data["train"],
            data.get("dev"),
            hp,
            config.superb.seed,
            log.info,
            weights=weights.get("train"),
            dev_weights=weights.get("dev"),
            checkpoint=checkpoint,
            progress=title,
        )
    finally:
        if checkpoint is not None:
            checkpoint.close()
    test = training.scores(head, params, data["test"], hp.batch_size)
    if task.kind == "utterance":
        baseline = majority_baseline(data["train"][1], data["test"][1])
    else:
        # an empty hypothesis; ASV: chance (random scores)
        baseline = {"per": 1.0, "wer": 1.0, "eer": 0.5, "der": 1.0}.get(task.metric, 0.0)
    return {
        "test": test[task.metric],
        "metrics": test,
        "baseline": baseline,
        "dev": history["dev_score"],
        "best_step": history["best_step"],
        "seconds": history["seconds"],
        "final_loss": history["loss"][-1][1] if history["loss"] else None,
        "resumed_from": history["resumed_from"],
        "layer_weights": heads.layer_weights(params, up.num_layers + 1).tolist(),
    }


def _mean_over_folds(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ER: the folds' metrics averaged (SUPERB's number), each fold kept."""
    runs = list(per_fold.values())
    mean = lambda key: float(np.mean([r[key] for r in runs]))
    out = dict(runs[0])
    out.update({k: mean(k) for k in ("test", "baseline", "seconds")})
    out["metrics"] = {m: float(np.mean([r["metrics"][m] for r in runs])) for m in out["metrics"]}
    out["layer_weights"] = np.mean([r["layer_weights"] for r in runs], axis=0).tolist()
    out["folds"] = per_fold
    return out


def evaluate_task(
    task: tasks.Task,
    store: features.FeatureStore,
    config: ml_collections.ConfigDict,
    up: upstream.Upstream | None = None,
    out_dir: pathlib.Path | None = None,
) -> dict[str, Any]:
    """Trains the task's head(s) on one upstream's features; test metrics and the protocol.

    With `out_dir` (the upstream's results folder) heads are checkpointed under its heads/.
    """
    c = config.superb
    hp = c[task.name]
    up = up or store.upstream
    if task.kind == "qbe":
        return _evaluate_qbe(task, config, up, out_dir)
    selections = ("weighted", "last") if c.layer_selection == "both" else (c.layer_selection,)
    folds = task.folds or {"": task.splits}
    runs: dict[str, dict[str, dict]] = {s: {} for s in selections}
    sizes = {}
    for fold, splits in folds.items():
        sizes[fold or "splits"] = {k: len(v) for k, v in splits.items()}
        data, weights = _features(task, splits, store, config, hp)
        for selection in selections:
            suffix = "last" if selection == "last" else ""
            name = "-".join(x for x in (task.name, fold, suffix) if x)
            head_config = {
                "name": name,
                "task": task.name,
                "fold": fold,
                "layer_selection": selection,
                "upstream": {"name": up.name, "kind": up.kind, "source": up.source},
                "hp": hp.to_dict(),
                "seed": c.seed,
                "normalize_layers": bool(c.normalize_layers),
                "sizes": sizes[fold or "splits"],
                "classes": [len(g) for g in task.classes],
            }
            head_dir = None if out_dir is None else out_dir / "heads" / name
            runs[selection][fold] = _fit(
                task, data, weights, hp, config, up, selection, head_dir, head_config
            )
    combined = {s: _mean_over_folds(r) if task.folds else r[""] for s, r in runs.items()}
    first = next(iter(folds.values()))
    result = {
        "metric": task.metric,
        **combined[selections[0]],
        "layer_selection": selections[0],
        "num_train": len(first["train"]),
        "num_dev": len(first.get("dev", ())),
        "num_test": len(first["test"]),
        "sizes": sizes,
        "classes": [len(g) for g in task.classes],
        "steps": hp.total_steps,
        "lr": hp.lr,
        "batch_size": hp.batch_size,
        "protocol": {"data": task.protocol, "head": benchmark.head_protocol(task, hp)},
        "deviations": list(task.deviations),
        "notes": task.notes,
    }
    if "last" in combined and selections[0] != "last":
        result["last_layer"] = combined["last"]
    return result


def _evaluate_qbe(task, config, up, out_dir) -> dict[str, Any]:
    """QbE: DTW on one hidden state (the best on dev, or the one set), MTWV; no head."""
    c = config.superb
    options = _read_options(config, WHOLE)

    def extract(records):
        found = features.extract(up, records, options, pool=False, normalize=c.normalize_layers)
        return {records[i]["name"]: x for i, x in found}

    key = {"upstream": {"name": up.name, "kind": up.kind, "source": up.source},
           "normalize_layers": bool(c.normalize_layers), "sizes": task.notes}  # fmt: skip
    cache = None if out_dir is None else out_dir / "heads" / "qbe" / "layers.json"
    layer = c.qbe.layer if c.qbe.layer == "best" else int(c.qbe.layer)
    title = f"{up.name} qbe (DTW)" if c.progress else None
    key["twv_beta"] = c.qbe.twv_beta
    r = qbe.evaluate(
        task.splits, extract, up.num_layers + 1, layer, cache, key, title, c.qbe.twv_beta
    )
    english = {k: sum(x["english"] for x in v) for k, v in task.splits.items()}
    return {
        "metric": "mtwv",
        "kind": "qbe",  # no head: the same result under every layer selection
        "test": r["test"],
        "metrics": {"mtwv": r["test"]},
        "baseline": 0.0,  # detecting nothing
        "dev": r["dev"],
        "best_step": r["layer"],
        "seconds": r["seconds"],
        "final_loss": None,
        "resumed_from": r["resumed_from"],
        "layer_weights": r["layer_weights"],
        "layer": r["layer"],
        "per_layer": r["per_layer"],
        "layer_selection": f"layer {r['layer']}" + (" (best on dev)" if layer == "best" else ""),
        "num_train": 0,
        "num_dev": english["dev"],
        "num_test": english["test"],
        "num_docs": english["docs"],
        "sizes": {"splits": english},
        "classes": [],
        "steps": 0,
        "lr": 0.0,
        "batch_size": 0,
        "protocol": {"data": task.protocol, "head": benchmark.head_protocol(task, c.qbe)},
        "deviations": list(task.deviations),
        "notes": task.notes,
    }


def evaluate_upstream(
    up: upstream.Upstream,
    task_list: list[tasks.Task],
    config: ml_collections.ConfigDict,
    out_dir: pathlib.Path | None = None,
) -> tuple[dict[str, Any], features.FeatureStore]:
    """Every task on one upstream: the results dict written to results.json (see evaluate_task)."""
    c = config.superb
    start = time.perf_counter()
    store = features.FeatureStore(up, c.normalize_layers, c.max_feature_gb * 2**30)
    results = {}
    for task in task_list:
        log.info("superb %s: %s", up.name, task.name)
        results[task.name] = evaluate_task(task, store, config, up, out_dir)
        r = results[task.name]
        log.info(
            "superb %s %s: test %s %.4f (baseline %.4f)",
            up.name,
            task.name,
            r["metric"],
            r["test"],
            r["baseline"],
        )
    return {
        "upstream": {"name": up.name, "kind": up.kind, "source": up.source, "info": up.info},
        "tasks": results,
        "superb": report.superb_scores(results),
        "layer_selection": c.layer_selection,
        "extract_seconds": store.seconds,
        "total_seconds": time.perf_counter() - start,
        "normalize_layers": bool(c.normalize_layers),
    }, store


def cka_records(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Held-out utterances for CKA: `cka_manifest`, else the synthetic corpus's test split."""
    from stackdistill.data import manifest

    c = config.superb
    if c.cka_manifest:
        records = manifest.read_manifest(c.cka_manifest)
    else:
        records = tasks.split_by_hash(tasks.synthetic_records(c, workdir), c.synth.test_fraction)
        records = records["test"]
    return records[: c.cka_utterances]


def layer_similarity(
    student: upstream.Upstream,
    teacher: upstream.Upstream,
    records: list[dict[str, Any]],
    config: ml_collections.ConfigDict,
) -> np.ndarray:
    """(student layers + 1, teacher layers + 1) linear CKA on frames of held-out utterances."""
    options = _read_options(config, EVAL_MAX_SAMPLES)
    per_model = []
    for up in (student, teacher):
        sequences = [None] * len(records)
        for i, x in features.extract(up, records, options, pool=False):
            sequences[i] = x
        per_model.append(sequences)
    s_frames = [s.shape[1] for s in per_model[0]]
    t_frames = [t.shape[1] for t in per_model[1]]
    if s_frames != t_frames:
        raise ValueError(f"{student.name} and {teacher.name} have different frame rates")
    s_all = np.concatenate(per_model[0], axis=1)  # (Ls+1, frames, D)
    t_all = np.concatenate(per_model[1], axis=1)
    rng = np.random.default_rng(config.superb.seed)
    count = min(config.superb.cka_frames, s_all.shape[1])
    chosen = np.sort(rng.choice(s_all.shape[1], count, replace=False))
    return cka.cka_matrix(list(s_all[:, chosen]), list(t_all[:, chosen]))


def _reusable(path: pathlib.Path, task_names: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return results if list(results["tasks"]) == task_names else None


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "eval") -> list[dict]:
    """Evaluates every upstream on every task; writes results, plots and the comparison."""
    logging.getLogger("stackdistill").setLevel(logging.INFO)
    c = config.superb
    out_root = pathlib.Path(workdir) / "superb"
    _check_upstreams(c.upstreams, workdir)
    if c.layer_selection not in LAYER_SELECTIONS:
        raise ValueError(
            f"config.superb.layer_selection is {c.layer_selection!r}, not one of {LAYER_SELECTIONS}"
        )
    task_names = list(c.tasks)
    task_list = [benchmark.build(name, c, workdir) for name in task_names]
    teacher_up = None
    all_results = []
    for spec in c.upstreams:
        name = upstream.parse_spec(spec, workdir)[0]
        out_dir = out_root / name
        if mode == "compare" and c.reuse_results:
            if (reused := _reusable(out_dir / "results.json", task_names)) is not None:
                log.info("superb %s: reusing %s", name, out_dir / "results.json")
                all_results.append(reused)
                continue
        up = upstream.load(spec, config, workdir)
        results, _ = evaluate_upstream(up, task_list, config, out_dir)
        if up.kind == "teacher":
            teacher_up = up
        elif c.cka:
            teacher_up = teacher_up or upstream.load("teacher", config, workdir)
            matrix = layer_similarity(up, teacher_up, cka_records(config, workdir), config)
            cka.plot_cka(matrix, out_dir / "cka.png", up.name, teacher_up.name)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "cka.json").write_text(json.dumps({"cka": matrix.tolist()}))
            results["cka_diagonal"] = _diagonal_summary(matrix)
        report.write_results(results, out_dir)
        log.info("superb %s: wrote %s", up.name, out_dir / "results.md")
        all_results.append(results)
    if mode == "compare" or len(all_results) > 1:
        (out_root / "compare.md").write_text(report.compare_markdown(all_results))
        (out_root / "compare.json").write_text(json.dumps(all_results, indent=1))
        log.info("superb: wrote %s", out_root / "compare.md")
    return all_results


def _check_upstreams(specs: Any, workdir: str) -> None:
    """Refuses bad specs and student runs without checkpoints before any work is done."""
    if isinstance(specs, str) or not specs:
        raise ValueError(f"config.superb.upstreams must be a list of specs, got {specs!r}")
    for spec in specs:
        _, kind, source, step = upstream.parse_spec(spec, workdir)
        directory = pathlib.Path(source) / "checkpoints"
        if kind == "student" and not any(p.name.isdigit() for p in directory.glob("*")):
            raise FileNotFoundError(
                f"upstream {spec!r}: no checkpoint in {directory} (run --mode=distill there first)"
            )
        if kind == "student" and step is not None and not (directory / str(step)).is_dir():
            raise FileNotFoundError(f"upstream {spec!r}: no checkpoint of step {step}")


def _diagonal_summary(matrix: np.ndarray) -> dict[str, Any]:
    """For each student layer, the teacher layer it is most similar to (CKA) and how much."""
    best = matrix.argmax(axis=1)
    return {"best_teacher_layer": best.tolist(), "best_cka": matrix.max(axis=1).tolist()}
