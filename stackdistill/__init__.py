"""stackdistill: distil HuBERT/WavLM teachers into small students grown by interleaved stacking.

Public API (see README): ``teacher.load``, ``models.encode``, ``stacking.grow``.
Submodules are imported on use (``from stackdistill import teacher``) so that importing the
package stays cheap.
"""

__version__ = "0.1.0"
