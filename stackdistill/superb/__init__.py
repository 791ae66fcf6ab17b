"""SUPERB-style evaluation of frozen upstreams (teacher, students, exported models).

    from stackdistill import superb
    matrix = superb.cka_matrix(student_layers, teacher_layers)  # lists of (frames, dim)
    superb.plot_cka(matrix, "cka.png")
    from stackdistill.superb import run; run.run(config, workdir)  # what --mode=eval does

Modules: `datasets` (readers of the SUPERB datasets' own layouts), `benchmark` (SUPERB's
tasks built from them), `tasks` (the Task record, mini-SUPERB, alternative sources),
`upstream` (what is evaluated), `features` (extraction), `heads` (weighted layer sum + head),
`training` (training, scoring, resumable head checkpoints), `qbe` (DTW, no head), `asv`
(x-vector head), `sd` (diarization head), `metrics`, `sf_metrics`, `detection` (EER, DER,
MTWV), `score` (SUPERB's columns and the leaderboard's superb_s), `cka`, `report`, `run`;
`probes` (layer-wise linear probes, the tiny teacher's probe table).
"""

import importlib
from typing import Any

from stackdistill.superb.cka import cka_matrix, linear_cka, plot_cka

_EXPORTS = {
    "default_config": "config",
    "evaluate_upstream": "run",
    "layer_similarity": "run",
    "accuracy": "metrics",
    "edit_distance": "metrics",
    "error_rate": "metrics",
    "word_error_rate": "metrics",
    "ctc_greedy_decode": "metrics",
    "plot_layer_weights": "report",
}
__all__ = [
    "accuracy",
    "cka_matrix",
    "ctc_greedy_decode",
    "default_config",
    "edit_distance",
    "error_rate",
    "evaluate_upstream",
    "layer_similarity",
    "linear_cka",
    "plot_cka",
    "plot_layer_weights",
    "word_error_rate",
]


def __getattr__(name: str) -> Any:
    """Imports an exported name from its module on first use (JAX only when needed)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
