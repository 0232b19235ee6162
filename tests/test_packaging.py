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
    assert CHECKOUT not in location.parents, f"imported from the checkout: {location}"
    assert str(CHECKOUT) not in sys.path


def test_package_is_typed():
    assert (pathlib.Path(defconv_np.__file__).parent / "py.typed").is_file()


def test_version_is_a_string():
    assert isinstance(defconv_np.__version__, str) and defconv_np.__version__.count(".") >= 2
