"""A tiny HuBERT-architecture teacher that knows something, trained offline on a CPU.

    python -m stackdistill.tiny_teacher --config=configs/tiny_teacher.py --workdir=DIR

Our encoder is trained on the synthetic espeak-ng corpus with phoneme CTC on its top layer
and speaker (voice) classification, mean-pooled, on a middle layer; a speaker adversary on
the top layer (a confusion loss) and a penalty on the between-speaker share of the top layer's
variance push voice out of the upper layers. It is written in
transformers format to DIR/teacher (`teacher.load` and `HubertModel.from_pretrained` read
it), with DIR/vocab.json, DIR/train.json (loss history) and DIR/probe.md: linear probes on
every layer of a held-out corpus -- ridge speaker accuracy on mean-pooled frames and the
phoneme error rate of a linear CTC probe (`stackdistill.superb.probes`), each with its 95%
bootstrap interval -- beside the same probes on a random init (`--probe_only` reruns them on
the teacher already in DIR). Training runs exactly `total_steps` steps: the weights are a
function of the config and its seed, never of the machine's speed.
Times and tables of the current teacher: benchmarks/RESULTS.md, "Tiny teacher".
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stackdistill import teacher
from stackdistill.data.labels import build_vocab, label_ids
from stackdistill.models import Encoder, EncoderConfig
from stackdistill.models import init_params as init_encoder
from stackdistill.superb import probes
from stackdistill.superb.features import mean_pool
from stackdistill.superb.heads import Params, ctc_head, ctc_loss, linear_params

log = logging.getLogger("stackdistill")


# ---------------------------------------------------------------- model and step


def init_model(cfg: EncoderConfig, num_phonemes: int, num_speakers: int, seed: int) -> Params:
    """Encoder params plus a CTC head (phonemes + blank), a speaker head and a speaker
    adversary head on the top layer (used only with config.speaker_adversary_weight > 0)."""
    enc_rng, ctc_rng, spk_rng, adv_rng = jax.random.split(jax.random.key(seed), 4)
    return {
        "encoder": init_encoder(cfg, enc_rng),
        "ctc": ctc_head(ctc_rng, cfg.hidden_size, num_phonemes),
        "speaker": linear_params(spk_rng, cfg.hidden_size, num_speakers),
        "adversary": linear_params(adv_rng, cfg.hidden_size, num_speakers),
    }


def forward(
    cfg: EncoderConfig, params: Params, audio: jax.Array, lengths: jax.Array, c: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(CTC logits (B, T, V) of the top layer, speaker logits (B, S), mean-pooled top layer
    (B, D), frame mask (B, T))."""
    out = Encoder(cfg).apply({"params": params["encoder"]}, audio, lengths)
    ctc, spk = params["ctc"], params["speaker"]
    ctc_logits = out.hidden_states[c.ctc_layer] @ ctc["kernel"] + ctc["bias"]
    pooled_bd = mean_pool(out.hidden_states[c.speaker_layer], out.mask)
    top_bd = mean_pool(out.hidden_states[c.ctc_layer], out.mask)
    return ctc_logits, pooled_bd @ spk["kernel"] + spk["bias"], top_bd, out.mask


