"""The CPU convs' worker lanes: any lane count gives the same numbers, BLAS
gets its threads back, errors propagate, and a forked child still works."""

import multiprocessing
import sys

import numba
import numpy as np
import pytest

import defconv_np as dc


def _case(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 4, 9, 8))
    off = rng.uniform(-2, 2, (5, 18, 9, 8))
    w = rng.standard_normal((3, 4, 3, 3))
    go = rng.standard_normal((5, 3, 9, 8))
    return x, off, w, go


def _all_results(x, off, w, go):
    """Every lane-run op: conv2d on its column path (4 channels), then on its
    implicit-GEMM path, and deform_conv2d."""
    dense = [dc.conv2d(x, w, padding=1), *dc.conv2d_backward(go, x, w, padding=1)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dc.config, "cpu_implicit_conv_min_channels", 1)
        implicit = [dc.conv2d(x, w, padding=1), *dc.conv2d_backward(go, x, w, padding=1)]
    return [*dense, *implicit, dc.deform_conv2d(x, off, w, padding=1),
            *[g for g in dc.deform_conv2d_backward(go, x, off, w, padding=1) if g is not None]]


def test_one_lane_and_many_lanes_agree(monkeypatch):
    args = _case()
    many = _all_results(*args)
    monkeypatch.setattr(dc.config, "column_budget_bytes", 3000)  # row chunks too
    monkeypatch.setattr(dc.config, "cpu_conv_band_bytes", 600)
    chunked = _all_results(*args)
    numba.set_num_threads(1)
    try:
        one = _all_results(*args)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b, c in zip(many, chunked, one):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12)


def test_whole_images_are_dealt_to_every_lane():
    """Small images group into chunks of at most ceil(batch / lanes), so a
    budget that would hold the whole batch still keeps every lane busy."""
    from defconv_np._columns import plan_chunks

    def spans(chunks):
        assert all((c.r0, c.r1) == (0, 4) for c in chunks)
        return [(c.n0, c.n1) for c in chunks]

    per_image = 4 * 4 * 10
    assert spans(plan_chunks(8, 4, 4, 10, 10**9)) == [(0, 8)]
    assert spans(plan_chunks(8, 4, 4, 10, 10**9, lanes=2)) == [(0, 4), (4, 8)]
    assert spans(plan_chunks(8, 4, 4, 10, 10**9, lanes=3)) == [(0, 3), (3, 6), (6, 8)]
    assert spans(plan_chunks(8, 4, 4, 10, 2 * per_image, lanes=2)) == [
        (0, 2), (2, 4), (4, 6), (6, 8)]
    assert spans(plan_chunks(2, 4, 4, 10, 10**9, lanes=4)) == [(0, 1), (1, 2)]


@pytest.mark.parametrize("out_h, rows_fit", [(64, 28), (64, 14), (7, 2), (5, 1), (9, 8), (2, 1),
                                             (3, 0)])
def test_row_chunks_cover_the_image_in_equal_heights(out_h, rows_fit):
    from defconv_np._columns import plan_chunks

    # rows_fit 0: a budget under one row still runs, a row per chunk
    chunks = plan_chunks(3, out_h, 4, 10, rows_fit * 4 * 10 or 25)
    rows_fit = max(1, rows_fit)
    for n in range(3):
        mine = [c for c in chunks if c.n0 == n]
        assert all(c.n1 == n + 1 for c in mine)
        assert [c.r0 for c in mine] == [0] + [c.r1 for c in mine[:-1]]
        assert mine[-1].r1 == out_h
        heights = [c.r1 - c.r0 for c in mine]
        assert max(heights) <= rows_fit and max(heights) - min(heights) <= 1
        assert len(mine) == -(-out_h // rows_fit)  # the fewest chunks that fit


def test_cpu_column_bytes_per_lane_capped(monkeypatch):
    from defconv_np import _cpu

    lanes = _cpu.column_lanes()
    monkeypatch.setattr(dc.config, "column_budget_bytes", 4 * lanes * 2**20)
    monkeypatch.setattr(dc.config, "cpu_lane_column_bytes", 2**20)
    assert _cpu.column_budget() == lanes * 2**20
    assert _cpu.column_budget(2) == 2 * lanes * 2**20  # per buffer
    assert _cpu.column_budget(8) == 4 * lanes * 2**20
    monkeypatch.setattr(dc.config, "column_budget_bytes", 1000)
    assert _cpu.column_budget() == 1000


def test_default_budget_gives_lanes_a_share_worth_a_gemm(monkeypatch):
    """With the default budgets, a forward (one buffer) on up to 16 lanes
    and a backward (two) on up to 8 give each lane ``cpu_lane_column_bytes``
    per buffer, and a backward on 16 lanes half that (a 0.5 MiB lane made the
    deformable backward's chunks single rows, 3x slower); more lanes share
    ``column_budget_bytes``."""
    from defconv_np import _cpu

    per_buffer = dc.config.cpu_lane_column_bytes
    for lanes in (1, 2, 8, 16):
        monkeypatch.setattr(_cpu, "column_lanes", lambda lanes=lanes: lanes)
        assert _cpu.column_budget(1) // lanes == per_buffer
        assert _cpu.column_budget(2) // lanes == (2 * per_buffer if lanes <= 8 else per_buffer)
    monkeypatch.setattr(_cpu, "column_lanes", lambda: 64)
    assert _cpu.column_budget() == dc.config.column_budget_bytes


def test_blas_threads_restored_after_calls_and_errors(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
              if lib["user_api"] == "blas"]
    _all_results(*_case())
    from defconv_np import _cpu

    def failing(*args, **kwargs):
        raise RuntimeError("lane failure")

    monkeypatch.setattr(_cpu.im2col_kernels, "im2col_channels_last", failing)
    x, _, w, _ = _case()
    with pytest.raises(RuntimeError, match="lane failure"):
        dc.conv2d(x, w, padding=1)
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
             if lib["user_api"] == "blas"]
    assert after == before


