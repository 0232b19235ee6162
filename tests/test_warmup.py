"""``defconv_np.warmup`` compiles ahead, and a second call compiles nothing."""

import pytest

import defconv_np as dc
from defconv_np import _compile_log, _selfcheck


def test_warmup_then_nothing_left_to_compile():
    first = dc.warmup(dtypes=("float64",))
    assert all(isinstance(k, _compile_log.CompiledKernel) for k in first)
    assert dc.warmup(dtypes=("float64",)) == []
    # the main job's gradient checks (float64, every op) find every kernel ready
    with _compile_log.recording() as compiled:
        _selfcheck.gradient_checks()
    assert compiled == []


def test_warmup_subset_and_single_strings():
    dc.warmup("conv2d", "float32")
    assert dc.warmup("conv2d", "float32") == []
    dc.warmup(ops=["affine_grid"], dtypes="float32")


@pytest.mark.parametrize("kwargs, error", [
    (dict(ops=["conv3d"]), ValueError),
    (dict(dtypes=["float16"]), ValueError),
    (dict(device="tpu"), ValueError),
    (dict(ops=3), TypeError),
])
def test_warmup_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        dc.warmup(**kwargs)
