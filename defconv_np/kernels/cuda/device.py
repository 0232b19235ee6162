"""The shared per-point maths (``kernels.sampling``) compiled as CUDA device functions."""

from numba import cuda

from .. import sampling

_device = cuda.jit(device=True, inline="always")

deform_tap = _device(sampling.deform_tap)
bilinear_weights = _device(sampling.bilinear_weights)
bilinear_value = _device(sampling.bilinear_value)
bilinear_coordinate_grads = _device(sampling.bilinear_coordinate_grads)
grid_unnormalize = _device(sampling.grid_unnormalize)
clip_coordinate = _device(sampling.clip_coordinate)
reflect_coordinate = _device(sampling.reflect_coordinate)
grid_bilinear_tap = _device(sampling.grid_bilinear_tap)
grid_nearest_tap = _device(sampling.grid_nearest_tap)
grid_trilinear_tap = _device(sampling.grid_trilinear_tap)
grid_nearest_tap_3d = _device(sampling.grid_nearest_tap_3d)
trilinear_weights = _device(sampling.trilinear_weights)
trilinear_coordinate_grads = _device(sampling.trilinear_coordinate_grads)
cubic_split = _device(sampling.cubic_split)
cubic_coefficients = _device(sampling.cubic_coefficients)
cubic_coefficient_grads = _device(sampling.cubic_coefficient_grads)
bounded_index = _device(sampling.bounded_index)
