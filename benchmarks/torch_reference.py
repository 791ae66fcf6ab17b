"""benchmarks/step_vs_pytorch.py's PyTorch reference: transformers' HubertModel as student
with nn.Linear heads and the same weights, the same losses, one AdamW step, and the CNN
front-end's forward+backward timed in both frameworks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from harness import LEARNING_RATE, TEACHER_LAYERS, median_time


def torch_student(s_cfg, params: dict[str, Any], sources: dict[int, int]):
    """transformers HubertModel + nn.Linear heads holding the JAX student's initial weights."""
    import torch
    import transformers

    from stackdistill import convert

    hf = {**s_cfg.to_hf(), "hidden_dropout": 0.0, "activation_dropout": 0.0,
          "attention_dropout": 0.0, "feat_proj_dropout": 0.0, "layerdrop": 0.0,
          "apply_spec_augment": False}  # fmt: skip
    model = transformers.HubertModel(transformers.HubertConfig(**hf))
    state = convert.params_to_state_dict(s_cfg.replace(dtype="float32"), params["encoder"])
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False
    )
    if unexpected or set(missing) - {"masked_spec_embed"}:
        raise RuntimeError(f"student weights do not fit: {missing=} {unexpected=}")
    heads = torch.nn.ModuleDict()
    for k in sources:
        head = params["heads"][f"layer_{k}"]
        linear = torch.nn.Linear(*np.shape(head["kernel"]))
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.asarray(head["kernel"]).T.copy()))
            linear.bias.copy_(torch.from_numpy(np.asarray(head["bias"])))
        heads[str(k)] = linear
    return model.train(), heads.train()


def torch_loss(preds: dict[int, Any], targets: dict[int, Any], loss: str):
    """The same losses as stackdistill.losses on an unpadded batch."""
    import torch
    import torch.nn.functional as F

    if loss == "mse":
        inner = [F.mse_loss(preds[k], targets[k]) for k in TEACHER_LAYERS[:-1]]
        return F.mse_loss(preds[12], targets[12]) + 0.5 * torch.stack(inner).mean()
    heads = [
        F.l1_loss(preds[k], targets[k])
        - F.logsigmoid(F.cosine_similarity(preds[k], targets[k], dim=-1, eps=1e-8)).mean()
        for k in TEACHER_LAYERS
    ]
    return torch.stack(heads).mean()


def autocast(device: str, dtype: str):
    """bf16 autocast on `device`, or a no-op context."""
    import contextlib

    import torch

    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_step_fn(t_model, s_model, heads, loss: str, sources: dict[int, int], wav,
                  device: str = "cpu", amp: str = "none", fused: bool = False):  # fmt: skip
    """A closure running one reference step (teacher no_grad, student fwd/bwd, AdamW).

    t_model and s_model may be torch.compile'd modules; with amp="bf16" the forwards and the
    loss run under bf16 autocast (the weights and AdamW stay float32).
    """
    import torch

    params = list(s_model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0, eps=1e-8,
                            **({"fused": True} if fused else {}))  # fmt: skip
    x = torch.from_numpy(wav).to(device)

    def run() -> float:
        with torch.no_grad(), autocast(device, amp):
            hidden = t_model(x, output_hidden_states=True).hidden_states
        targets = {k: hidden[k].float() for k in TEACHER_LAYERS}
        with autocast(device, amp):
            s_hidden = s_model(x, output_hidden_states=True).hidden_states
            preds = {k: heads[str(k)](s_hidden[s]) for k, s in sources.items()}
        value = torch_loss({k: v.float() for k, v in preds.items()}, targets, loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        return value.item()

    return run


def frontend_times(s_cfg, encoder_params, s_model, wav: np.ndarray, repeats: int,
                   device: str = "cpu", amp: str = "none") -> dict:  # fmt: skip
    """Median forward+backward seconds of the student's CNN front-end alone, JAX and PyTorch."""
    from stackdistill.models.encoder import FeatureExtractor

    module = FeatureExtractor(s_cfg)
    grad = jax.jit(jax.grad(lambda p, w: jnp.mean(jnp.square(module.apply({"params": p}, w)))))
    params, wav_d = jax.device_put(encoder_params["feature_extractor"]), jax.device_put(wav)
    jax.block_until_ready(grad(params, wav_d))
    out = {"jax_frontend_fwd_bwd_s": median_time(
        lambda: jax.block_until_ready(grad(params, wav_d)), repeats)}  # fmt: skip
    if s_model is not None:
        import torch

        x = torch.from_numpy(wav).to(device)

        def run_torch():
            s_model.zero_grad(set_to_none=True)
            with autocast(device, amp):
                y = s_model.feature_extractor(x)
            y.float().square().mean().backward()
            sync(device)

        run_torch()
        out["torch_frontend_fwd_bwd_s"] = median_time(run_torch, repeats)
    return out


def sync(device: str) -> None:
    """Waits for the GPU's queued work (nothing to wait for on a CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def torch_variants(args) -> list[tuple[str, bool]]:
    """(name, torch.compile?) of the reference variants: eager, and compiled on CUDA/--compile."""
    suffix = "" if args.autocast == "none" else f"+{args.autocast}"
    out = [("eager" + suffix, False)]
    if args.compile or (args.device == "cuda" and not args.no_compile):
        out.append(("compile" + suffix, True))
    return out
