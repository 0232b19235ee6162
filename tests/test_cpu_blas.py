"""Which BLAS the CPU convs' lanes call (``config.cpu_blas``): the choice is
checked, honoured on the lanes only (implicit GEMMs and column GEMMs), the
column GEMMs' ``matmul`` through CBLAS is ``numpy.matmul``, MKL, where the
``mkl`` extra is installed, gives the numbers NumPy's BLAS gives, and so does
our own GEMM (``NumbaGemm``), checked on its own against a float64 product
with a rounding-error bound."""

import multiprocessing
import os
import threading

import numba
import numpy as np
import pytest

import defconv_np as dc
from defconv_np import _cpu_blas, _cpu_conv

needs_two_lanes = pytest.mark.skipif(
    numba.get_num_threads() < 2,
    reason="the lanes need two Numba threads; this machine has one core")

#: GEMMs of ``_conv_results`` on 4 images: 9 per image forward, 18 backward
GEMMS = 4 * 27


def _counting(fn, counts, key):
    """``fn`` (a ctypes GEMM) behind a counter of the calls made on the
    conv's worker lanes (threads named ``defconv_np-lane...``)."""
    def counted(*args):
        if threading.current_thread().name.startswith("defconv_np-lane"):
            counts[key] += 1
        return fn(*args)

    counted.argtypes = fn.argtypes
    return counted


def _case(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 16, 9, 8)).astype(dtype)
    w = rng.standard_normal((16, 16, 3, 3)).astype(dtype)
    go = rng.standard_normal((4, 16, 9, 8)).astype(dtype)
    return x, w, go


def _conv_results(x, w, go):
    return [dc.conv2d(x, w, padding=1), *dc.conv2d_backward(go, x, w, padding=1)]


@pytest.fixture
def numpy_gemm_posing_as_mkl(monkeypatch):
    """MKL's slot filled with NumPy's own GEMM behind a counter, so that the
    lanes' routing is tested where the mkl wheel is not installed."""
    calls = {"f": 0, "d": 0}

    def fake_mkl_gemm(dtype):
        return _counting(_cpu_blas.gemm(dtype), calls, np.dtype(dtype).char)

    monkeypatch.setattr(_cpu_blas, "mkl_gemm", fake_mkl_gemm)
    if _cpu_blas.gemm(np.float64) is None:
        pytest.skip("this NumPy's BLAS has no CBLAS the implicit path can call")
    return calls


@pytest.mark.parametrize("choice", ["openblas", "MKL", "", None])
def test_an_unknown_choice_is_a_value_error(monkeypatch, choice):
    monkeypatch.setattr(dc.config, "cpu_blas", choice)
    x, w, _ = _case()
    with pytest.raises(ValueError, match=r"config\.cpu_blas must be one of"):
        dc.conv2d(x, w, padding=1)


def test_mkl_asked_for_but_missing_is_a_value_error(monkeypatch):
    monkeypatch.setattr(_cpu_blas, "_mkl", {})  # as if the wheel were not installed
    monkeypatch.setattr(dc.config, "cpu_blas", "mkl")
    x, w, _ = _case()
    with pytest.raises(ValueError, match=r"pip install defconv_np\[mkl\]"):
        dc.conv2d(x, w, padding=1)
    # auto, on a CPU without 512-bit vectors, falls back to NumPy's BLAS
    monkeypatch.setattr(_cpu_blas, "wide_vectors", lambda: False)
    monkeypatch.setattr(dc.config, "cpu_blas", "auto")
    auto = dc.conv2d(x, w, padding=1)
    monkeypatch.setattr(dc.config, "cpu_blas", "numpy")
    np.testing.assert_array_equal(auto, dc.conv2d(x, w, padding=1))


@needs_two_lanes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_lanes_call_the_chosen_gemm_and_one_thread_keeps_numpys(
        monkeypatch, numpy_gemm_posing_as_mkl, dtype):
    calls = numpy_gemm_posing_as_mkl
    args = _case(dtype)
    monkeypatch.setattr(dc.config, "cpu_blas", "numpy")
    reference = _conv_results(*args)
    assert calls == {"f": 0, "d": 0}
    monkeypatch.setattr(dc.config, "cpu_blas", "mkl")
    routed = _conv_results(*args)
    char = np.dtype(dtype).char
    assert calls[char] == GEMMS
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        before = dict(calls)
        alone = _conv_results(*args)
        assert calls == before  # one lane: NumPy's (multithreaded) BLAS
    finally:
        numba.set_num_threads(threads)
    # the same GEMM on the same lanes: the same bits; one lane sums the
    # images' weight gradients in another order
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b, c in zip(reference, routed, alone):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_allclose(c, a, rtol=0, atol=tol * np.abs(a).max())


