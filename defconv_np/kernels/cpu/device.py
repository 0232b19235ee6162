"""The shared per-point maths (``kernels.sampling``) compiled for the CPU."""

from numba import njit

from .. import sampling

_inline = njit(inline="always", cache=True, nogil=True)

deform_tap = _inline(sampling.deform_tap)
bilinear_weights = _inline(sampling.bilinear_weights)
bilinear_value = _inline(sampling.bilinear_value)
bilinear_coordinate_grads = _inline(sampling.bilinear_coordinate_grads)

grid_unnormalize = _inline(sampling.grid_unnormalize)
clip_coordinate = _inline(sampling.clip_coordinate)
reflect_coordinate = _inline(sampling.reflect_coordinate)
reflect_near = _inline(sampling.reflect_near)
grid_bilinear_tap = _inline(sampling.grid_bilinear_tap)
grid_nearest_tap = _inline(sampling.grid_nearest_tap)
grid_trilinear_tap = _inline(sampling.grid_trilinear_tap)
grid_nearest_tap_3d = _inline(sampling.grid_nearest_tap_3d)
trilinear_weights = _inline(sampling.trilinear_weights)
trilinear_coordinate_grads = _inline(sampling.trilinear_coordinate_grads)
cubic_split = _inline(sampling.cubic_split)
cubic_coefficients = _inline(sampling.cubic_coefficients)
cubic_coefficient_grads = _inline(sampling.cubic_coefficient_grads)
bounded_index = _inline(sampling.bounded_index)
