"""``python -m defconv_np``: options, errors, JSON output, compile lines, pipes.

Kept fast: no timing table, or a tiny shape with one repeat.
"""

import json
import os
import subprocess
import sys

import pytest

import defconv_np
from defconv_np.__main__ import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"defconv_np {defconv_np.__version__}"


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for option in ("--shape", "--dtype", "--ops", "--json", "--device", "--repeats"):
        assert option in out
    assert "``" not in out and ":func:" not in out


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "must be at least 1"),
    (["--repeats", "-3"], "must be at least 1"),
    (["--shape", "1,2,3"], "N,C,H,W"),
    (["--shape", "1,2,0,4"], "N,C,H,W"),
    (["--ops", "conv3d"], "unknown op"),
    (["--dtype", "float16"], "invalid choice"),
])
def test_bad_arguments_are_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_gradient_check_subset_and_json(tmp_path, capsys):
    path = tmp_path / "result.json"
    assert main(["--no-timing", "--ops", "conv2d", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "deform_conv2d" not in out and "timing" not in out
    result = json.loads(path.read_text())
    assert result["version"] == defconv_np.__version__
    assert result["failed"] == 0 and result["timings"] == []
    assert {r["op"] for r in result["gradient_checks"]} == {"conv2d"}
    assert all(r["ok"] for r in result["gradient_checks"])


def test_timings_at_a_tiny_shape(tmp_path, capsys):
    path = tmp_path / "result.json"
    assert main(["--shape", "1,2,5,6", "--dtype", "float64", "--repeats", "1",
                 "--ops", "conv2d,grid_sample", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "timing (cpu, float64, median of 1 runs)" in out
    result = json.loads(path.read_text())
    assert [r["op"] for r in result["timings"]] == [
        "conv2d forward", "conv2d backward", "grid_sample forward", "grid_sample backward"]
    assert {r["op"] for r in result["gradient_checks"]} == {
        "grid_sample (zeros)", "grid_sample (border)", "grid_sample (reflection)",
        "affine_grid (zeros)", "affine_grid (border)", "affine_grid (reflection)", "conv2d"}
    assert all(r["ms"] >= 0 and r["dtype"] == "float64" for r in result["timings"])
    assert "(1, 2, 5, 6)" in result["timings"][0]["shape"]


def test_cuda_without_cupy_is_a_clear_error(capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda", "--no-timing"])
    assert exc.value.code == 2
    assert "CuPy is not installed" in capsys.readouterr().err


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", "defconv_np", *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **env))


def test_compile_lines_only_when_compiling(tmp_path):
    """A fresh Numba cache: a line per compiled kernel on stderr (none on
    stdout); the next run loads them all from the cache and prints none."""
    cache = str(tmp_path / "numba-cache")
    first = _run(["--no-timing", "--ops", "conv2d"], NUMBA_CACHE_DIR=cache)
    assert first.returncode == 0, first.stderr
    assert "compiled kernels.cpu.im2col.im2col_channels_last [float64] in" in first.stderr
    assert "compiled" not in first.stdout and "compiling" not in first.stdout
    second = _run(["--no-timing", "--ops", "conv2d"], NUMBA_CACHE_DIR=cache)
    assert second.returncode == 0, second.stderr
    assert "compiled" not in second.stderr


def test_no_traceback_when_the_reader_goes_away():
    """``python -m defconv_np | head -1``: no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "defconv_np", "--no-timing",
                             "--ops", "conv2d"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
