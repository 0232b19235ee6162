"""The CPU kernels' vector intrinsics (kernels.cpu.simd) against the scalar
expressions they replace: bitwise, in both dtypes, with non-finite values;
and the layout copies built on them against NumPy."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit, uint64
from numba.core.errors import TypingError

from defconv_np.kernels.cpu import layout
from defconv_np.kernels.cpu.simd import (
    BLOCK,
    LANES,
    WIDE_VECTOR_BITS,
    blend4,
    blend4_pixels,
    prefer_wide_vectors,
    transpose8,
)


@njit(cache=False)
def _blend4_at(src, q, row, a, b, d, e, dst, o, stride):
    blend4(src, uint64(q), uint64(row), a, b, d, e, dst, uint64(o), uint64(stride))


def _scalar_blend(src, q, row, weights, dst, o, stride):
    """The scalar loop ``blend4`` replaces, in NumPy scalars of the arrays' dtype."""
    a, b, d, e = (src.dtype.type(w) for w in weights)
    for k in range(LANES):
        dst[o + k * stride] = (a * src[q + k] + b * src[q + LANES + k]
                               + d * src[q + row + k] + e * src[q + row + LANES + k])


def assert_bitwise_up_to_nan_payload(got, want):
    """Equal bit patterns, signed zeros included, except that a NaN may be any
    NaN (LLVM may commute an addition of two NaNs, which picks the payload)."""
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint8), want[~nan].view(np.uint8))


values = st.sampled_from([0.0, -0.0, 1.0, -2.5, 1e-30, 3e38, -3e38, 1e300, np.inf, -np.inf,
                          np.nan]) | st.floats(-1e3, 1e3)


@given(dtype=st.sampled_from([np.float32, np.float64]),
       q=st.integers(0, 5), row=st.integers(2 * LANES, 3 * LANES), o=st.integers(0, 3),
       stride=st.integers(1, 6), data=st.data())
def test_blend4_is_the_scalar_expression_bitwise(dtype, q, row, o, stride, data):
    n_src = q + row + 2 * LANES
    src = np.array(data.draw(st.lists(values, min_size=n_src, max_size=n_src)))
    with np.errstate(all="ignore"):
        src = src.astype(dtype)
    weights = data.draw(st.lists(values, min_size=4, max_size=4))
    size = o + (LANES - 1) * stride + 1
    got = np.full(size, 7.0, dtype)
    want = got.copy()
    with np.errstate(all="ignore"):
        _blend4_at(src, q, row, *weights, got, o, stride)
        _scalar_blend(src, q, row, weights, want, o, stride)
    assert_bitwise_up_to_nan_payload(got, want)


@njit(cache=False)
def _blend4_pixels_at(src, cells, t, w00, w01, w10, w11, row, dst, o, stride):
    blend4_pixels(src, cells, uint64(t), w00, w01, w10, w11, uint64(row), dst, uint64(o),
                  uint64(stride))


@given(dtype=st.sampled_from([np.float32, np.float64]), t=st.integers(0, 3),
       row=st.integers(2 * LANES, 3 * LANES), o=st.integers(0, 3), data=st.data())
def test_blend4_pixels_is_blend4_of_each_pixel(dtype, t, row, o, data):
    n_cells = 6
    n_src = LANES * n_cells + row + 2 * LANES
    with np.errstate(all="ignore"):
        src = np.array(data.draw(st.lists(values, min_size=n_src, max_size=n_src))).astype(dtype)
        weights = [np.array(data.draw(st.lists(values, min_size=t + LANES, max_size=t + LANES))
                            ).astype(dtype) for _ in range(4)]
    cells = np.array(data.draw(st.lists(st.integers(0, n_cells), min_size=t + LANES,
                                        max_size=t + LANES)), np.uint64)
    stride = t + LANES + 1  # planes apart by more than the pixels written
    size = o + LANES * stride
    got = np.full(size, 7.0, dtype)
    want = got.copy()
    with np.errstate(all="ignore"):
        _blend4_pixels_at(src, cells, t, *weights, row, got, o, stride)
        for j in range(t, t + LANES):
            _scalar_blend(src, LANES * int(cells[j]), row, [w[j] for w in weights], want,
                          o + j, stride)
    assert_bitwise_up_to_nan_payload(got, want)


def test_blend4_writes_only_its_four_entries():
    src = np.arange(40, dtype=np.float32)
    dst = np.zeros(12, np.float32)
    _blend4_at(src, 3, 16, 1.0, 0.0, 0.0, 0.0, dst, 1, 3)
    want = np.zeros(12, np.float32)
    want[[1, 4, 7, 10]] = src[3:7]
    np.testing.assert_array_equal(dst, want)


