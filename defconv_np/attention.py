"""Multi-scale deformable attention.

Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object
Detection", ICLR 2021: each query attends to P sampled points per head on each
of L feature levels, at learned locations, with learned attention weights.
Semantics follow Deformable DETR's pure-PyTorch reference
(``ms_deform_attn_core_pytorch``) and its autograd: every level is sampled by
``torch.nn.functional.grid_sample`` (bilinear, zero padding,
``align_corners=False``) at ``2 * loc - 1``, and the samples are weighted and
summed over levels and points.
"""

from typing import NamedTuple

import numpy as np

from . import _validate
from ._arrays import array_module, common_float_dtype, is_cupy_array, on_arrays_device
from ._backends import attention_launchers


class MSDeformAttnGrads(NamedTuple):
    """Gradients of :func:`ms_deform_attn`; an entry not asked for is None."""

    value: object
    sampling_locations: object
    attention_weights: object


MS_DEFORM_ATTN_GRADS = MSDeformAttnGrads._fields


def _host_integers(array, name, layout):
    """``array`` (a NumPy or CuPy integer array, or nested lists/tuples of
    ints) as a NumPy integer array, read to the host once."""
    if is_cupy_array(array):
        array = array.get()
    elif isinstance(array, (list, tuple)):
        if any(isinstance(item, (bool, np.bool_))
               for item in np.asarray(array, dtype=object).ravel()):
            raise TypeError(f"{name} must hold integers {layout}, got {array!r}")
        try:
            array = np.asarray(array)
        except ValueError:
            raise ValueError(f"{name} must be {layout}, got {array!r}") from None
        if array.size == 0:
            array = array.astype(np.int64)
    elif not isinstance(array, np.ndarray):
        cls = type(array)
        raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray of integers (or a list "
                        f"of ints) {layout}, got {cls.__module__}.{cls.__qualname__}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype {layout}, got {array.dtype}")
    return array


def _levels(spatial_shapes, level_start_index, n_levels, total):
    """Check the level description against ``n_levels`` (L of the locations)
    and ``total`` (S of the value); return ((H, W), ...) as Python ints."""
    shapes = _host_integers(spatial_shapes, "spatial_shapes", "(L, 2) of (H_l, W_l)")
    starts = _host_integers(level_start_index, "level_start_index", "(L,)")
    if shapes.shape != (n_levels, 2):
        raise ValueError(f"spatial_shapes must have shape ({n_levels}, 2) (L, 2) of (H_l, W_l) "
                         f"for the L = {n_levels} levels of sampling_locations, got "
                         f"{tuple(shapes.shape)}")
    if starts.shape != (n_levels,):
        raise ValueError(f"level_start_index must have shape ({n_levels},) (L,), got "
                         f"{tuple(starts.shape)}")
    pairs = [(int(h), int(w)) for h, w in shapes.tolist()]
    if any(h < 1 or w < 1 for h, w in pairs):
        raise ValueError(f"spatial_shapes must hold sizes H_l, W_l >= 1, got {pairs}")
    sizes = [h * w for h, w in pairs]
    expected_starts = [sum(sizes[:i]) for i in range(n_levels)]
    if sum(sizes) != total:
        raise ValueError(f"spatial_shapes {pairs} give S = sum of H_l * W_l = {sum(sizes)}, "
                         f"but value has S = {total} (value shape (N, S, M, D))")
    if [int(s) for s in starts.tolist()] != expected_starts:
        raise ValueError(f"level_start_index must be the cumulative level sizes "
                         f"{expected_starts} (0, H_0 * W_0, ...), got {starts.tolist()}")
    return tuple(pairs)


