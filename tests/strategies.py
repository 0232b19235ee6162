"""Hypothesis strategies for the ops under test.

Each builder is a keyword-only ``@st.composite`` that draws the shapes first
(small, so the float64 references stay fast), then arrays of matching shapes.
Array values come from a NumPy generator seeded by a drawn integer: drawing
thousands of elements one by one through Hypothesis is slow and overruns its
per-example choice budget, while the interesting variation (shapes, strides,
groups, where samples fall) is all in the drawn shapes and value styles.

Values are bounded: input, weight, bias, mask and grad_output in [-1, 1],
offsets in [-2, 2]. Offsets are multiples of 1/1024, so a sample position
``ho*sh - ph + i*dh + dy`` is exact in float32 as well as float64 and both
dtypes agree on which bilinear cell a sample falls in.
"""

import dataclasses

import numpy as np
from hypothesis import strategies as st

from tests.naive import conv_output_size

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT64_ONLY = (np.dtype(np.float64),)

#: Offsets are drawn on this grid (exact in float32 for |positions| < 2**13).
OFFSET_QUANTUM = 1.0 / 1024
#: How far finite-difference examples keep sample coordinates from integers,
#: where bilinear interpolation has kinks and the window its edges.
KINK_MARGIN = 0.05


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Shapes and hyper-parameters of one (deformable) convolution."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    groups: int
    offset_groups: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple

    @property
    def out_size(self):
        return (
            conv_output_size(self.height, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
            conv_output_size(self.width, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]),
        )

    @property
    def input_shape(self):
        return (self.batch, self.channels, self.height, self.width)

    @property
    def weight_shape(self):
        return (self.out_channels, self.channels // self.groups, *self.kernel)

    @property
    def output_shape(self):
        return (self.batch, self.out_channels, *self.out_size)

    @property
    def offset_shape(self):
        kernel_points = self.kernel[0] * self.kernel[1]
        return (self.batch, 2 * self.offset_groups * kernel_points, *self.out_size)

    @property
    def mask_shape(self):
        kernel_points = self.kernel[0] * self.kernel[1]
        return (self.batch, self.offset_groups * kernel_points, *self.out_size)


@dataclasses.dataclass(frozen=True)
class Conv2dProblem:
    """Arguments of one conv2d call (plus a grad_output for its backward)."""

    input: np.ndarray
    weight: np.ndarray
    bias: object  # np.ndarray or None
    grad_output: np.ndarray
    stride: object  # int or pair, as passed
    padding: object
    dilation: object
    groups: int

    @property
    def hyper(self):
        """stride/padding/dilation/groups as keyword arguments."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


@dataclasses.dataclass(frozen=True)
class DeformProblem:
    """Arguments of one deform_conv2d call (plus a grad_output for its backward)."""

    input: np.ndarray
    offset: np.ndarray
    weight: np.ndarray
    bias: object  # np.ndarray or None
    mask: object  # np.ndarray or None
    grad_output: np.ndarray
    stride: object
    padding: object
    dilation: object

    @property
    def hyper(self):
        """stride/padding/dilation as keyword arguments."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def dtype(self):
        return self.input.dtype


def _as_argument(draw, value):
    """Pass a pair as an int when both halves agree, sometimes (both forms are API)."""
    if value[0] == value[1] and draw(st.booleans()):
        return value[0]
    return value


@st.composite
def conv_geometries(
    draw,
    *,
    min_batch=0,
    max_batch=2,
    max_groups=2,
    max_channels_per_group=3,
    max_offset_groups=2,
    max_size=7,
    max_kernel=3,
    max_stride=2,
    max_padding=2,
    max_dilation=2,
):
    """Shapes with output height and width >= 1, and about one batch in eight empty."""
    if min_batch == 0 and draw(st.integers(0, 7)) == 0:
        batch = 0
    else:
        batch = draw(st.integers(max(min_batch, 1), max_batch))
    groups = draw(st.integers(1, max_groups))
    channels = groups * draw(st.integers(1, max_channels_per_group))
    out_channels = groups * draw(st.integers(1, max_channels_per_group))
    offset_groups = draw(st.sampled_from([g for g in range(1, max_offset_groups + 1) if channels % g == 0]))

    kernel, stride, padding, dilation, size = [], [], [], [], []
    for _ in ("height", "width"):
        k = draw(st.integers(1, max_kernel))
        d = draw(st.integers(1, max_dilation))
        p = draw(st.integers(0, max_padding))
        s = draw(st.integers(1, max_stride))
        # Smallest input length that still gives one output: the dilated kernel
        # must fit in the padded input.
        smallest = max(1, d * (k - 1) + 1 - 2 * p)
        size.append(draw(st.integers(smallest, max(smallest, max_size))))
        kernel.append(k), stride.append(s), padding.append(p), dilation.append(d)

    return ConvGeometry(
        batch=batch,
        channels=channels,
        height=size[0],
        width=size[1],
        out_channels=out_channels,
        groups=groups,
        offset_groups=offset_groups,
        kernel=tuple(kernel),
        stride=tuple(stride),
        padding=tuple(padding),
        dilation=tuple(dilation),
    )


def uniform(rng, shape, dtype, bound=1.0):
    """Values uniform in [-bound, bound], rounded once to ``dtype``."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def offsets(rng, shape, dtype, *, style, bound=2.0):
    """Offsets in [-bound, bound] on the 1/1024 grid.

    ``style``:
      ``"uniform"``  anywhere on the grid (now and then exactly integer);
      ``"integer"``  whole numbers only: every sample lands on a pixel or a kink;
      ``"mixed"``    about half the entries whole numbers;
      ``"away_from_kinks"``  fractional part in [KINK_MARGIN, 1 - KINK_MARGIN],
                     for finite differences.
    """
    values = np.round(rng.uniform(-bound, bound, size=shape) / OFFSET_QUANTUM) * OFFSET_QUANTUM
    if style == "integer":
        values = np.round(values)
    elif style == "mixed":
        values = np.where(rng.random(shape) < 0.5, np.round(values), values)
    elif style == "away_from_kinks":
        whole = np.floor(values)
        fraction = np.clip(values - whole, KINK_MARGIN, 1 - KINK_MARGIN)
        values = whole + np.round(fraction / OFFSET_QUANTUM) * OFFSET_QUANTUM
    else:
        assert style == "uniform", style
    return values.astype(dtype)


@st.composite
def conv2d_problems(draw, *, dtypes=DTYPES, with_bias=None, geometry=None):
    """A conv2d call: geometry, then input, weight, optional bias and a grad_output."""
    geo = draw(geometry if geometry is not None else conv_geometries())
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    has_bias = draw(st.booleans()) if with_bias is None else with_bias
    return Conv2dProblem(
        input=uniform(rng, geo.input_shape, dtype),
        weight=uniform(rng, geo.weight_shape, dtype),
        bias=uniform(rng, (geo.out_channels,), dtype) if has_bias else None,
        grad_output=uniform(rng, geo.output_shape, dtype),
        stride=_as_argument(draw, geo.stride),
        padding=_as_argument(draw, geo.padding),
        dilation=_as_argument(draw, geo.dilation),
        groups=geo.groups,
    )


@st.composite
def deform_problems(
    draw,
    *,
    dtypes=DTYPES,
    with_mask=None,
    with_bias=None,
    offset_styles=("uniform", "integer", "mixed"),
    geometry=None,
):
    """A deform_conv2d call: geometry, then input, offset, weight, mask, bias, grad_output.

    ``with_mask``/``with_bias``: True, False or None (drawn).
    """
    geo = draw(geometry if geometry is not None else conv_geometries())
    dtype = draw(st.sampled_from(dtypes))
    style = draw(st.sampled_from(offset_styles))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    has_mask = draw(st.booleans()) if with_mask is None else with_mask
    has_bias = draw(st.booleans()) if with_bias is None else with_bias
    return DeformProblem(
        input=uniform(rng, geo.input_shape, dtype),
        offset=offsets(rng, geo.offset_shape, dtype, style=style),
        weight=uniform(rng, geo.weight_shape, dtype),
        bias=uniform(rng, (geo.out_channels,), dtype) if has_bias else None,
        mask=uniform(rng, geo.mask_shape, dtype) if has_mask else None,
        grad_output=uniform(rng, geo.output_shape, dtype),
        stride=_as_argument(draw, geo.stride),
        padding=_as_argument(draw, geo.padding),
        dilation=_as_argument(draw, geo.dilation),
    )


@st.composite
def numpy_generators(draw):
    """A NumPy generator for the extra random arrays a property needs (directions, cotangents)."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def layout_variants(*arrays):
    """Yield the same arrays again as strided views, negatively strided views,
    Fortran-ordered copies and read-only copies (one layout per yielded tuple).

    ``None`` entries stay ``None``.
    """

    def strided(a):
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]

    def negatively_strided(a):
        every_axis_reversed = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[every_axis_reversed])[every_axis_reversed]

    def read_only(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    for make in (strided, negatively_strided, np.asfortranarray, read_only):
        yield tuple(None if a is None else make(a) for a in arrays)


# --- spatial transformer ---

GRID_MODES = ("bilinear", "nearest")
GRID_PADDING_MODES = ("zeros", "border", "reflection")
#: Grid values are drawn on this grid (exact in float32).
GRID_QUANTUM = 1.0 / 1024


@dataclasses.dataclass(frozen=True)
class GridSampleProblem:
    """Arguments of one grid_sample call (plus a grad_output for its backward)."""

    input: np.ndarray
    grid: np.ndarray
    grad_output: np.ndarray
    mode: str
    padding_mode: str
    align_corners: bool

    @property
    def options(self):
        """mode/padding_mode/align_corners as keyword arguments."""
        return dict(mode=self.mode, padding_mode=self.padding_mode, align_corners=self.align_corners)

    @property
    def dtype(self):
        return self.input.dtype


def unnormalized(coord, size, align_corners):
    """Pixel coordinates of normalised grid coordinates, in float64 (PyTorch's formula)."""
    coord = np.asarray(coord, np.float64)
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def normalized(pixel, size, align_corners):
    """Inverse of ``unnormalized`` (a length-1 axis with align_corners maps everything to 0)."""
    pixel = np.asarray(pixel, np.float64)
    if align_corners:
        return pixel * 2 / max(size - 1, 1) - 1
    return (2 * pixel + 1) / size - 1


def grid_values(rng, shape, dtype, *, style, size_hw, align_corners, bound=1.5):
    """Grid values (N, Hg, Wg, 2) in about [-bound, bound].

    ``style``:
      ``"uniform"``  on the 1/1024 grid, anywhere;
      ``"lattice"``  pixel coordinates on the half-integers: ties of nearest
                     sampling, kinks, clip and reflection points, window edges;
      ``"away_from_kinks"``  (float64 only) pixel coordinates at least
                     KINK_MARGIN from every integer, where every kink of
                     bilinear sampling, clipping and reflecting lies.
    """
    height, width = size_hw
    values = np.round(rng.uniform(-bound, bound, size=shape) / GRID_QUANTUM) * GRID_QUANTUM
    if style == "uniform":
        return values.astype(dtype)
    out = np.empty(shape)
    for axis, size in ((0, width), (1, height)):
        pixel = unnormalized(values[..., axis], size, align_corners)
        if style == "lattice":
            pixel = np.round(pixel * 2) / 2
        else:
            assert style == "away_from_kinks", style
            whole = np.floor(pixel)
            pixel = whole + np.clip(pixel - whole, KINK_MARGIN, 1 - KINK_MARGIN)
        out[..., axis] = normalized(pixel, size, align_corners)
    return out.astype(dtype)


@st.composite
def grid_sample_problems(
    draw,
    *,
    dtypes=DTYPES,
    modes=GRID_MODES,
    padding_modes=GRID_PADDING_MODES,
    align_corners=(True, False),
    grid_styles=("uniform", "lattice"),
    min_batch=0,
    max_batch=2,
    min_channels=1,
    max_channels=3,
    max_size=6,
    max_grid_size=5,
):
    """A grid_sample call: shapes, modes, then input, grid and grad_output; about
    one batch in eight is empty."""
    if min_batch == 0 and draw(st.integers(0, 7)) == 0:
        batch = 0
    else:
        batch = draw(st.integers(max(min_batch, 1), max_batch))
    channels = draw(st.integers(min_channels, max_channels))
    height, width = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    grid_h, grid_w = draw(st.integers(1, max_grid_size)), draw(st.integers(1, max_grid_size))
    dtype = draw(st.sampled_from(dtypes))
    corners = draw(st.sampled_from(align_corners))
    style = draw(st.sampled_from(grid_styles))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return GridSampleProblem(
        input=uniform(rng, (batch, channels, height, width), dtype),
        grid=grid_values(rng, (batch, grid_h, grid_w, 2), dtype, style=style,
                         size_hw=(height, width), align_corners=corners),
        grad_output=uniform(rng, (batch, channels, grid_h, grid_w), dtype),
        mode=draw(st.sampled_from(modes)),
        padding_mode=draw(st.sampled_from(padding_modes)),
        align_corners=corners,
    )


@st.composite
def affine_problems(draw, *, dtypes=DTYPES, min_batch=0, max_batch=2, max_size=5, bound=1.2):
    """theta (N, 2, 3) around the identity, an output size (N, C, H, W) and align_corners."""
    batch = draw(st.integers(min_batch, max_batch))
    size = (batch, draw(st.integers(1, 3)), draw(st.integers(1, max_size)), draw(st.integers(1, max_size)))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    theta = np.eye(2, 3) + rng.uniform(-bound / 2, bound / 2, size=(batch, 2, 3))
    return theta.astype(dtype), size, draw(st.booleans())


# --- active convolution ---


@dataclasses.dataclass(frozen=True)
class ActiveProblem:
    """Arguments of one active_conv2d call (plus a grad_output for its backward)."""

    input: np.ndarray
    offset: np.ndarray  # (2*G*kh*kw,)
    weight: np.ndarray
    bias: object  # np.ndarray or None
    grad_output: np.ndarray
    stride: object
    padding: object
    dilation: object

    @property
    def hyper(self):
        """stride/padding/dilation as keyword arguments."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def dtype(self):
        return self.input.dtype

    @property
    def broadcast_offset(self):
        """The (N, 2*G*kh*kw, Ho, Wo) offset deform_conv2d takes for the same op."""
        n, _, ho, wo = self.grad_output.shape
        return np.ascontiguousarray(
            np.broadcast_to(self.offset.reshape(1, -1, 1, 1), (n, self.offset.size, ho, wo)))


@st.composite
def active_problems(draw, *, dtypes=DTYPES, offset_styles=("uniform", "integer", "mixed"),
                    geometry=None, bound=2.0):
    """An active_conv2d call: geometry, then input, a shared offset, weight, bias, grad_output."""
    geo = draw(geometry if geometry is not None else conv_geometries())
    dtype = draw(st.sampled_from(dtypes))
    style = draw(st.sampled_from(offset_styles))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    has_bias = draw(st.booleans())
    return ActiveProblem(
        input=uniform(rng, geo.input_shape, dtype),
        offset=offsets(rng, (geo.offset_shape[1],), dtype, style=style, bound=bound),
        weight=uniform(rng, geo.weight_shape, dtype),
        bias=uniform(rng, (geo.out_channels,), dtype) if has_bias else None,
        grad_output=uniform(rng, geo.output_shape, dtype),
        stride=_as_argument(draw, geo.stride),
        padding=_as_argument(draw, geo.padding),
        dilation=_as_argument(draw, geo.dilation),
    )


# --- multi-scale deformable attention ---

LOCATION_STYLES = ("uniform", "lattice")


@dataclasses.dataclass(frozen=True)
class MSDeformAttnProblem:
    """Arguments of one ms_deform_attn call (plus a grad_output for its backward)."""

    value: np.ndarray
    spatial_shapes: np.ndarray
    level_start_index: np.ndarray
    sampling_locations: np.ndarray
    attention_weights: np.ndarray
    grad_output: np.ndarray

    @property
    def args(self):
        """The forward's positional arguments."""
        return (self.value, self.spatial_shapes, self.level_start_index,
                self.sampling_locations, self.attention_weights)

    @property
    def dtype(self):
        return self.value.dtype


def level_locations(rng, shape, dtype, spatial_shapes, *, style, bound=0.25):
    """Locations (N, Lq, M, L, P, 2) in about [-bound, 1 + bound], x first.

    ``style`` as for ``grid_values``: ``"uniform"`` on the 1/1024 grid (so
    pixel coordinates ``loc * W - 0.5`` are exact in float32 too);
    ``"lattice"`` pixel coordinates on half-integers (kinks, the window's
    edges -1 and W); ``"away_from_kinks"`` (float64 only) at least
    KINK_MARGIN from every integer pixel coordinate.
    """
    loc = np.round(rng.uniform(-bound, 1 + bound, size=shape) / GRID_QUANTUM) * GRID_QUANTUM
    if style == "uniform":
        return loc.astype(dtype)
    for lv, (height, width) in enumerate(spatial_shapes):
        for axis, size in ((0, width), (1, height)):
            pixel = loc[..., lv, :, axis] * size - 0.5
            if style == "lattice":
                pixel = np.round(pixel * 2) / 2
            else:
                assert style == "away_from_kinks", style
                whole = np.floor(pixel)
                pixel = whole + np.clip(pixel - whole, KINK_MARGIN, 1 - KINK_MARGIN)
            loc[..., lv, :, axis] = (pixel + 0.5) / size
    return loc.astype(dtype)


@st.composite
def ms_deform_attn_problems(draw, *, dtypes=DTYPES, location_styles=LOCATION_STYLES,
                            min_batch=0, max_batch=2, max_levels=3, max_size=4, max_queries=3,
                            max_heads=2, max_depth=3, max_points=2):
    """An ms_deform_attn call: levels (1x1 included), N, Lq (0 included), M,
    D, P, then value and grad_output in [-1, 1], weights in [0, 1] and
    locations of a drawn style (lattice in float64 only); about one batch in
    eight is empty."""
    if min_batch == 0 and draw(st.integers(0, 7)) == 0:
        batch = 0
    else:
        batch = draw(st.integers(max(min_batch, 1), max_batch))
    shapes = draw(st.lists(st.tuples(st.integers(1, max_size), st.integers(1, max_size)),
                           min_size=1, max_size=max_levels))
    queries = draw(st.integers(0, max_queries)) if min_batch == 0 else \
        draw(st.integers(1, max_queries))
    heads, depth = draw(st.integers(1, max_heads)), draw(st.integers(1, max_depth))
    points = draw(st.integers(1, max_points))
    dtype = draw(st.sampled_from(dtypes))
    style = draw(st.sampled_from(location_styles))
    if style == "lattice" and dtype == np.float32:
        # (pixel + 0.5) / W is inexact for most W: float32 could round a
        # lattice point to either side of its kink, and a float64 reference
        # would not see which. Uniform locations stay exact in float32.
        style = "uniform"
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = [h * w for h, w in shapes]
    levels = len(shapes)
    return MSDeformAttnProblem(
        value=uniform(rng, (batch, sum(sizes), heads, depth), dtype),
        spatial_shapes=np.array(shapes, np.int64),
        level_start_index=np.array([sum(sizes[:i]) for i in range(levels)], np.int64),
        sampling_locations=level_locations(rng, (batch, queries, heads, levels, points, 2),
                                           dtype, shapes, style=style),
        attention_weights=rng.uniform(0, 1, (batch, queries, heads, levels, points)).astype(dtype),
        grad_output=uniform(rng, (batch, queries, heads * depth), dtype),
    )


# --- 5-D grid_sample ---


def volume_grid_values(rng, shape, dtype, *, style, sizes_xyz, align_corners, bound=1.5):
    """Grid values (..., 3) as ``grid_values`` draws them, for the axes of
    ``sizes_xyz`` = (W, H, D)."""
    values = np.round(rng.uniform(-bound, bound, size=shape) / GRID_QUANTUM) * GRID_QUANTUM
    if style == "uniform":
        return values.astype(dtype)
    out = np.empty(shape)
    for axis, size in enumerate(sizes_xyz):
        pixel = unnormalized(values[..., axis], size, align_corners)
        if style == "lattice":
            pixel = np.round(pixel * 2) / 2
        else:
            assert style == "away_from_kinks", style
            whole = np.floor(pixel)
            pixel = whole + np.clip(pixel - whole, KINK_MARGIN, 1 - KINK_MARGIN)
        out[..., axis] = normalized(pixel, size, align_corners)
    return out.astype(dtype)


@st.composite
def volume_problems(draw, *, dtypes=DTYPES, modes=GRID_MODES, padding_modes=GRID_PADDING_MODES,
                    align_corners=(True, False), grid_styles=("uniform", "lattice"), min_batch=0,
                    max_batch=2, max_channels=3, max_size=4, max_grid_size=3):
    """A 5-D grid_sample call (input (N, C, D, H, W), grid (N, Dg, Hg, Wg, 3));
    about one batch in eight is empty."""
    if min_batch == 0 and draw(st.integers(0, 7)) == 0:
        batch = 0
    else:
        batch = draw(st.integers(max(min_batch, 1), max_batch))
    channels = draw(st.integers(1, max_channels))
    spatial = tuple(draw(st.integers(1, max_size)) for _ in range(3))
    grid_spatial = tuple(draw(st.integers(1, max_grid_size)) for _ in range(3))
    dtype = draw(st.sampled_from(dtypes))
    corners = draw(st.sampled_from(align_corners))
    style = draw(st.sampled_from(grid_styles))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return GridSampleProblem(
        input=uniform(rng, (batch, channels) + spatial, dtype),
        grid=volume_grid_values(rng, (batch,) + grid_spatial + (3,), dtype, style=style,
                                sizes_xyz=spatial[::-1], align_corners=corners),
        grad_output=uniform(rng, (batch, channels) + grid_spatial, dtype),
        mode=draw(st.sampled_from(modes)),
        padding_mode=draw(st.sampled_from(padding_modes)),
        align_corners=corners,
    )


@st.composite
def affine_3d_problems(draw, *, dtypes=DTYPES, min_batch=0, max_batch=2, max_size=4, bound=1.2):
    """theta (N, 3, 4) around the identity, an output size (N, C, D, H, W) and align_corners."""
    batch = draw(st.integers(min_batch, max_batch))
    size = (batch, draw(st.integers(1, 3))) + tuple(draw(st.integers(1, max_size)) for _ in range(3))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    theta = np.eye(3, 4) + rng.uniform(-bound / 2, bound / 2, size=(batch, 3, 4))
    return theta.astype(dtype), size, draw(st.booleans())
