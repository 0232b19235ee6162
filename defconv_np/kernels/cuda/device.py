"""The shared per-point maths (``kernels.sampling``) compiled as CUDA device functions."""

from numba import cuda

from .. import sampling

_device = cuda.jit(device=True, inline="always")

deform_tap = _device(sampling.deform_tap)
bilinear_weights = _device(sampling.bilinear_weights)
bilinear_value = _device(sampling.bilinear_value)
bilinear_coordinate_grads = _device(sampling.bilinear_coordinate_grads)