def adversary_losses(
    head: Params, top_bd: jax.Array, speaker_b: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(adversary cross-entropy, encoder confusion loss, adversary accuracy).

    The head learns to tell voices from the pooled top layer (encoder held fixed); the
    encoder is pushed towards the head's uniform answer (head held fixed), which is
    minimal when the top layer carries no linear voice information (Tzeng et al., 2015).
    Maximising the head's cross-entropy instead (gradient reversal) lets the encoder make
    it confidently wrong, and that loss grows without bound.
    """
    sg = jax.lax.stop_gradient
    logits = sg(top_bd) @ head["kernel"] + head["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, speaker_b).mean()
    enc_logits = top_bd @ sg(head["kernel"]) + sg(head["bias"])
    confusion = -jnp.mean(jax.nn.log_softmax(enc_logits, axis=-1))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == speaker_b)
    return ce, confusion, accuracy


def between_speaker_share(pooled_bd: jax.Array, speaker_b: jax.Array, num_speakers: int):
    """The share of the batch's variance that lies between speakers: trace(S_between) /
    trace(S_total) of the mean-pooled vectors (0: every voice present has the batch mean;
    1: utterances of one voice coincide). Its gradient pulls each voice's mean towards the
    batch mean along every direction at once, where a linear adversary only sees its own
    few directions and the encoder can move voice elsewhere."""
    centred = pooled_bd - pooled_bd.mean(0)
    onehot = jax.nn.one_hot(speaker_b, num_speakers, dtype=pooled_bd.dtype)  # (B, S)
    counts = onehot.sum(0)
    sums = onehot.T @ centred  # (S, D): per-voice sums of centred vectors
    between = jnp.sum(jnp.sum(sums**2, -1) / jnp.maximum(counts, 1.0))
    return between / (jnp.sum(centred**2) + 1e-6)


def make_step(cfg: EncoderConfig, c: Any, tx: optax.GradientTransformation, num_speakers: int):
    """The jitted step: (params, opt_state, batch) -> (params, opt_state, metrics)."""

    def loss_fn(params, batch):
        ctc_logits, spk_logits, top_bd, mask = forward(
            cfg, params, batch["audio"], batch["lengths"], c
        )
        ctc = ctc_loss(ctc_logits, mask, batch["ids"], batch["paddings"])
        spk = optax.softmax_cross_entropy_with_integer_labels(spk_logits, batch["speaker"]).mean()
        accuracy = jnp.mean(jnp.argmax(spk_logits, -1) == batch["speaker"])
        metrics = {"ctc": ctc, "speaker": spk, "speaker_acc": accuracy}
        loss = ctc + c.speaker_weight * spk
        if c.speaker_adversary_weight > 0:  # voice kept in the middle, out of the top
            adv, confusion, adv_acc = adversary_losses(
                params["adversary"], top_bd, batch["speaker"]
            )
            metrics.update(adversary=adv, adversary_acc=adv_acc, confusion=confusion)
            loss = loss + adv + c.speaker_adversary_weight * confusion
        if c.speaker_invariance_weight > 0:  # voice means pulled together on the top layer
            share = between_speaker_share(top_bd, batch["speaker"], num_speakers)
            metrics["between_speaker_share"] = share
            loss = loss + c.speaker_invariance_weight * share
        return loss, metrics

    def step(params, opt_state, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

    return jax.jit(step, donate_argnums=(0, 1))


# ---------------------------------------------------------------- training


def _corpus_rows(data_cfg: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    from stackdistill.data import manifest, synth

    path = synth.ensure_corpus(data_cfg.path, data_cfg.synth_num, data_cfg.synth_seed)
    return manifest.read_manifest(path)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains the tiny teacher, writes workdir/teacher (+ vocab.json, train.json); a summary."""
    from stackdistill import data as data_lib

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = EncoderConfig(**dict(config.arch))
    if not 0 < config.speaker_layer <= cfg.num_layers or config.ctc_layer != cfg.num_layers:
        raise ValueError("config.ctc_layer must be the top layer, speaker_layer one below it")
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    if not pathlib.Path(data_cfg.path).is_absolute():
        data_cfg.path = str(workdir / data_cfg.path)
    rows = _corpus_rows(data_cfg)
    longest = max(int(r["num_samples"]) for r in rows)
    if longest > data_cfg.max_samples:  # a crop would cut phonemes its CTC labels still hold
        raise ValueError(f"data.max_samples={data_cfg.max_samples} < longest utterance {longest}")
    vocab = build_vocab(rows)
    (workdir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    num_speakers = max(int(r["speaker"]) for r in rows) + 1
    params = init_model(cfg, len(vocab), num_speakers, config.seed)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        config.learning_rate,
        max(int(config.warmup_fraction * config.total_steps), 1),
        config.total_steps,
        end_value=0.05 * config.learning_rate,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay),
    )
    opt_state = tx.init(params)
    step_fn = make_step(cfg, config, tx, num_speakers)
    loader = data_lib.make_loader(data_cfg, seed=config.seed, process_index=0, process_count=1)

    history, window, started = [], [], time.perf_counter()
    for step in range(1, config.total_steps + 1):
        batch = next(loader)
        ids, paddings = label_ids(batch["phonemes"], vocab, config.max_label_length)
        inputs = {k: batch[k] for k in ("audio", "lengths", "speaker")}
        params, opt_state, metrics = step_fn(
            params, opt_state, {**inputs, "ids": ids, "paddings": paddings}
        )
        window.append(metrics)
        if step % config.log_every == 0 or step == config.total_steps:
            mean = {k: float(np.mean([m[k] for m in jax.device_get(window)])) for k in window[0]}
            if not np.isfinite(mean["loss"]):
                raise FloatingPointError(f"non-finite tiny-teacher loss at step {step}: {mean}")
            elapsed = time.perf_counter() - started
            history.append({"step": step, "seconds": elapsed, **mean})
            log.info(
                "tiny teacher step %d (%.0f s): %s",
                step,
                elapsed,
                ", ".join(f"{k}={v:.4g}" for k, v in mean.items()),
            )
            window = []
    seconds = time.perf_counter() - started
    teacher.save(workdir / "teacher", cfg, params["encoder"])
    np.savez(
        workdir / "heads.npz",
        **{f"{h}_{k}": np.asarray(v) for h in ("ctc", "speaker") for k, v in params[h].items()},
    )
    summary = {
        "steps": config.total_steps,
        "train_seconds": seconds,
        "history": history,
        "num_phonemes": len(vocab) - 1,
        "num_speakers": num_speakers,
    }
    (workdir / "train.json").write_text(json.dumps(summary, indent=1))
    return {**summary, "params": params, "cfg": cfg, "vocab": vocab}


