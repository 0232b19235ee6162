"""The README's examples run and their assertions hold."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def examples():
    """Python blocks of the README that are whole programs (they start by
    importing numpy or torch)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if b.startswith(("import numpy", "import torch"))]


def test_readme_has_examples():
    assert len(examples()) >= 2


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs(index):
    code = examples()[index]
    if "import torch" in code:
        pytest.importorskip("torch", reason="the PyTorch examples need PyTorch (tox -e torch)")
    if "import jax" in code:
        pytest.importorskip("jax", reason="the JAX example needs JAX (tox -e jax runs it)")
    exec(compile(code, f"README example {index}", "exec"), {})