def test_blend4_rejects_bad_operands_when_compiled():
    @njit(cache=False)
    def int32_index(src, dst):
        blend4(src, np.int32(0), uint64(8), 1.0, 0.0, 0.0, 0.0, dst, uint64(0), uint64(1))

    @njit(cache=False)
    def as_given(src, dst):
        blend4(src, uint64(0), uint64(8), 1.0, 0.0, 0.0, 0.0, dst, uint64(0), uint64(1))

    src32 = np.zeros(16, np.float32)
    with pytest.raises(TypingError, match="q must be a 64-bit integer"):
        int32_index(src32, np.zeros(4, np.float32))
    with pytest.raises(TypingError, match="share a float dtype"):
        as_given(src32, np.zeros(4, np.float64))
    with pytest.raises(TypingError, match="1-D contiguous"):
        as_given(np.zeros((4, 4), np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypingError, match="share a float dtype"):
        as_given(np.zeros(16, np.int64), np.zeros(4, np.int64))

    weights = [np.zeros(4, np.float32)] * 4
    with pytest.raises(TypingError, match="cells must be a 1-D contiguous uint64 array"):
        _blend4_pixels_at(src32, np.zeros(4, np.int64), 0, *weights, 8, np.zeros(16, np.float32),
                          0, 4)
    with pytest.raises(TypingError, match="w00 must be a 1-D contiguous array of float32"):
        _blend4_pixels_at(src32, np.zeros(4, np.uint64), 0, np.zeros(4), *weights[1:], 8,
                          np.zeros(16, np.float32), 0, 4)


@njit(cache=False)
def _transpose8_at(src, s0, s_stride, dst, d0, d_stride):
    transpose8(src, uint64(s0), uint64(s_stride), dst, uint64(d0), uint64(d_stride))


@given(dtype=st.sampled_from([np.float32, np.float64]), s0=st.integers(0, 5),
       s_stride=st.integers(BLOCK, 2 * BLOCK + 3), d0=st.integers(0, 5),
       d_stride=st.integers(BLOCK, 2 * BLOCK + 3))
def test_transpose8_moves_a_block_transposed(dtype, s0, s_stride, d0, d_stride):
    src = np.arange(s0 + BLOCK * s_stride, dtype=dtype) + dtype(0.5)
    src[s0 + 1] = np.nan
    dst = np.full(d0 + BLOCK * d_stride, -1.0, dtype)
    want = dst.copy()
    for i in range(BLOCK):
        for j in range(BLOCK):
            want[d0 + j * d_stride + i] = src[s0 + i * s_stride + j]
    _transpose8_at(src, s0, s_stride, dst, d0, d_stride)
    assert_bitwise_up_to_nan_payload(dst, want)
    assert np.isnan(dst[d0 + d_stride]) and np.isnan(dst).sum() == 1


@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 3),
       channels=st.integers(1, 2 * BLOCK + 3), height=st.integers(1, 4),
       width=st.integers(1, 2 * BLOCK + 3), top=st.integers(0, 2), left=st.integers(0, 2),
       extra=st.integers(0, 2), data=st.data())
def test_layout_copies_through_blocks_and_edges(dtype, n, channels, height, width, top, left,
                                                extra, data):
    """The channels-last copies (8 x 8 blocks and the value-by-value edges)
    against NumPy's transpose, and images outside ``n0:n1`` untouched."""
    n0 = data.draw(st.integers(0, n - 1))
    n1 = data.draw(st.integers(n0 + 1, n))
    row_stride, height_p = width + left + extra, height + top + extra
    images = np.random.default_rng(channels * 100 + width).standard_normal(
        (n, channels, height, width)).astype(dtype)
    padded = np.full((n, height_p * row_stride, channels), np.nan, dtype)
    layout.to_channels_last_padded(images, n0, n1, top, left, row_stride, padded)
    want = np.zeros((n, height_p, row_stride, channels), dtype)
    want[:, top:top + height, left:left + width] = images.transpose(0, 2, 3, 1)
    got = padded.reshape(want.shape)
    np.testing.assert_array_equal(got[n0:n1], want[n0:n1])
    assert np.isnan(got[:n0]).all() and np.isnan(got[n1:]).all()
    back = np.full_like(images, np.nan)
    layout.from_channels_last_padded(padded, n0, n1, top, left, row_stride, back)
    np.testing.assert_array_equal(back[n0:n1], images[n0:n1])
    assert np.isnan(back[:n0]).all() and np.isnan(back[n1:]).all()


@given(dtype=st.sampled_from([np.float32, np.float64]), channels=st.integers(1, 2 * BLOCK + 3),
       height=st.integers(1, 5), width=st.integers(1, 2 * BLOCK + 3), extra=st.integers(0, 3),
       data=st.data())
def test_pixels_first_rows_against_numpy(dtype, channels, height, width, extra, data):
    """The conv backward's pixels-first gradient rows: rows ``y0:y0 + rows``
    transposed, a pitch of ``width + extra`` pixels whose last ``extra`` are
    zero, nothing written past them."""
    y0 = data.draw(st.integers(0, height - 1))
    rows = data.draw(st.integers(1, height - y0))
    width_p = width + extra
    image = np.random.default_rng(channels * 10 + width).standard_normal(
        (channels, height, width)).astype(dtype)
    out = np.full((rows * width_p + 2, channels), np.nan, dtype)
    layout.pixels_first_rows(image, y0, rows, width_p, out)
    want = np.zeros((rows, width_p, channels), dtype)
    want[:, :width] = image[:, y0:y0 + rows].transpose(1, 2, 0)
    np.testing.assert_array_equal(out[:rows * width_p], want.reshape(-1, channels))
    assert np.isnan(out[rows * width_p:]).all()


def test_prefer_wide_vectors_marks_only_its_caller():
    @njit(cache=False)
    def widened(x):
        prefer_wide_vectors()
        total = 0.0
        for v in x:
            total += v
        return total

    @njit(cache=False)
    def plain(x):
        return x.sum()

    x = np.arange(10.0)
    assert widened(x) == plain(x) == 45.0
    attribute = f'"prefer-vector-width"="{WIDE_VECTOR_BITS}"'
    assert attribute in widened.inspect_llvm(widened.signatures[0])
    assert attribute not in plain.inspect_llvm(plain.signatures[0])
