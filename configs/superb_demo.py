"""Mini-SUPERB on the offline demo: the tiny random teacher and the demo's student.

  python -m stackdistill.main --config=configs/demo.py --workdir=/tmp/demo          # distil
  python -m stackdistill.main --config=configs/superb_demo.py --workdir=/tmp/demo --mode=eval

Evaluates the teacher and the run's latest student on KS-synth, SID-synth and PR-synth (400
espeak-ng utterances, seed 1, generated once into WORKDIR/superb/synth) and writes the tables,
layer-weight plots and the student-teacher CKA heatmap under WORKDIR/superb/. About 1-2 minutes
per upstream on 2 CPU cores. Compare stacking methods by listing their runs:
`--config.superb.upstreams="('teacher','interleaved=student:/tmp/demo','top=student:/tmp/demo_top')"`
with --mode=compare.
"""

import importlib.util
import pathlib

from stackdistill.config import apply_arg


def _demo_config():
    """configs/demo.py's config (loaded by path: configs/ is not a package)."""
    path = pathlib.Path(__file__).with_name("demo.py")
    spec = importlib.util.spec_from_file_location("demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg=None):
    c = _demo_config()
    c.superb.upstreams = ("teacher", "student")
    return apply_arg(c, arg)
