"""Driver for ``compute-sanitizer --tool memcheck``: the CUDA kernel tests
(tests/test_cuda_kernels.py, tiny shapes, a few seconds without the sanitizer)
with CuPy's memory pool turned off.

With the pool on, an out-of-bounds access that stays inside one of the pool's
large blocks is invisible to memcheck; without it every array is its own
``cudaMalloc`` and any access past its end is reported.

Run:  compute-sanitizer --tool memcheck --error-exitcode 99 \\
          python3 benchmarks/gpu_memcheck.py [extra pytest args]
"""

import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main(argv):
    try:
        import cupy
    except ImportError:  # the simulator's smoke test: nothing to unpool
        cupy = None
    if cupy is not None:
        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)
    args = ["-p", "no:cacheprovider", "-m", "cuda", "-q",
            os.path.join(ROOT, "tests", "test_cuda_kernels.py"), *argv]
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
