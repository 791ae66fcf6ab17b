"""The benchmarks' name for stackdistill.flops (analytic FLOPs, XLA's count, MFU)."""

from stackdistill.flops import *  # noqa: F403
from stackdistill.flops import CPU_PEAK_FLOPS, H100_BF16_PEAK_FLOPS  # noqa: F401
