"""Hypothesis profiles and shared fixtures.

Pick a profile with ``HYPOTHESIS_PROFILE=dev|ci|thorough`` (default ``ci``).
Deadlines are off everywhere: the first call of each kernel JIT-compiles it
with Numba, which takes seconds.
"""

import importlib
import os

import pytest
from hypothesis import settings

import defconv_np as dc

settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: The lanes' GEMM for the whole run where ``DEFCONV_NP_TEST_CPU_BLAS`` names
#: one (tox's ``mkl`` env: ``mkl``), instead of what ``"auto"`` takes here.
if os.environ.get("DEFCONV_NP_TEST_CPU_BLAS"):
    dc.config.cpu_blas = os.environ["DEFCONV_NP_TEST_CPU_BLAS"]

#: Far below one output row of the smallest problem, so every call is split
#: over images and over output rows.
SMALL_COLUMN_BUDGET_BYTES = 256


@pytest.fixture
def small_budget(monkeypatch):
    """Shrink the column budget so tiny inputs are processed in many chunks.

    Returns the budget that was configured before, so a test can compute an
    unchunked result with ``mock.patch.object(dc.config, "column_budget_bytes", it)``.
    """
    original = dc.config.column_budget_bytes
    monkeypatch.setattr(dc.config, "column_budget_bytes", SMALL_COLUMN_BUDGET_BYTES)
    return original


def pytest_configure(config):
    """Ignore numba-cuda's own performance warning class where it exists
    (numba-cuda >= 0.2x keeps it in ``numba.cuda.core.errors``; older releases
    raise numba's, which setup.cfg already ignores)."""
    try:
        errors = importlib.import_module("numba.cuda.core.errors")
    except Exception:  # no numba-cuda, or an older layout
        return
    if hasattr(errors, "NumbaPerformanceWarning"):
        config.addinivalue_line("filterwarnings",
                                "ignore::numba.cuda.core.errors.NumbaPerformanceWarning")