def _child(queue):
    x, off, w, go = _case()
    queue.put(dc.deform_conv2d(x, off, w, padding=1))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method is Linux-only here")
def test_forked_child_runs_convs():
    """Lane threads do not survive a fork: the child must make its own."""
    x, off, w, go = _case()
    expected = dc.deform_conv2d(x, off, w, padding=1)  # parent's lanes exist now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_run_items_covers_every_item_once_and_raises_after_started_shares():
    """grid_sample's work split: each item in exactly one share, and an error
    in a lane's share surfaces after the calling thread's share finished."""
    import threading
    import time

    from defconv_np import _cpu

    seen, lock = [], threading.Lock()

    def kernel(lo, hi):
        with lock:
            seen.append((lo, hi))

    for count in (0, 1, 2, 3, 8, 9):
        seen.clear()
        _cpu.run_items(count, kernel)
        assert sorted(i for lo, hi in seen for i in range(lo, hi)) == list(range(count))
        assert len(seen) == max(1, min(_cpu.column_lanes(), count))

    if _cpu.column_lanes() < 2:
        pytest.skip("needs two or more Numba threads for a lane share")
    finished = []

    def failing(lo, hi):
        if lo > 0:
            raise ValueError("boom")
        time.sleep(0.05)
        finished.append(lo)

    with pytest.raises(ValueError, match="boom"):
        _cpu.run_items(4, failing)
    assert finished == [0]


def test_run_items_takes_back_shares_no_lane_started(monkeypatch):
    """With every lane busy (another thread's long conv chunks), or a pool
    that takes no work (interpreter shutdown), the calling thread runs all
    the shares itself instead of waiting."""
    import threading

    from defconv_np import _cpu

    if _cpu.column_lanes() < 2:
        pytest.skip("needs two or more Numba threads for a lane share")
    seen = []

    def kernel(lo, hi):
        seen.append((threading.get_ident(), lo, hi))

    release = threading.Event()
    pool = _cpu._lane_pool.get()
    blockers = [pool.submit(release.wait, 30) for _ in range(numba.config.NUMBA_NUM_THREADS)]
    try:
        done = threading.Event()
        caller = threading.Thread(target=lambda: (_cpu.run_items(8, kernel), done.set()))
        caller.start()
        assert done.wait(10), "run_items waited for busy lanes"
        caller.join()
    finally:
        release.set()
        for blocker in blockers:
            blocker.result()
    assert sorted(i for _, lo, hi in seen for i in range(lo, hi)) == list(range(8))
    assert {ident for ident, _, _ in seen} == {caller.ident}

    class Refusing:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    seen.clear()
    monkeypatch.setattr(_cpu._lane_pool, "get", lambda: Refusing())
    _cpu.run_items(8, kernel)
    assert sorted(i for _, lo, hi in seen for i in range(lo, hi)) == list(range(8))


def test_grid_sample_same_on_one_lane_and_many():
    """grid_sample and its input gradient bitwise alike on one lane and on
    all; the grid gradient, whose float64 channel-block sums depend on the
    split, to rounding."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 12, 17, 19))
    grid = rng.uniform(-1.2, 1.2, (3, 11, 13, 2))
    go = rng.standard_normal((3, 12, 11, 13))

    def results():
        return [dc.grid_sample(x, grid), *dc.grid_sample_backward(go, x, grid)]

    many = results()
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = results()
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_allclose(one[2], many[2], rtol=1e-12, atol=1e-12)
