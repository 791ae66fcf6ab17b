"""Tiny randomly initialised transformers models, saved with save_pretrained, for parity tests."""

from __future__ import annotations

import pathlib

import numpy as np

TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_feat_extract_layers=3,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


# model_type -> (config class, model class) in transformers.
HF_CLASSES = {
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
}


def make_hf_model(model_type: str, stable: bool, seed: int = 0, head: str = "", **overrides):
    """A random HubertModel/WavLMModel/Wav2Vec2Model in eval mode (both norm modes via `stable`).

    `head` picks a task model instead (e.g. "ForPreTraining", "ForCTC"): Wav2Vec2ForCTC, ...
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    kwargs = dict(
        TINY, do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group"
    )
    kwargs.update(overrides)
    config_cls, model_cls = HF_CLASSES[model_type]
    if head:
        model_cls = model_cls.removesuffix("Model") + head
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
    # Random init leaves LayerNorms at identity and biases at zero; perturb every tensor so
    # that a transposed or misplaced one cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_hf_model(model, directory: pathlib.Path, safe: bool = True) -> pathlib.Path:
    """save_pretrained; with safe=False the weights go to a pytorch_model.bin pickle instead."""
    import torch

    model.save_pretrained(directory)
    if not safe:  # transformers 5 writes safetensors only; older checkpoints are pickles
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


def padded_batch(num_samples: int, fraction: float = 0.7, seed: int = 0):
    """Two utterances, one full and one `fraction` long, zero-padded; (wav, lengths)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([num_samples, int(num_samples * fraction)], np.int32)
    wav = rng.standard_normal((2, num_samples)).astype(np.float32) * 0.3
    wav[1, lengths[1] :] = 0.0
    return wav, lengths


def hf_hidden_states(model, wav: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """transformers' output_hidden_states for the batch, with the matching attention mask."""
    import torch

    mask = (np.arange(wav.shape[1])[None] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        out = model(
            torch.from_numpy(wav), attention_mask=torch.from_numpy(mask), output_hidden_states=True
        )
    return [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]


# The architecture fields of facebook/wav2vec2-xls-r-300m's config.json (transformers 4.12).
XLSR_300M = dict(
    model_type="wav2vec2",
    architectures=["Wav2Vec2ForPreTraining"],
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    conv_bias=True,
    conv_dim=[512] * 7,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    num_feat_extract_layers=7,
    feat_extract_activation="gelu",
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    layer_norm_eps=1e-05,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    mask_time_prob=0.075,
    mask_feature_prob=0.0,
    num_codevector_groups=2,
    num_codevectors_per_group=320,
    codevector_dim=768,
    proj_codevector_dim=768,
)