def load_trained(workdir: str | pathlib.Path) -> dict[str, Any]:
    """The teacher trained in workdir: {"cfg", "params" (encoder, ctc, speaker), "vocab"}."""
    workdir = pathlib.Path(workdir)
    cfg, encoder = teacher.load(str(workdir / "teacher"), use_cache=False)
    heads = np.load(workdir / "heads.npz")
    params = {"encoder": encoder}
    for h in ("ctc", "speaker"):
        params[h] = {k: jnp.asarray(heads[f"{h}_{k}"]) for k in ("kernel", "bias")}
    vocab = json.loads((workdir / "vocab.json").read_text())
    return {"cfg": cfg, "params": params, "vocab": vocab}


def probe(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, trained: dict[str, Any]
) -> dict[str, Any]:
    """The layer-wise probe tables of the trained teacher and of its random init; probe.md."""
    workdir = pathlib.Path(workdir)
    probe_data = ml_collections.ConfigDict(config.data.to_dict())
    probe_data.update(
        path=str(workdir / "probe_corpus"), synth_num=config.probe.num, synth_seed=config.probe.seed
    )
    rows = _corpus_rows(probe_data)
    cfg, vocab, max_samples = trained["cfg"], trained["vocab"], config.data.max_samples
    initial = init_model(cfg, len(vocab), 1, config.seed)["encoder"]
    started = time.perf_counter()
    hidden = probes.layer_features(cfg, trained["params"]["encoder"], rows, max_samples)
    tables = {"trained": probes.probe_layers(*hidden, rows, vocab, config, trained["params"])}
    random_init = probes.layer_features(cfg, initial, rows, max_samples)
    tables["random init"] = probes.probe_layers(*random_init, rows, vocab, config)
    num_train = int(round(config.probe.train_fraction * len(rows)))
    markdown = probes.probe_markdown(tables, num_train, len(rows) - num_train)
    (workdir / "probe.md").write_text(markdown)
    print(markdown)
    return {"probe": tables, "probe_seconds": time.perf_counter() - started}


def run(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, probe_only: bool = False
) -> dict[str, Any]:
    """Trains (unless probe_only: the teacher already in workdir), writes the teacher and,
    if config.probe.num, the layer-wise probe tables."""
    workdir = pathlib.Path(workdir)
    if probe_only:
        summary = json.loads((workdir / "train.json").read_text())
        trained = load_trained(workdir)
    else:
        trained = train(config, workdir)
        summary = {k: v for k, v in trained.items() if k not in ("params", "cfg", "vocab")}
    if config.probe.num:
        summary.update(probe(config, workdir, trained))
    (workdir / "train.json").write_text(json.dumps(summary, indent=1))
    return summary


def _main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("stackdistill").setLevel(logging.INFO)
    run(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.probe_only)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from stackdistill import hostmem

    config_flags.DEFINE_config_file("config", None, "configs/tiny_teacher.py")
    flags.DEFINE_string("workdir", None, "output folder (teacher/, probe.md, train.json)")
    flags.DEFINE_bool("probe_only", False, "probe the teacher already trained in --workdir")
    flags.mark_flags_as_required(["config", "workdir"])
    hostmem.configure()  # before the JAX backend starts
    app.run(_main)
