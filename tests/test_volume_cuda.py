"""The CUDA kernels of 5-D and bicubic grid_sample agree with the CPU kernels
(which test_grid_sample_3d.py and test_bicubic.py check against references),
on a GPU or under Numba's CUDA simulator with tiny launches."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import defconv_np as dc

from .cuda_mode import MODE, SKIP_REASON, to_device, to_host
from .test_cuda_kernels import _tol, small_launches, through_cuda  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(MODE is None, reason=SKIP_REASON),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def _compare(x, grid, go, args, deterministic):
    expected = [dc.grid_sample(x, grid, *args), *dc.grid_sample_backward(go, x, grid, *args)]
    with through_cuda():
        got = [dc.grid_sample(to_device(x), to_device(grid), *args),
               *dc.grid_sample_backward(to_device(go), to_device(x), to_device(grid), *args,
                                        deterministic=deterministic)]
    for name, a, b in zip(("output", "input", "grid"), got, expected):
        np.testing.assert_allclose(to_host(a), b, err_msg=name, **_tol(x.dtype))


@settings(max_examples=12, deadline=None)
@given(mode=st.sampled_from(["bilinear", "nearest"]),
       padding_mode=st.sampled_from(["zeros", "border", "reflection"]),
       align_corners=st.booleans(), deterministic=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_volume_cuda_matches_cpu(mode, padding_mode, align_corners, deterministic, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, 3, 4, 3)).astype(dtype)
    grid = rng.uniform(-1.3, 1.3, (2, 2, 3, 2, 3)).astype(dtype)
    grid[0, 0, 0, 0] = [np.nan, 0.5, 0.1]
    grid[1, 1, 2, 1] = [1e30, -np.inf, 0.2]
    go = rng.standard_normal((2, 2, 2, 3, 2)).astype(dtype)
    _compare(x, grid, go, (mode, padding_mode, align_corners), deterministic)


@settings(max_examples=12, deadline=None)
@given(padding_mode=st.sampled_from(["zeros", "border", "reflection"]),
       align_corners=st.booleans(), deterministic=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_bicubic_cuda_matches_cpu(padding_mode, align_corners, deterministic, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, 4, 5)).astype(dtype)
    grid = rng.uniform(-1.4, 1.4, (2, 3, 4, 2)).astype(dtype)
    grid[0, 0, 0] = [np.nan, 0.5]
    grid[1, 2, 3] = [1e30, -np.inf]
    grid[1, 0, 1] = [-1e30, 0.25]
    go = rng.standard_normal((2, 2, 3, 4)).astype(dtype)
    _compare(x, grid, go, ("bicubic", padding_mode, align_corners), deterministic)
