"""Launch shapes for the CUDA kernels, checked without a GPU."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from defconv_np import _cuda, config  # noqa: E402


@pytest.mark.parametrize("total", [1, 255, 256, 257, np.int64(10**6), np.int64(3 * 2**31)])
def test_launch_shape_is_python_ints_covering_the_work(total):
    # cuda.core's LaunchConfig rejects NumPy integers, which the launchers'
    # int64 totals would otherwise produce; the simulator does not check.
    blocks, threads = _cuda.launch_shape(total)
    assert type(blocks) is int and type(threads) is int
    assert threads == config.cuda_threads_per_block
    assert 1 <= blocks <= config.cuda_max_blocks
    # either every item gets a thread, or the grid-stride loop covers the rest
    assert blocks * threads >= total or blocks == config.cuda_max_blocks