def _check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Shapes of one call; returns the levels ((H, W), ...)."""
    _validate.ndim(value, "value", 4, "(N, S, M, D)")
    _validate.ndim(sampling_locations, "sampling_locations", 6, "(N, Lq, M, L, P, 2)")
    _validate.ndim(attention_weights, "attention_weights", 5, "(N, Lq, M, L, P)")
    n, total, heads, _ = value.shape
    loc = tuple(sampling_locations.shape)
    if loc[5] != 2:
        raise ValueError(f"sampling_locations must be (N, Lq, M, L, P, 2) with (x, y) last, got "
                         f"shape {loc}")
    if loc[0] != n or loc[2] != heads:
        raise ValueError(f"sampling_locations (N, Lq, M, L, P, 2) must have value's N = {n} and "
                         f"M = {heads} (value shape (N, S, M, D) {tuple(value.shape)}), got "
                         f"shape {loc}")
    if loc[3] < 1:
        raise ValueError(f"sampling_locations must have at least one level (L >= 1), got shape "
                         f"{loc}")
    _validate.shape_equals(attention_weights, "attention_weights", loc[:5],
                           "(N, Lq, M, L, P) of sampling_locations")
    return _levels(spatial_shapes, level_start_index, loc[3], total)


def _output_shape(value, sampling_locations):
    n, _, heads, depth = value.shape
    return (n, sampling_locations.shape[1], heads * depth)


@on_arrays_device
def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights):
    """Multi-scale deformable attention (Deformable DETR's core op).

    Parameters
    ----------
    value : ndarray, (N, S, M, D)
        The M heads' values of every level, levels concatenated in order, each
        row-major (``S = sum_l H_l * W_l``).
    spatial_shapes : integer array or list, (L, 2)
        (H_l, W_l) of each level: a NumPy or CuPy integer array (on any
        device), or lists/tuples of ints. Read to the host once per call.
    level_start_index : integer array or list, (L,)
        First row of each level in ``value``: must be ``0, H_0 W_0, ...``
        (checked; kept for the reference's signature).
    sampling_locations : ndarray, (N, Lq, M, L, P, 2)
        Sampling positions normalised to [0, 1] on each level, ``(x, y)``
        order: 0 and 1 are the outer edges of the level's first and last pixels.
    attention_weights : ndarray, (N, Lq, M, L, P)
        Used as given (apply your own softmax).

    Returns
    -------
    ndarray, (N, Lq, M*D)
        ``out[n, q, m*D + d] = sum_{l,p} a[n,q,m,l,p] * sample_l(value[n, :, m, d], loc)``.

    Notes
    -----
    Level ``l`` is sampled exactly as ``torch.nn.functional.grid_sample(...,
    mode="bilinear", padding_mode="zeros", align_corners=False)`` samples it at
    the grid value ``2 * loc - 1`` (formed in the input dtype): pixel
    ``x = ((2 loc_x - 1 + 1) W_l - 1) / 2``, bilinear in the cell of
    ``floor(y), floor(x)``, corners outside the level 0, and 0 outside
    ``-1 <= x < W_l``, ``-1 <= y < H_l``. Any location is safe: NaN, infinities
    and huge values (1e30) add nothing and get zero gradients.

    Deformable DETR's CUDA extension differs from this reference at the
    window's edge: it forms ``x = loc_x W_l - 0.5`` directly (in float32 a
    location can round to the other side of a pixel boundary) and samples only
    where ``x > -1`` (strictly), so a sample exactly on ``x = -1`` or
    ``y = -1`` gets a zero location gradient there, where the reference (and
    this function) give the derivative towards the first pixel. Values agree
    there (the sample is 0 either way).

    See Also
    --------
    ms_deform_attn_core_pytorch : Deformable DETR's pure-PyTorch reference, which this mirrors.
    ms_deform_attn_backward : its vector-Jacobian product.
    grid_sample : the per-level sampling.
    """
    xp = array_module(value=value, sampling_locations=sampling_locations,
                      attention_weights=attention_weights)
    dtype = common_float_dtype(value=value, sampling_locations=sampling_locations,
                               attention_weights=attention_weights)
    shapes = _check(value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights)
    shape = _output_shape(value, sampling_locations)
    if attention_weights.size == 0 or value.shape[3] == 0:
        return xp.zeros(shape, dtype)
    out = xp.empty(shape, dtype)
    attention_launchers(xp).MSDeformAttn(value, shapes, sampling_locations,
                                         attention_weights).forward(out)
    return out


@on_arrays_device
def ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index,
                            sampling_locations, attention_weights, *,
                            needs=MS_DEFORM_ATTN_GRADS, deterministic=False):
    """Vector-Jacobian product of :func:`ms_deform_attn`.

    Parameters
    ----------
    grad_output : ndarray, (N, Lq, M*D)
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        As given to :func:`ms_deform_attn`.
    needs : iterable of {"value", "sampling_locations", "attention_weights"}
        The gradients to compute; the others are returned as None.
    deterministic : bool
        On CUDA, compute the value gradient without atomics (each thread owns
        one (image, head, channel) slice and adds in query order), so repeated
        calls agree to the bit; slower. The CPU kernels are always
        deterministic (a thread owns each (image, head) slice).

    Returns
    -------
    MSDeformAttnGrads
        ``value`` (N, S, M, D), ``sampling_locations`` (N, Lq, M, L, P, 2),
        ``attention_weights`` (N, Lq, M, L, P).

    Notes
    -----
    These are the gradients PyTorch's autograd gives on the reference: the
    value gradient is the exact adjoint of the sampling; the location
    gradient is grid_sample's (the bilinear derivative in the cell of
    ``floor(y), floor(x)``, nonzero on ``x = -1`` towards the first pixel,
    zero outside the window) times ``W_l / 2`` from unnormalising and 2 from
    ``2 * loc - 1``; the weight gradient is ``<grad_output, sample>``.
    Deformable DETR's CUDA extension gives a zero location gradient on
    ``x = -1`` or ``y = -1`` (see :func:`ms_deform_attn`).

    See Also
    --------
    ms_deform_attn_core_pytorch : Deformable DETR's reference, whose autograd this mirrors.
    ms_deform_attn : the forward op.
    """
    wanted = _validate.needs(needs, MS_DEFORM_ATTN_GRADS)
    deterministic = _validate.flag(deterministic, "deterministic")
    xp = array_module(grad_output=grad_output, value=value,
                      sampling_locations=sampling_locations, attention_weights=attention_weights)
    dtype = common_float_dtype(grad_output=grad_output, value=value,
                               sampling_locations=sampling_locations,
                               attention_weights=attention_weights)
    shapes = _check(value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights)
    _validate.shape_equals(grad_output, "grad_output", _output_shape(value, sampling_locations),
                           "(N, Lq, M*D)")

    def zeros_if(name, shape):
        return xp.zeros(shape, dtype) if name in wanted else None

    grads = MSDeformAttnGrads(zeros_if("value", value.shape),
                              zeros_if("sampling_locations", sampling_locations.shape),
                              zeros_if("attention_weights", attention_weights.shape))
    if attention_weights.size and value.shape[3] and any(g is not None for g in grads):
        op = attention_launchers(xp).MSDeformAttn(value, shapes, sampling_locations,
                                                  attention_weights, deterministic=deterministic)
        op.backward(grad_output, *grads)
    return grads
