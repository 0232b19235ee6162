"""Every script in examples/ runs and passes its own check (exit status 0).

An example that needs a framework says so in its first lines, e.g.
``# requires: torch`` or ``# requires: jax`` (several names may follow,
separated by commas or spaces); it is skipped where one of them does not import.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
HEADER_LINES = 10


def requirements(path):
    """Modules named by ``# requires:`` lines among the first lines of ``path``."""
    names = []
    with open(path, encoding="utf-8") as f:
        for _, line in zip(range(HEADER_LINES), f):
            found = re.match(r"\s*#\s*requires:\s*(.+)", line)
            if found:
                names += [name for name in re.split(r"[,\s]+", found.group(1)) if name]
    return names


def test_examples_exist():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path):
    missing = [name for name in requirements(path) if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{path.name} requires {', '.join(missing)}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout}\n{done.stderr}"
