"""DPHuBERT / DPWavLM structured pruning: hard concrete gates, expected size, Lagrangian, reader.

hardconcrete.py  gates (sample, deterministic, L0);  params.py  expected remaining params;
lagrangian.py  the sparsity regulariser;  checkpoint.py  their final checkpoint, zero-padded.
"""

from stackdistill.pruning import checkpoint, hardconcrete, lagrangian, params

__all__ = ["checkpoint", "hardconcrete", "lagrangian", "params"]
