"""DPHuBERT / DPWavLM structured pruning: hard concrete gates, expected size, Lagrangian, reader.

hardconcrete.py  gates (sample, deterministic, L0);  params.py  expected remaining params;
lagrangian.py  the sparsity regulariser;  checkpoint.py  their final checkpoint, zero-padded;
gated.py  the gated forward (gates folded into our Encoder's weights);  prune.py  their
prune step;  objective.py  their distill loss + Lagrangian as one train step;  narrow.py  an
unscanned pruned encoder at per-layer widths.
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
