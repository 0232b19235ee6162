"""``defconv_np.warmup`` compiles ahead, and a second call compiles nothing."""

import numpy as np
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


def test_warmup_covers_deform_conv2d_on_one_image_and_on_several():
    """On several CPU lanes one image takes the column path, several the fused
    tiles: after warmup neither compiles anything (run alone, this failed
    while warmup ran two images only: one store was left to compile)."""
    dc.warmup("deform_conv2d", "float32")
    rng = np.random.default_rng(0)
    with _compile_log.recording() as compiled:
        for n in (1, 2, 3):
            x = rng.standard_normal((n, 4, 7, 6)).astype(np.float32)
            off = rng.uniform(-1, 1, (n, 18, 7, 6)).astype(np.float32)
            w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
            out = dc.deform_conv2d(x, off, w, padding=1)
            dc.deform_conv2d_backward(out, x, off, w, padding=1)
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
