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
