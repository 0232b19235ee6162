"""defconv_np.plot and benchmarks/plot.py render headless (Agg): the figures
are not blank and follow the offsets and grids they are given."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib", reason="the plots need matplotlib "
                                                     "(pip install defconv_np[plot])")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import defconv_np as dc  # noqa: E402
from defconv_np import plot  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pixels(fig):
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return rgba


def not_blank(rgba):
    return len(np.unique(rgba.reshape(-1, 4), axis=0)) > 10


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, 2, 9, 11))


def test_sampling_locations_follow_the_offsets(image):
    offset = np.zeros((1, 18, 9, 11))
    still = pixels(plot.sampling_locations(image, offset, padding=1))
    assert not_blank(still)
    moved = offset + np.random.default_rng(1).uniform(-2, 2, offset.shape)
    assert not np.array_equal(still, pixels(plot.sampling_locations(image, moved, padding=1)))
    assert np.array_equal(still, pixels(plot.sampling_locations(image, offset, padding=1)))


def test_sampling_locations_of_shared_offsets_and_bad_shapes(image):
    shared = np.linspace(-1, 1, 18)
    assert not_blank(pixels(plot.sampling_locations(image, shared, positions=[(2, 3)])))
    with pytest.raises(ValueError):
        plot.sampling_locations(image, np.zeros((1, 10, 9, 11)))
    with pytest.raises(ValueError):
        plot.sampling_locations(image[0], np.zeros((1, 18, 9, 11)))


def test_sampling_grid_follows_the_grid(image):
    size = image.shape
    identity = dc.affine_grid(np.array([[[1.0, 0, 0], [0, 1.0, 0]]]), size)
    rotated = dc.affine_grid(np.array([[[0.8, -0.5, 0.1], [0.5, 0.8, 0]]]), size)
    a = pixels(plot.sampling_grid(image, identity))
    assert not_blank(a)
    assert not np.array_equal(a, pixels(plot.sampling_grid(image, rotated)))
    with pytest.raises(ValueError):
        plot.sampling_grid(image, identity[..., :1])


def test_benchmark_plot_script(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_plot", ROOT / "benchmarks" / "plot.py")
    if spec is None or not (ROOT / "benchmarks" / "plot.py").exists():
        pytest.skip("benchmarks/plot.py not shipped here")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cli = tmp_path / "cli.json"
    cli.write_text(json.dumps({"timings": [{"op": "conv2d forward", "ms": 3.0},
                                           {"op": "conv2d backward", "ms": 7.5}]}))
    out = tmp_path / "t.png"
    assert module.main([str(cli), str(ROOT / "benchmarks" / "results" / "cpu.json"),
                        "-o", str(out)]) == 0
    rgba = plt.imread(out)
    assert rgba.shape[0] > 100 and np.unique(rgba.reshape(-1, rgba.shape[-1]), axis=0).shape[0] > 10
