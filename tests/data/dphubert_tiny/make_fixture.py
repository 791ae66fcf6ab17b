"""Makes the DPHuBERT / DPWavLM parity fixture with THEIR code (pyf98/DPHuBERT), not ours.

Run:  python tests/data/dphubert_tiny/make_fixture.py --repo /path/to/DPHuBERT
(needs only torch; their `wav2vec2/` package, `prune.py` and `save_final_ckpt.py` are run from
--repo, nothing of theirs is copied here). For each of a tiny HuBERT-shaped, a tiny
WavLM-shaped and a tiny Large-style HuBERT (LayerNorm extractor, pre-LN) model it: builds
the model with every pruning unit gated (conv, head, interm, attlayer, ffnlayer), sets the
gates' log_alpha by hand, records their `get_num_params()` of the gated model, prunes it
with their `prune.prune_from_ckpt`, writes the final checkpoint with their
`save_final_ckpt.py` (the format `teacher.load` must read), reloads it with their
`prune.load_pruned_model`, and stores its hidden states on a fixed input.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent

CONV = [(16, 10, 5), (12, 3, 2), (16, 2, 2)]
EMBED, HEADS, HEAD_DIM, FFN, LAYERS = 32, 4, 8, 64, 3
# Units removed per gate (indices): heterogeneous widths, one whole attention block and one
# whole FFN block removed. WavLM keeps layer 0's attention (it owns the relative bias table).
DROP = {
    "hubert": {
        "conv": [[1, 5, 9], [0, 7], [2, 3, 11, 14]],
        "heads": [[2], [], [0, 3]],
        "interm": [list(range(0, 64, 3)), list(range(5, 20)), []],
        "attlayer": [False, True, False],
        "ffnlayer": [False, False, True],
    },
    "wavlm": {
        "conv": [[0, 4], [3, 8, 9], [1, 15]],
        "heads": [[1], [0, 2], []],
        "interm": [list(range(10, 30)), [], list(range(0, 64, 2))],
        "attlayer": [False, False, True],
        "ffnlayer": [False, True, False],
    },
    # Large-style: LayerNorm over channels after every conv, conv bias, pre-LN layers.
    "hubert_ln": {
        "conv": [[3, 4], [0, 1, 2], [5, 6, 7, 8, 9]],
        "heads": [[0, 1], [], [3]],
        "interm": [list(range(30, 60)), list(range(0, 64, 4)), []],
        "attlayer": [False, True, False],
        "ffnlayer": [False, False, True],
    },
}
NUM_SAMPLES = {"hubert": (4000, 3100), "wavlm": (4000, 3100), "hubert_ln": (2000, 1500)}


def base_config(model: str) -> dict:
    """Their wav2vec2_model(**config) kwargs for the tiny unpruned model."""
    c = dict(
        extractor_mode="group_norm",
        extractor_conv_layer_config=CONV,
        extractor_conv_bias=False,
        encoder_embed_dim=EMBED,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4,
        encoder_num_layers=LAYERS,
        encoder_use_attention=[True] * LAYERS,
        encoder_use_feed_forward=[True] * LAYERS,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=[FFN] * LAYERS,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=None,
        normalize_waveform=False,
    )
    if model == "hubert_ln":
        c.update(
            extractor_mode="layer_norm", extractor_conv_bias=True, encoder_layer_norm_first=True
        )
    if model.startswith("hubert"):
        c.update(encoder_num_heads=[HEADS] * LAYERS, encoder_head_dim=HEAD_DIM)
    else:  # WavLM Base+ shapes: layer-norm extractor would be Large; Base+ is group norm
        c.update(
            encoder_total_num_heads=[HEADS] * LAYERS,
            encoder_remaining_heads=[list(range(HEADS))] * LAYERS,
            encoder_num_buckets=16,
            encoder_max_distance=40,
        )
    return c


PRUNE_FLAGS = dict(
    extractor_prune_conv_channels=True,
    encoder_prune_attention_heads=True,
    encoder_prune_attention_layer=True,
    encoder_prune_feed_forward_intermediate=True,
    encoder_prune_feed_forward_layer=True,
)


def _gate(hc, drop: list[int], gen: torch.Generator) -> None:
    """Kept units: log_alpha ~ U(2, 5) (soft eval mask 0.92..0.998); dropped: -10."""
    la = 2 + 3 * torch.rand(hc.n_in, generator=gen)
    la[drop] = -10.0
    hc.log_alpha.data.copy_(la)


def make(model: str, repo: pathlib.Path, out: pathlib.Path) -> dict:
    from prune import load_pruned_model, prune_from_ckpt
    from wav2vec2.model import wav2vec2_model

    gen = torch.Generator().manual_seed(list(DROP).index(model))
    torch.manual_seed(0)
    config = base_config(model)
    teacher = wav2vec2_model(**config)
    student = wav2vec2_model(**config, **PRUNE_FLAGS)
    # Non-trivial norms and biases so that a wrong mapping cannot pass by accident.
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "log_alpha" in name or "dummy_weight" in name:
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or "gru_rel_pos_const" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    d = DROP[model]
    log_alpha = {}
    for i, layer in enumerate(student.feature_extractor.conv_layers):
        _gate(layer.hard_concrete, d["conv"][i], gen)
        log_alpha[f"conv{i}"] = layer.hard_concrete.log_alpha.detach().numpy().copy()
    for i, layer in enumerate(student.encoder.transformer.layers):
        att, ffn = layer.attention, layer.feed_forward
        _gate(att.hard_concrete_for_heads, d["heads"][i], gen)
        _gate(att.hard_concrete_for_layer, [0] if d["attlayer"][i] else [], gen)
        _gate(ffn.hard_concrete_for_intermediate, d["interm"][i], gen)
        _gate(ffn.hard_concrete_for_layer, [0] if d["ffnlayer"][i] else [], gen)
        for key, hc in (
            ("heads", att.hard_concrete_for_heads),
            ("attlayer", att.hard_concrete_for_layer),
            ("interm", ffn.hard_concrete_for_intermediate),
            ("ffnlayer", ffn.hard_concrete_for_layer),
        ):
            log_alpha[f"{key}{i}"] = hc.log_alpha.detach().numpy().copy()
    gated_num_params = float(student.get_num_params())
    # The gated model's own weights (gates left out: their log_alphas are in the npz below),
    # for tests that prune our copy of it and compare with their prune().
    np.savez_compressed(
        out / f"dp{model}_tiny_gated.npz",
        **{
            k: v.detach().numpy()
            for k, v in student.state_dict().items()
            if "hard_concrete" not in k
        },
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        proj = torch.nn.Linear(EMBED, EMBED)
        lightning = {f"student_model.{k}": v for k, v in student.state_dict().items()}
        lightning.update({f"distill_linear_projs.0.{k}": v for k, v in proj.state_dict().items()})
        torch.save({"state_dict": lightning}, tmp / "distilled.ckpt")
        torch.save({"config": config}, tmp / "original.pth")
        # run.sh step "prune and save model" (prune.py L95-102), then the final distillation
        # (left out: it only changes weight values) and save_final_ckpt.py as run.sh L113-115.
        pruned = prune_from_ckpt(tmp / "distilled.ckpt", tmp / "original.pth")
        torch.save(pruned, tmp / "pruned_config.pth")
        final_dir = tmp / "final" / "ckpts"
        final_dir.mkdir(parents=True)
        final = {f"student_model.{k}": v for k, v in pruned["state_dict"].items()}
        final.update(
            {f"distill_linear_projs.{k}": v for k, v in pruned["distill_linear_projs"].items()}
        )
        torch.save({"state_dict": final}, final_dir / "last.ckpt")
        subprocess.run(
            [
                sys.executable,
                "save_final_ckpt.py",
                "--config_path",
                str(tmp / "pruned_config.pth"),
                "--ckpt_after_final_distill",
                str(final_dir / "last.ckpt"),
            ],
            cwd=repo,
            check=True,
            capture_output=True,
        )
        ckpt_path = out / f"dp{model}_tiny.pth"
        (final_dir / "pruned_hubert_base.pth").replace(ckpt_path)

    pruned_model = load_pruned_model(ckpt_path).eval()
    pruned_cfg = torch.load(ckpt_path, map_location="cpu")["config"]
    num_samples, short = NUM_SAMPLES[model]
    wav = 0.3 * torch.randn(2, num_samples, generator=gen)
    lengths = torch.tensor([num_samples, short])
    wav[1, short:] = 0.0
    with torch.no_grad():
        features, frame_lengths = pruned_model.feature_extractor(wav, lengths)
        states, _ = pruned_model.extract_features(wav, lengths)
        # Their list starts with the projection output; transformers (and we) start with the
        # input of layer 0, i.e. after the positional conv and the encoder LayerNorm.
        first = pruned_model.encoder.transformer._preprocess(states[0])
        hidden = torch.stack([first] + list(states[1:]))
    np.savez_compressed(
        out / f"dp{model}_tiny_outputs.npz",
        wav=wav.numpy(),
        lengths=lengths.numpy(),
        features=features.numpy(),
        frame_lengths=frame_lengths.numpy(),
        hidden_states=hidden.numpy(),
        **{f"log_alpha_{k}": v for k, v in log_alpha.items()},
    )
    return dict(
        unpruned_config=config,
        pruned_config=pruned_cfg,
        teacher_num_params=sum(p.numel() for p in teacher.parameters()),
        gated_expected_num_params=gated_num_params,
        pruned_get_num_params=float(pruned_model.get_num_params()),
        pruned_numel=sum(p.numel() for p in pruned_model.parameters()),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=pathlib.Path, required=True, help="a DPHuBERT checkout")
    ap.add_argument("--out", type=pathlib.Path, default=HERE)
    args = ap.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    meta = {m: make(m, repo, args.out) for m in DROP}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        json.dumps({m: {k: v for k, v in x.items() if "config" not in k} for m, x in meta.items()})
    )


if __name__ == "__main__":
    main()