def _spy_on_mkl(monkeypatch):
    """Count the lanes' calls into real MKL (``counts["f"]``, ``["d"]``)."""
    counts = {"f": 0, "d": 0}
    real = _cpu_blas.mkl_gemm

    def spy(dtype):
        fn = real(dtype)
        return None if fn is None else _counting(fn, counts, np.dtype(dtype).char)

    monkeypatch.setattr(_cpu_blas, "mkl_gemm", spy)
    return counts


def _mkl_installed():
    if _cpu_blas.mkl_gemm(np.float64) is not None:
        return True
    if os.environ.get("DEFCONV_NP_EXPECT_MKL") == "1":
        pytest.fail("DEFCONV_NP_EXPECT_MKL=1 but MKL's libmkl_rt was not found or not usable")
    pytest.skip("the mkl extra is not installed (pip install defconv_np[mkl]); "
                "tox -e mkl runs this")


def _conv_in_child(queue, counts):
    x, w, go = _case()
    results = [np.asarray(r) for r in _conv_results(x, w, go)]
    queue.put((results, dict(counts)))


@needs_two_lanes
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_mkl_gives_numpys_numbers(monkeypatch, dtype, rtol):
    _mkl_installed()
    args = _case(dtype, seed=1)
    monkeypatch.setattr(dc.config, "cpu_blas", "numpy")
    reference = _conv_results(*args)
    counts = _spy_on_mkl(monkeypatch)
    monkeypatch.setattr(dc.config, "cpu_blas", "mkl")
    on_mkl = _conv_results(*args)
    assert counts[np.dtype(dtype).char] == GEMMS, "the lanes' GEMMs did not all run on MKL"
    for a, b in zip(reference, on_mkl):
        scale = np.abs(a).max()
        np.testing.assert_allclose(b, a, rtol=0, atol=rtol * scale)


@needs_two_lanes
def test_mkl_lanes_work_in_a_forked_child(monkeypatch):
    _mkl_installed()
    counts = _spy_on_mkl(monkeypatch)
    monkeypatch.setattr(dc.config, "cpu_blas", "mkl")
    x, w, go = _case()
    expected = _conv_results(x, w, go)  # MKL loaded and used in the parent first
    assert counts["d"] == GEMMS
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_conv_in_child, args=(queue, counts))
    child.start()
    got, child_counts = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert child_counts["d"] == 2 * GEMMS  # the parent's count, then the child's own
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mkl_gemm_reads_windows_and_accumulates_as_cblas_says(dtype):
    """MKL's GEMM on its own, no lanes: row-major windows at an element offset
    with leading dimensions wider than the rows, a transposed operand, and
    ``beta = 1``, against NumPy."""
    _mkl_installed()
    fn = _cpu_blas.mkl_gemm(dtype)
    rng = np.random.default_rng(2)
    big_a = rng.standard_normal((20, 40)).astype(dtype)
    big_b = rng.standard_normal((30, 25)).astype(dtype)
    c = rng.standard_normal((7, 50)).astype(dtype)
    m, n, k = 7, 11, 13
    a = big_a[3:3 + m, 5:5 + k]  # (m, k), ld 40
    b_t = big_b[2:2 + n, 4:4 + k]  # B^T stored (n, k), ld 25
    expected = c[:, 6:6 + n] + 2.0 * (a @ b_t.T)
    isz = big_a.itemsize
    fn(_cpu_blas.ROW_MAJOR, _cpu_blas.NO_TRANS, _cpu_blas.TRANS, m, n, k, 2.0,
       big_a.ctypes.data + (3 * 40 + 5) * isz, 40, big_b.ctypes.data + (2 * 25 + 4) * isz, 25,
       1.0, c.ctypes.data + 6 * isz, 50)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c[:, 6:6 + n], expected, rtol=tol, atol=tol)


