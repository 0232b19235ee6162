"""defconv_np: deformable spatial operators on NumPy (CPU) and CuPy (GPU) arrays,
with exact analytic gradients.

NumPy arrays run on Numba CPU kernels; CuPy arrays on Numba CUDA kernels. CuPy
is optional and imported only when a CuPy array arrives.
"""

from . import _compile_log, config  # noqa: F401  (_compile_log: Numba's compile events)
from ._warmup import warmup
from .active import ActiveConv2dGrads, active_conv2d, active_conv2d_backward
from .attention import MSDeformAttnGrads, ms_deform_attn, ms_deform_attn_backward
from .convolution import Conv2dGrads, conv2d, conv2d_backward
from .deformable import DeformConv2dGrads, deform_conv2d, deform_conv2d_backward
from .spatial import (
    GridSampleGrads,
    affine_grid,
    affine_grid_backward,
    grid_sample,
    grid_sample_backward,
)

__version__ = "0.1.0"

__all__ = [
    "ActiveConv2dGrads",
    "active_conv2d",
    "active_conv2d_backward",
    "Conv2dGrads",
    "DeformConv2dGrads",
    "GridSampleGrads",
    "MSDeformAttnGrads",
    "affine_grid",
    "affine_grid_backward",
    "config",
    "conv2d",
    "conv2d_backward",
    "deform_conv2d",
    "deform_conv2d_backward",
    "grid_sample",
    "grid_sample_backward",
    "ms_deform_attn",
    "ms_deform_attn_backward",
    "warmup",
]
