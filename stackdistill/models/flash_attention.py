"""attention="flash": Pallas's TPU flash attention over each utterance's valid keys.

The kernel (jax.experimental.pallas.ops.tpu.flash_attention) never writes the (T, T)
probabilities to HBM, forward or backward: the backward recomputes them block by block from
the saved log-sum-exp. Frames are padded to a multiple of its 128-frame blocks; every query
(padded ones too, as transformers does) attends to the valid keys only, by segment ids (queries
in segment 1, valid keys 1, padded keys 0). Up to `WHOLE` frames a sequence is one block (every
kernel, forward and backward): the kernel then reads q, k and v once per head, where 128-frame
blocks re-read every key block once per query block (and q, dO per key block backward).
Under an abstract mesh (`jax.sharding.use_abstract_mesh`, as stage.compile_step sets it for
the step), the kernel runs per device in a shard_map over the batch, split over every mesh
axis as the batch is (sharding.batch_sharding); without one (or on one device) it is called
as it is.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

BLOCK = 128  # the kernel's default block sizes (queries, keys, backward alike)
WHOLE = 1024  # up to this many (padded) frames a sequence is one block; above, LONG blocks
LONG = 512


def block_sizes(t: int) -> tuple[int, int]:
    """(padded frames, block) for a sequence of t frames: one block up to WHOLE frames."""
    padded = -(-t // BLOCK) * BLOCK
    if padded <= WHOLE:
        return padded, padded
    return -(-t // LONG) * LONG, LONG


def attention(q_btnh: jax.Array, k_btnh: jax.Array, v_btnh: jax.Array, mask_bt: jax.Array):
    """(B, T, N, H) softmax attention over the keys where mask_bt is True; (B, T, N, H) out."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or q_btnh.shape[0] % mesh.size:
        return attention_local(q_btnh, k_btnh, v_btnh, mask_bt)
    spec = PartitionSpec(tuple(mesh.axis_names))
    return jax.shard_map(
        attention_local, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, check_vma=False
    )(q_btnh, k_btnh, v_btnh, mask_bt)


def attention_local(q_btnh, k_btnh, v_btnh, mask_bt) -> jax.Array:
    """The kernel on one device's batch (under `pltpu.force_tpu_interpret_mode()` on a CPU)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash  # TPU use only

    b, t, _, h = q_btnh.shape
    padded, block = block_sizes(t)
    pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad).transpose(0, 2, 1, 3) for x in (q_btnh, k_btnh, v_btnh))
    keys = jnp.pad(mask_bt, ((0, 0), (0, padded - t))).astype(jnp.int32)
    segments = pallas_flash.SegmentIds(q=jnp.ones((b, padded), jnp.int32), kv=keys)
    sizes = pallas_flash.BlockSizes(
        block_q=block, block_k_major=block, block_k=block, block_b=1,
        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block, block_q_dkv=block,
        block_k_major_dq=block, block_k_dq=block, block_q_dq=block,
    )  # fmt: skip
    out = pallas_flash.flash_attention(
        q, k, v, segment_ids=segments, sm_scale=1 / math.sqrt(h), block_sizes=sizes
    )
    return out.transpose(0, 2, 1, 3)[:, :t]