def _views(rng, dtype):
    """Operands in the layouts the column GEMMs use, and a few they do not:
    transposed, strided windows, broadcast batches, single rows/columns."""
    def make(*shape):
        return rng.standard_normal(shape).astype(dtype)

    big = make(3, 12, 40)
    yield make(5, 7), make(7, 4)
    yield make(7, 5).T, make(4, 7).T
    yield big[:, 2:9, 5:18], make(13, 6)
    yield make(2, 3, 6, 5), make(3, 5, 4)
    yield make(6, 1, 5, 3).transpose(1, 0, 2, 3)[0], make(6, 4, 3).transpose(0, 2, 1)
    yield make(1, 9), make(9, 1)
    yield make(4, 0), make(0, 3)
    yield make(0, 5), make(5, 3)
    yield big[:, ::2, ::3], make(14, 2)  # no unit stride: copied first


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_through_cblas_is_numpys_matmul(dtype):
    fn = _cpu_blas.gemm(dtype)
    if fn is None:
        pytest.skip("this NumPy's BLAS has no CBLAS to call")
    rng = np.random.default_rng(3)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in _views(rng, dtype):
        expected = np.matmul(a, b)
        a_before, b_before = a.copy(), b.copy()
        got = _cpu_blas.matmul(a, b, None, fn)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
        # into a given output: contiguous, and a transposed view (no unit stride
        # along its rows), which is filled through a temporary
        for out in (np.full(expected.shape, np.nan, dtype),
                    np.full(expected.shape[::-1], np.nan, dtype).T):
            if out.ndim > 2:
                continue
            assert _cpu_blas.matmul(a, b, out, fn) is out
            np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
        np.testing.assert_array_equal(a, a_before)
        np.testing.assert_array_equal(b, b_before)


@needs_two_lanes
def test_the_column_paths_call_the_chosen_gemm_on_the_lanes(monkeypatch, numpy_gemm_posing_as_mkl):
    """deform_conv2d, strided conv2d and active_conv2d (the column paths) run
    their GEMMs on the lanes' choice too, and get the numbers of
    ``numpy.matmul``."""
    calls = numpy_gemm_posing_as_mkl
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 8, 9, 8))
    off = rng.uniform(-2, 2, (4, 18, 9, 8))
    w = rng.standard_normal((6, 8, 3, 3))
    go = rng.standard_normal((4, 6, 9, 8))
    go_s = rng.standard_normal((4, 6, 5, 4))

    def deform():
        return [dc.deform_conv2d(x, off, w, padding=1),
                *[g for g in dc.deform_conv2d_backward(go, x, off, w, padding=1)
                  if g is not None]]

    def strided():
        return [dc.conv2d(x, w, padding=1, stride=2),
                *dc.conv2d_backward(go_s, x, w, padding=1, stride=2)]

    shared = rng.uniform(-1, 1, 18)

    def active():
        return [dc.active_conv2d(x, shared, w, padding=1),
                *[g for g in dc.active_conv2d_backward(go, x, shared, w, padding=1)
                  if g is not None]]

    # small column budgets: a chunk per image or less, so that both lanes run
    monkeypatch.setattr(dc.config, "cpu_lane_column_bytes", 20000)
    monkeypatch.setattr(dc.config, "column_budget_bytes", 40000)
    for op in (deform, strided, active):
        monkeypatch.setattr(dc.config, "cpu_blas", "numpy")
        reference = op()
        assert calls["d"] == 0
        monkeypatch.setattr(dc.config, "cpu_blas", "mkl")
        routed = op()
        assert calls["d"] > 0, f"{op.__name__}: no GEMM ran on the lanes' choice"
        calls["d"] = 0
        for a, b in zip(reference, routed):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())


def _numba_gemm(dtype):
    fn = _cpu_blas.numba_gemm(dtype)
    if fn is None:
        pytest.skip("this NumPy's BLAS has no CBLAS for our GEMM to fall back on")
    return fn


