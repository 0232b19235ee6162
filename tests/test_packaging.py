"""Under tox the tests must exercise the installed package, not the checkout.

tox sets ``DEFCONV_NP_EXPECT_INSTALLED=1``; pytest runs with
``--import-mode=importlib`` (setup.cfg) from a temporary directory, so neither
the checkout nor the current directory is on ``sys.path``.
"""

import os
import pathlib
import sys

import pytest

import defconv_np

CHECKOUT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not os.environ.get("DEFCONV_NP_EXPECT_INSTALLED"),
                    reason="only under tox (DEFCONV_NP_EXPECT_INSTALLED=1)")
def test_defconv_np_is_the_installed_copy():
    location = pathlib.Path(defconv_np.__file__).resolve()
    assert "site-packages" in location.parts, location
    # (tox's envs may live inside the checkout, in .tox/: only the source tree counts)
    assert location.parent != CHECKOUT / "defconv_np", f"imported from the checkout: {location}"
    assert str(CHECKOUT) not in sys.path


def test_package_is_typed():
    assert (pathlib.Path(defconv_np.__file__).parent / "py.typed").is_file()


def test_version_is_a_string():
    assert isinstance(defconv_np.__version__, str) and defconv_np.__version__.count(".") >= 2


PUBLIC_FUNCTIONS = ("conv2d", "conv2d_backward", "deform_conv2d", "deform_conv2d_backward",
                    "affine_grid", "affine_grid_backward", "grid_sample", "grid_sample_backward",
                    "active_conv2d", "active_conv2d_backward", "warmup")


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_public_function_is_documented_and_annotated(name):
    import typing

    fn = getattr(defconv_np, name)
    doc = fn.__doc__
    for section in ("Parameters", "Returns", "Raises", "TypeError", "ValueError"):
        assert section in doc, f"{name}: no {section}"
    assert "float32" in doc and "float64" in doc, f"{name}: dtypes not stated"
    if name != "warmup":
        assert "array type (NumPy or CuPy)" in doc, f"{name}: result array type not stated"
    assert "return" in typing.get_type_hints(fn)
