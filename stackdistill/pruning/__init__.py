"""DPHuBERT / DPWavLM structured pruning: hard concrete gates, expected size, Lagrangian, reader.

hardconcrete.py  gates (sample, deterministic, L0);  params.py  expected remaining params;
lagrangian.py  the sparsity regulariser;  checkpoint.py  their final checkpoint, zero-padded;
gated.py  the gated forward (gates folded into our Encoder's weights);  prune.py  their
prune step;  objective.py  their distill loss + Lagrangian as one train step (and the final
distillation's step);  narrow.py  an unscanned pruned encoder at per-layer widths;
pipeline.py  their run.sh as one resumable run (imported on use: it loads teachers and data);
store.py  its model folders.
"""

from stackdistill.pruning import (
    checkpoint,
    gated,
    hardconcrete,
    lagrangian,
    narrow,
    objective,
    params,
    prune,
)

__all__ = [
    "checkpoint",
    "gated",
    "hardconcrete",
    "lagrangian",
    "narrow",
    "objective",
    "params",
    "prune",
]