def _window(rng, dtype, rows, cols, pad=3):
    """A (rows, cols) window at an offset into a larger random matrix, its
    leading dimension wider than its rows: (matrix, window, address, ld)."""
    big = rng.standard_normal((rows + pad, cols + 2 * pad)).astype(dtype)
    window = big[1:1 + rows, pad:pad + cols]
    return big, window, window.ctypes.data, big.shape[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_numba_gemm_is_a_product_within_its_rounding_bound(dtype, trans_a, beta):
    """Every edge of the register tiles and cache blocks: rows 1..13 and more
    than a block (``MB``), columns short of a tile (a masked edge tile),
    whole tiles and a remainder, ``k`` 0, short, and across blocks (``KC``);
    ``A`` transposed or not; windows at offsets; ``B``'s rows far enough
    apart for its blocks to be packed. Against the float64 product,
    within ``(k + 2) * eps * (|A| @ |B| + |C|)``; with ``beta = 0`` the NaN
    that ``C`` held is not read; nothing outside ``C``'s window is written."""
    from defconv_np.kernels.cpu import gemm as kernels

    fn = _numba_gemm(dtype)
    rng = np.random.default_rng(5)
    width = kernels.tile_n(np.dtype(dtype).itemsize)
    eps = np.finfo(dtype).eps
    trans = _cpu_blas.TRANS if trans_a else _cpu_blas.NO_TRANS
    cases = [(m, n, k, 3) for m in (1, 2, 5, 6, 7, 13, kernels.MB + 9)
             for n in (width - 3, width, 2 * width + 5) for k in (0, 1, 9, kernels.KC + 3)]
    # B's rows far apart: its blocks are packed first
    cases += [(m, n, kernels.KC + 3, kernels.PACK_STRIDE) for m in (5, 13)
              for n in (width - 3, 2 * width + 5)]
    for m, n, k, b_pad in cases:
        a_big, a, a_addr, lda = _window(rng, dtype, *((k, m) if trans_a else (m, k)))
        b_big, b, b_addr, ldb = _window(rng, dtype, k, n, b_pad)
        c_big, c, c_addr, ldc = _window(rng, dtype, m, n)
        if beta == 0.0:
            c[...] = np.nan
        before = [x.copy() for x in (a_big, b_big, c_big)]
        a_mat = a.T if trans_a else a
        c_start = np.nan_to_num(c.astype(np.float64)) * beta
        fn(_cpu_blas.ROW_MAJOR, trans, _cpu_blas.NO_TRANS, m, n, k, 1.0, a_addr, lda,
           b_addr, ldb, beta, c_addr, ldc)
        expected = a_mat.astype(np.float64) @ b.astype(np.float64) + c_start
        bound = (k + 2) * eps * (np.abs(a_mat).astype(np.float64) @ np.abs(b)
                                 + np.abs(c_start))
        where = f"m={m} n={n} k={k}"
        assert np.all(np.abs(c - expected) <= bound), where
        np.testing.assert_array_equal(a_big, before[0], err_msg=where)
        np.testing.assert_array_equal(b_big, before[1], err_msg=where)
        outside = np.ones(c_big.shape, bool)
        outside[1:1 + m, 3:3 + n] = False
        np.testing.assert_array_equal(c_big[outside], before[2][outside], err_msg=where)


def test_numba_gemm_leaves_the_products_it_does_not_run_to_its_fallback(monkeypatch):
    """``B`` transposed, ``alpha`` other than 1 and ``beta`` other than 0 or 1
    go to NumPy's GEMM with the same arguments; the rest never does."""
    fn = _numba_gemm(np.float32)
    seen = []
    monkeypatch.setattr(fn, "fallback", lambda *args: seen.append(args))
    rng = np.random.default_rng(6)
    m, n, k = 7, 37, 11
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    base = (_cpu_blas.ROW_MAJOR, _cpu_blas.NO_TRANS, _cpu_blas.NO_TRANS, m, n, k, 1.0,
            a.ctypes.data, k, b.ctypes.data, n, 0.0, c.ctypes.data, n)
    fn(*base)
    assert seen == []
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)
    for index, value in ((2, _cpu_blas.TRANS), (6, 2.0), (11, 0.5)):
        args = base[:index] + (value,) + base[index + 1:]
        seen.clear()
        fn(*args)
        assert seen == [args]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_gemm_taps_sums_shifted_products(dtype):
    """``taps``: the implicit-GEMM conv's sum over taps of ``W_t @ window_t``
    in one call, against the float64 sum of the products, within the
    rounding bound of its k*taps terms; wide and narrow (masked) columns,
    and one shifted tap whose rows are packed."""
    fn = _numba_gemm(dtype)
    rng = np.random.default_rng(9)
    eps = np.finfo(dtype).eps
    from defconv_np.kernels.cpu import gemm as kernels

    # the last case: one tap at a shift, rows far apart (B's blocks packed)
    for m, n, k, shifts, wide in ((13, 150, 20, [0, 1, 2, 40, 41, 42], False),
                                  (3, 5, 7, [3], False), (64, 70, 140, [0, 9], False),
                                  (5, 70, 140, [7], True)):
        ld = max(n + max(shifts) + 2, kernels.PACK_STRIDE if wide else 0)
        band = rng.standard_normal((k, ld)).astype(dtype)
        w = rng.standard_normal((len(shifts), m, k)).astype(dtype)
        c = np.full((m, n + 4), np.nan, dtype)
        taps = np.array(shifts, np.int64)
        for transposed in (False, True):
            # A_t row-major (m, k), or stored as (k, m) and read transposed
            a = np.ascontiguousarray(w.transpose(0, 2, 1)) if transposed else w
            a_rs, a_ks = (1, m) if transposed else (k, 1)
            c[...] = np.nan
            fn.taps(m, n, k, a.ctypes.data, a_rs, a_ks, m * k, band.ctypes.data, ld, taps,
                    c.ctypes.data, n + 4)
            terms = [w[t].astype(np.float64) @ band[:, s:s + n] for t, s in enumerate(shifts)]
            sizes = [np.abs(w[t]).astype(np.float64) @ np.abs(band[:, s:s + n])
                     for t, s in enumerate(shifts)]
            expected, bound = sum(terms), (k * len(shifts) + 1) * eps * sum(sizes)
            assert np.all(np.abs(c[:, :n] - expected) <= bound), (m, n, k, transposed)
            assert np.isnan(c[:, n:]).all()  # nothing written past n


