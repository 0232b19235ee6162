"""CUDA launcher of multi-scale deformable attention: padded level planes and
the launches of ``kernels.cuda.attention`` on CuPy's current stream and the
arrays' device (under the simulator, NumPy arrays: see ``_cuda``)."""

import numpy as np

from ._cuda import _Launch
from ._planes import cropped_levels, level_geometry, padded_levels
from .kernels.cuda import attention as kernels


class MSDeformAttn:
    """ms_deform_attn and its adjoints (value, locations, weights) for one call."""

    def __init__(self, value, shapes, locations, weights, deterministic=False):
        self.launch = _Launch(value)
        xp = self.xp = self.launch.xp
        self.shapes = shapes
        self.value_pad, self.starts = padded_levels(xp, value, shapes)
        real, index = level_geometry(shapes, self.starts, value.dtype)
        self.level_real, self.level_index = xp.asarray(real), xp.asarray(index)
        self.one = value.dtype.type(1)
        self.locations = self.launch.operand(locations)
        self.weights = self.launch.operand(weights)
        self.deterministic = deterministic

    def _geometry(self):
        return self.level_real, self.level_index, self.one, self.locations, self.weights

    def forward(self, out):
        """Write the result into ``out`` (N, Lq, M*D), C-contiguous."""
        n, n_query, n_heads = self.weights.shape[:3]
        out4 = out.reshape(n, n_query, n_heads, -1)
        total = np.int64(out4.size)
        self.launch(kernels.ms_deform_attn, total, self.value_pad, *self._geometry(), total, out4)

    def backward(self, grad_output, grad_value, grad_locations, grad_weights):
        """Write the gradients into the (zeroed) arrays given; any may be None."""
        xp = self.xp
        n, n_query, n_heads = self.weights.shape[:3]
        grad_out = self.launch.operand(grad_output).reshape(n, n_query, n_heads, -1)
        depth = grad_out.shape[3]
        if grad_value is not None:
            grad_pad = xp.zeros_like(self.value_pad)
            if self.deterministic:
                total = np.int64(n) * n_heads * depth
                kernel = kernels.ms_deform_attn_value_grad_ordered
            else:
                total = np.int64(grad_out.size)
                kernel = kernels.ms_deform_attn_value_grad_atomic
            self.launch(kernel, total, grad_out, *self._geometry(), total, grad_pad)
            cropped_levels(xp, grad_pad, self.shapes, self.starts, grad_value)
        if grad_locations is not None or grad_weights is not None:
            dtype = grad_out.dtype
            total = np.int64(self.weights.size)
            self.launch(kernels.ms_deform_attn_sample_grads, total, grad_out, self.value_pad,
                        *self._geometry(), grad_locations is not None, grad_weights is not None,
                        total,
                        xp.zeros((1, 1, 1, 1, 1, 2), dtype) if grad_locations is None
                        else grad_locations,
                        xp.zeros((1, 1, 1, 1, 1), dtype) if grad_weights is None
                        else grad_weights)