@pytest.mark.parametrize("wide, installed, expected", [
    (True, True, "mkl"), (True, False, "numba"), (False, True, "mkl"), (False, False, "numpy")])
def test_auto_takes_mkl_then_ours_on_wide_vectors_then_numpys(monkeypatch, wide, installed,
                                                              expected):
    if _cpu_blas.gemm(np.float32) is None:
        pytest.skip("this NumPy's BLAS has no CBLAS to call")
    fake_mkl = _counting(_cpu_blas.gemm(np.float32), {"f": 0}, "f")
    monkeypatch.setattr(_cpu_blas, "wide_vectors", lambda: wide)
    monkeypatch.setattr(_cpu_blas, "mkl_gemm", lambda dtype: fake_mkl if installed else None)
    monkeypatch.setattr(dc.config, "cpu_blas", "auto")
    got = _cpu_blas.lane_gemm(np.float32)
    chosen = {"numba": _cpu_blas.numba_gemm(np.float32), "mkl": fake_mkl,
              "numpy": _cpu_blas.gemm(np.float32)}[expected]
    assert got is chosen


@needs_two_lanes
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_numba_gemm_gives_numpys_numbers_on_the_lanes(monkeypatch, dtype, rtol):
    """conv2d (implicit GEMMs) and deform_conv2d (column GEMMs), forward and
    backward, with the lanes' GEMMs ours: NumPy's BLAS's numbers, and our
    kernel did run on the lanes."""
    fn = _numba_gemm(dtype)
    counts = {"lane": 0}
    kernel = fn.kernel

    def counted(*args):
        if threading.current_thread().name.startswith("defconv_np-lane"):
            counts["lane"] += 1
        return kernel(*args)

    monkeypatch.setattr(fn, "kernel", counted)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 16, 9, 70)).astype(dtype)
    off = rng.uniform(-2, 2, (4, 18, 9, 70)).astype(dtype)
    w = rng.standard_normal((64, 16, 3, 3)).astype(dtype)
    go = rng.standard_normal((4, 64, 9, 70)).astype(dtype)

    w_g = rng.standard_normal((64, 8, 3, 2)).astype(dtype)  # 2 groups, dilated: taps' shifts
    go_g = rng.standard_normal((4, 64, 7, 70)).astype(dtype)
    w_inf = w.copy()
    w_inf[3, 2, 0, 0] = np.inf  # the exact path: no margin may meet the weights
    x_inf = x.copy()
    x_inf[1, 5, 4, -1] = np.inf  # and one image's band: the weight gradient's

    def run():
        return [dc.conv2d(x, w, padding=1), *dc.conv2d_backward(go, x, w, padding=1),
                dc.conv2d(x, w_g, padding=(0, 1), dilation=(1, 2), groups=2),
                *dc.conv2d_backward(go_g, x, w_g, padding=(0, 1), dilation=(1, 2), groups=2),
                dc.conv2d_backward(go, x, w_inf, padding=1)[0],
                dc.conv2d_backward(go, x_inf, w, padding=1)[1],
                dc.deform_conv2d(x, off, w, padding=1),
                *[g for g in dc.deform_conv2d_backward(go, x, off, w, padding=1)
                  if g is not None]]

    heights = set()
    grad_view = _cpu_conv._Bands.grad_view

    def chunked():
        # bands of 1 and 2 rows: a lane's gradient buffer is reshaped for
        # each, and its margins must be zeroed again each time
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dc.config, "cpu_conv_band_bytes", 46000 * np.dtype(dtype).itemsize)
            patch.setattr(_cpu_conv._Bands, "grad_view", lambda self, state, chunk: (
                heights.add(chunk.r1 - chunk.r0), grad_view(self, state, chunk))[1])
            return list(dc.conv2d_backward(go, x, w, padding=1))

    monkeypatch.setattr(dc.config, "cpu_blas", "numpy")
    reference = run() + chunked()
    assert counts["lane"] == 0
    monkeypatch.setattr(dc.config, "cpu_blas", "numba")
    ours = run() + chunked()
    assert counts["lane"] > 0, "our GEMM did not run on the lanes"
    assert heights == {1, 2}
    for a, b in zip(reference, ours):
        np.testing.assert_array_equal(np.isfinite(b), np.isfinite(a))
        finite = np.isfinite(a)
        np.testing.assert_allclose(b[finite], a[finite], rtol=0,
                                   atol=rtol * np.abs(a[finite]).max())


_NARROW_VECTORS = r"""
import llvmlite.binding as llvm
import numpy as np

features = llvm.get_host_cpu_features()
for name in list(features):
    if name.startswith("avx512"):
        features[name] = False
llvm.get_host_cpu_features = lambda: features
from defconv_np import _cpu_blas
from defconv_np.kernels.cpu import gemm as kernels
assert kernels.VECTOR_BYTES == 32 and not _cpu_blas.wide_vectors()
rng = np.random.default_rng(8)
for dtype in (np.float32, np.float64):
    fn = _cpu_blas.numba_gemm(dtype)
    m, n, k = 13, 2 * kernels.tile_n(np.dtype(dtype).itemsize) + 3, kernels.KC + 5
    a = rng.standard_normal((k, m)).astype(dtype).T
    b = rng.standard_normal((k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    expected = a.astype(np.float64) @ b + c
    fn(_cpu_blas.ROW_MAJOR, _cpu_blas.TRANS, _cpu_blas.NO_TRANS, m, n, k, 1.0, a.ctypes.data,
       m, b.ctypes.data, n, 1.0, c.ctypes.data, n)
    bound = (k + 2) * np.finfo(dtype).eps * (np.abs(a).astype(np.float64) @ np.abs(b)
                                             + np.abs(expected))
    assert np.all(np.abs(c - expected) <= bound), dtype
print("narrow ok", kernels.tile_n(4), kernels.tile_n(8))
"""


def test_numba_gemm_on_a_cpu_without_512_bit_vectors(tmp_path):
    """Where the CPU lacks AVX-512 the tiles are of two 256-bit vectors (a
    quarter as wide) and ``auto`` does not take ours: the host's features are masked in
    a child process, with a cache of its own so that no 512-bit kernel is
    loaded from ours."""
    import subprocess
    import sys

    if _cpu_blas.gemm(np.float32) is None:
        pytest.skip("this NumPy's BLAS has no CBLAS for our GEMM to fall back on")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_CPU_FEATURES", None)  # the host's features, masked, decide
    done = subprocess.run([sys.executable, "-c", _NARROW_VECTORS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "narrow ok 16 8" in done.stdout  # 2 vectors of 8 or 4


_GUARDED = r"""
import ctypes
import mmap

import numpy as np

from defconv_np import _cpu_blas
from defconv_np.kernels.cpu import gemm as kernels

libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE
keep = []


def guarded(count, dtype, at_end):
    # ``count`` values whose first (or, ``at_end``, last) byte touches a page
    # no access is allowed to: reading one value outside them faults
    dtype = np.dtype(dtype)
    nbytes = int(count) * dtype.itemsize
    pages = -(-nbytes // PAGE)
    region = mmap.mmap(-1, (pages + 2) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    keep.append(region)
    for page in (0, pages + 1):
        assert libc.mprotect(base + page * PAGE, PAGE, 0) == 0
    start = (pages + 1) * PAGE - nbytes if at_end else PAGE
    return np.frombuffer(region, dtype, count=count, offset=start)


rng = np.random.default_rng(10)
runs = 0
for dtype in (np.float32, np.float64):
    fn = _cpu_blas.numba_gemm(dtype)
    width = kernels.tile_n(np.dtype(dtype).itemsize)
    eps = np.finfo(dtype).eps
    for at_end in (True, False):
        for m in (1, 5, 7, kernels.MB + 1):
            for n in (1, width - 1, width + 1, 2 * width + 3):
                for k in (1, kernels.KC + 1):
                    for trans_a in (False, True):
                        a = guarded(m * k, dtype, at_end)
                        b = guarded(k * n, dtype, at_end)
                        c = guarded(m * n, dtype, at_end)
                        a[...], b[...], c[...] = (rng.standard_normal(x.size) for x in (a, b, c))
                        a_mat = a.reshape(k, m).T if trans_a else a.reshape(m, k)
                        start = c.reshape(m, n).astype(np.float64)
                        fn(_cpu_blas.ROW_MAJOR, _cpu_blas.TRANS if trans_a else _cpu_blas.NO_TRANS,
                           _cpu_blas.NO_TRANS, m, n, k, 1.0, a.ctypes.data, m if trans_a else k,
                           b.ctypes.data, n, 1.0, c.ctypes.data, n)
                        exact = a_mat.astype(np.float64) @ b.reshape(k, n) + start
                        bound = (k + 2) * eps * (np.abs(a_mat).astype(np.float64)
                                                 @ np.abs(b.reshape(k, n)) + np.abs(start))
                        assert np.all(np.abs(c.reshape(m, n) - exact) <= bound), (m, n, k)
                        runs += 1
        # taps: the farthest tap's window ends on the band's last value
        m, n, k, ld, shifts = 7, width + 3, 5, width + 9, np.array([0, 2, 6], np.int64)
        band = guarded((k - 1) * ld + shifts.max() + n, dtype, at_end)
        band[...] = rng.standard_normal(band.size)
        w = guarded(len(shifts) * m * k, dtype, at_end)
        w[...] = rng.standard_normal(w.size)
        c = guarded(m * n, dtype, at_end)
        fn.taps(m, n, k, w.ctypes.data, k, 1, m * k, band.ctypes.data, ld, shifts, c.ctypes.data, n)
        runs += 1
        # B's rows far apart (its blocks packed), the last one ending on the guard
        m, n, k, ld = 7, 2 * width + 3, kernels.KC + 1, kernels.PACK_STRIDE + 5
        a, c = guarded(m * k, dtype, at_end), guarded(m * n, dtype, at_end)
        b = guarded((k - 1) * ld + n, dtype, at_end)
        a[...], b[...] = rng.standard_normal(a.size), rng.standard_normal(b.size)
        fn(_cpu_blas.ROW_MAJOR, _cpu_blas.NO_TRANS, _cpu_blas.NO_TRANS, m, n, k, 1.0,
           a.ctypes.data, k, b.ctypes.data, ld, 0.0, c.ctypes.data, n)
        rows = np.lib.stride_tricks.as_strided(b, (k, n), (ld * b.itemsize, b.itemsize))
        exact = a.reshape(m, k).astype(np.float64) @ rows
        bound = (k + 2) * eps * (np.abs(a.reshape(m, k)).astype(np.float64) @ np.abs(rows))
        assert np.all(np.abs(c.reshape(m, n) - exact) <= bound)
        runs += 1
print("guarded runs", runs)
"""


def test_numba_gemm_reads_and_writes_nothing_outside_its_operands():
    """Every operand placed so that its first or last value touches a page no
    access is allowed to, at the edges of tiles and blocks, both layouts of
    A, the taps' farthest window and B's rows far apart (packed): a single
    value read or written outside faults the child process. (Unmasked loads
    in the edge tiles fault here; the other tests, whose windows have room to
    read into, pass them.)"""
    import subprocess
    import sys

    if _cpu_blas.gemm(np.float32) is None:
        pytest.skip("this NumPy's BLAS has no CBLAS for our GEMM to fall back on")
    done = subprocess.run([sys.executable, "-c", _GUARDED], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "guarded runs 264" in done.stdout, done.stdout
