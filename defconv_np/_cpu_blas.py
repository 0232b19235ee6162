"""Direct calls into the BLAS NumPy itself uses (and Intel MKL, where installed), through CBLAS.

``numpy.matmul`` cannot accumulate into its output (``beta = 1``) nor take a
matrix whose rows are a strided window of a larger array at an arbitrary
element offset; the implicit-GEMM convolution (``_cpu_conv``) needs both. It
calls ``cblas_sgemm`` / ``cblas_dgemm`` of the very library NumPy loaded (the
one ``threadpoolctl`` limits inside the lanes), found by its file path.

Only interfaces whose integer width is known are used: the 64-bit-integer
builds NumPy's wheels ship (symbols ``scipy_cblas_sgemm64_``, or
``cblas_sgemm64_`` in older wheels), and plain ``cblas_sgemm`` of an OpenBLAS
whose configuration string says whether it was built with 64-bit integers.
Anything else (an unknown BLAS, a NumPy built against Accelerate or a
system OpenBLAS outside NumPy's folders) makes ``gemm`` return None, and the
callers take their ``numpy.matmul`` (column) path instead.

The CPU convs' worker lanes can run their GEMMs elsewhere, as
``config.cpu_blas`` chooses: on Intel MKL from the ``mkl`` wheel (``pip
install defconv_np[mkl]``), loaded with its sequential threading layer, or on
our own GEMM (``NumbaGemm``, the Numba micro-kernels of
``kernels/cpu/gemm.py``). ``"auto"`` takes MKL where installed, else ours on
CPUs with 512-bit vectors; under ``"auto"`` deform_conv2d takes ours on such
CPUs even where MKL is installed (``fuses``), called from inside its fused
tiles. The implicit-GEMM conv calls the chosen GEMM directly (ours sums a
band's taps in one call, ``NumbaGemm.taps``); the column paths (deformable,
active and strided convs) through ``lane_matmul``, a ``numpy.matmul`` whose
products run on it on a lane. Only the lanes use it:
they run one GEMM per core, whereas a call that runs on the caller's thread
alone (one image, or one lane) keeps NumPy's BLAS with all its threads. A
conv resolves both GEMMs once, at its start (``lane_gemm`` and ``gemm``), and
each thread takes its own by ``in_lane``.

Measured on a 2-core Xeon with AVX-512 (``benchmarks/gemm_choice.py``): with
both cores busy, MKL's ``cblas_sgemm`` ran 148-160 GFLOP/s per core at the
convs' shapes against 117-122 for NumPy's OpenBLAS (SkylakeX kernel); on one
core ours ran 155-202 GFLOP/s (200-202 in the deformable forward's product)
against 141-157 for OpenBLAS and 182-195 for MKL in the same products.
"""

import ctypes
import os
import threading
from importlib import metadata

import numpy as np

from . import config

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_lock = threading.Lock()
_found = None  # {dtype char: function}, once looked up
#: (NumPy dtype char, BLAS letter, ctypes real) of the two GEMMs
_KINDS = (("f", "s", ctypes.c_float), ("d", "d", ctypes.c_double))


_mkl = None  # {dtype char: function} of MKL, once looked up ({} if unusable)
#: MKL's constants: sequential threading layer, and conditional numerical
#: reproducibility for the code path of this CPU (results independent of the
#: arrays' alignment)
_MKL_THREADING_SEQUENTIAL, _MKL_CBWR_AUTO, _MKL_CBWR_SUCCESS = 1, 2, 0
#: Whether ``_lookup_mkl`` loaded ``libmkl_rt`` (so that a lookup redone in a
#: forked child does not take our own copy for someone else's)
_mkl_loaded_by_us = False
#: The values ``config.cpu_blas`` may take
CHOICES = ("auto", "numpy", "mkl", "numba")


class _Lane(threading.local):
    #: True on a worker lane while it runs a conv's chunks
    active = False


in_lane = _Lane()


def _after_fork_in_child():
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it mid-lookup


os.register_at_fork(after_in_child=_after_fork_in_child)


def _numpy_blas_path():
    """File path of the BLAS library NumPy's ``matmul`` calls, or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    site = os.path.dirname(os.path.dirname(os.path.realpath(np.__file__)))
    homes = [os.path.join(site, "numpy") + os.sep, os.path.join(site, "numpy.libs") + os.sep]
    for lib in ThreadpoolController().lib_controllers:
        path = os.path.realpath(getattr(lib, "filepath", None) or "")
        if lib.user_api == "blas" and any(path.startswith(home) for home in homes):
            return path
    return None


def _bind(lib, name, int_type, real_type):
    fn = getattr(lib, name, None)
    if fn is None:
        return None
    enum, ptr = ctypes.c_int, ctypes.c_void_p
    fn.restype = None
    fn.argtypes = [enum, enum, enum, int_type, int_type, int_type, real_type, ptr, int_type,
                   ptr, int_type, real_type, ptr, int_type]
    return fn


def _lookup(path):
    lib = ctypes.CDLL(path)
    for prefix in ("scipy_cblas_", "cblas_"):
        functions = {}
        for char, letter, real in _KINDS:
            fn = _bind(lib, prefix + letter + "gemm64_", ctypes.c_int64, real)
            if fn is not None:
                functions[char] = fn
        if len(functions) == 2:
            return functions
    functions = {}
    config = getattr(lib, "openblas_get_config", None) or getattr(
        lib, "openblas_get_config64_", None)
    if config is None:
        return {}
    config.restype = ctypes.c_char_p
    int_type = ctypes.c_int64 if b"USE64BITINT" in (config() or b"") else ctypes.c_int32
    for char, letter, real in _KINDS:
        fn = _bind(lib, "cblas_" + letter + "gemm", int_type, real)
        if fn is None:
            return {}
        functions[char] = fn
    return functions


def gemm(dtype):
    """The CBLAS ``?gemm`` of NumPy's BLAS for float32 or float64 ``dtype``,
    called as ``fn(ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a_address, lda,
    b_address, ldb, beta, c_address, ldc)``; None when it cannot be found."""
    global _found
    with _lock:
        if _found is None:
            path = _numpy_blas_path()
            try:
                _found = _lookup(path) if path else {}
            except OSError:
                _found = {}
    return _found.get(np.dtype(dtype).char)


def _mkl_paths():
    """Paths of ``libmkl_rt`` among the files the ``mkl`` wheel installed."""
    try:
        files = metadata.distribution("mkl").files or []
    except metadata.PackageNotFoundError:
        return []
    paths = [str(file.locate()) for file in files
             if os.path.basename(str(file)).startswith("libmkl_rt.so")]
    return [path for path in paths if os.path.exists(path)]


def _mkl_loaded_already():
    """Whether MKL is already in this process (a NumPy built on MKL, say, as
    ``libmkl_rt`` or as separate ``libmkl_core`` and interface libraries): its
    threading layer is then its owner's, and not ours to set."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return False
    return "libmkl_rt" in text or "libmkl_core" in text


def _lookup_mkl():
    """MKL's CBLAS GEMMs, set to run sequentially, or {} when the ``mkl`` wheel
    is not installed, MKL was already loaded by someone else, or this MKL
    lacks what is needed: the 64-bit-integer symbols ``cblas_?gemm_64`` (the
    plain ones take the integer width of ``MKL_INTERFACE_LAYER``, which a
    user may set), and the sequential layer and reproducible mode accepted.

    Both settings are process-wide: any later user of this ``libmkl_rt`` gets
    them too (a NumPy or SciPy built on MKL would have loaded it first, and
    then it is left alone)."""
    global _mkl_loaded_by_us
    paths = _mkl_paths()
    if not paths or (_mkl_loaded_already() and not _mkl_loaded_by_us):
        return {}
    lib = ctypes.CDLL(paths[0])
    _mkl_loaded_by_us = True
    functions = {}
    for char, letter, real in _KINDS:
        fn = _bind(lib, "cblas_" + letter + "gemm_64", ctypes.c_int64, real)
        if fn is None:
            return {}
        functions[char] = fn
    lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
    lib.MKL_CBWR_Set.argtypes = [ctypes.c_int]
    lib.MKL_CBWR_Set.restype = ctypes.c_int
    if lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL) != _MKL_THREADING_SEQUENTIAL:
        return {}
    if lib.MKL_CBWR_Set(_MKL_CBWR_AUTO) != _MKL_CBWR_SUCCESS:
        return {}
    return functions


def mkl_gemm(dtype):
    """MKL's sequential CBLAS ``?gemm`` for ``dtype`` (called as ``gemm``'s,
    64-bit integers), or None when ``_lookup_mkl`` finds it unusable (the
    ``mkl`` wheel not installed, MKL loaded by someone else, or too old)."""
    global _mkl
    with _lock:
        if _mkl is None:
            try:
                _mkl = _lookup_mkl()
            except (OSError, AttributeError):
                _mkl = {}
    return _mkl.get(np.dtype(dtype).char)


class NumbaGemm:
    """defconv_np's own GEMM (``kernels/cpu/gemm.py``) behind the CBLAS
    signature of ``gemm``'s functions, for the products it runs: row-major,
    ``alpha = 1``, ``beta`` 0 or 1, ``B`` not transposed (its rows
    contiguous), ``A`` either way; any other product goes to ``fallback``
    (NumPy's CBLAS GEMM, whose interface this copies). ``taps`` runs the
    implicit-GEMM conv's sum of shifted products in one call."""

    #: one tap at shift 0: a plain product
    _NO_SHIFT = np.zeros(1, np.int64)

    def __init__(self, dtype, fallback):
        from .kernels.cpu import gemm as kernels

        self.kernel, self.fallback = kernels.gemm_taps, fallback
        self.like = np.dtype(dtype).type(0)
        #: ``fits`` reads the integer type here: ours takes 64-bit integers
        self.argtypes = [None, None, None, ctypes.c_int64]

    def __call__(self, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        if (order != ROW_MAJOR or trans_b != NO_TRANS or alpha != 1.0
                or beta not in (0.0, 1.0)):
            return self.fallback(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
                                 beta, c, ldc)
        if m <= 0 or n <= 0:
            return
        a_rs, a_ks = (lda, 1) if trans_a == NO_TRANS else (1, lda)
        self.kernel(self.like, m, n, k, a, a_rs, a_ks, 0, b, ldb, self._NO_SHIFT, c, ldc,
                    int(beta != 0.0))

    def taps(self, m, n, k, a, a_rs, a_ks, a_tap, b, ldb, shifts, c, ldc):
        """``C (m, n) = sum over t of A_t @ B_t``: ``A_t[i, p]`` at element
        ``t * a_tap + i * a_rs + p * a_ks`` of ``a`` (so either layout),
        ``B_t`` (k, n) row-major at element ``shifts[t]`` of ``b``
        (``shifts`` a contiguous int64 array), leading dimensions ``ldb``,
        ``ldc``; addresses in bytes. The taps accumulate in registers, in
        order, each product fused (FMA)."""
        if m > 0 and n > 0:
            self.kernel(self.like, m, n, k, a, a_rs, a_ks, a_tap, b, ldb, shifts, c, ldc, 0)


_numba = {}  # {dtype char: NumbaGemm}, made once


def numba_gemm(dtype):
    """Our own GEMM for ``dtype`` (``NumbaGemm``), or None where NumPy's
    CBLAS GEMM, which takes the products it does not run, is not found."""
    char = np.dtype(dtype).char
    fallback = gemm(dtype)
    if fallback is None:
        return None
    with _lock:
        if char not in _numba:
            _numba[char] = NumbaGemm(dtype, fallback)
    return _numba[char]


def wide_vectors():
    """Whether this CPU has 512-bit vectors, where ``NumbaGemm`` outruns
    NumPy's OpenBLAS (``benchmarks/gemm_choice.py``)."""
    from .kernels.cpu import gemm as kernels

    return kernels.VECTOR_BYTES == 64


def lane_gemm(dtype):
    """The GEMM the worker lanes call for ``dtype``, as ``config.cpu_blas``
    chooses: ``"numba"`` our own (``numba_gemm``), ``"mkl"`` MKL (a
    ValueError if the ``mkl`` wheel is missing), ``"numpy"`` NumPy's own
    (``gemm``); ``"auto"`` MKL where installed (the user asked for it, and it
    ran the convs' backward 1-4% faster than ours), else our own on CPUs
    with 512-bit vectors, else NumPy's. None where none is found."""
    choice = _choice()
    if choice in ("auto", "mkl"):
        fn = mkl_gemm(dtype)
        if fn is not None:
            return fn
        if choice == "mkl":
            raise ValueError("config.cpu_blas is 'mkl', but no usable MKL was found: "
                             "install it with pip install defconv_np[mkl] (MKL loaded by "
                             "another library first, or without cblas_?gemm_64, is not used)")
    if _takes_ours(choice):
        fn = numba_gemm(dtype)
        if fn is not None or choice == "numba":
            return fn
    return gemm(dtype)


def _choice():
    """``config.cpu_blas``, a ValueError unless one of ``CHOICES``."""
    choice = config.cpu_blas
    if choice not in CHOICES:
        raise ValueError(f"config.cpu_blas must be one of {CHOICES}, got {choice!r}")
    return choice


def _takes_ours(choice):
    """Whether ``choice`` takes our own GEMM where MKL is not taken first:
    ``"numba"``, and ``"auto"`` on CPUs with 512-bit vectors."""
    return choice == "numba" or (choice == "auto" and wide_vectors())


def fuses():
    """Whether a fused CPU kernel may run our own GEMM from compiled code (the
    deformable conv's tiles, ``kernels/cpu/deform_tiles.py``): under
    ``config.cpu_blas`` ``"numba"``, and under ``"auto"`` on CPUs with
    512-bit vectors even where MKL is installed (no other BLAS can be called
    from inside those kernels, and the fused v2 forward+backward ran faster
    than the column path on MKL: 49.1 against 54.7 ms in
    ``benchmarks/results/cpu_run36_malloc.json``). ``"mkl"`` and ``"numpy"``
    keep the column path on that BLAS. The fused kernels call ours directly,
    so unlike ``numba_gemm`` this needs no NumPy CBLAS to fall back on."""
    return _takes_ours(_choice())


def fits(fn, *sizes):
    """Whether every size and leading dimension in ``sizes`` fits ``fn``'s
    integer type (32-bit for some OpenBLAS builds; ``NumbaGemm``'s falls
    back on NumPy's, so both must hold them)."""
    if isinstance(fn, NumbaGemm) and not fits(fn.fallback, *sizes):
        return False
    limit = 2**63 - 1 if fn.argtypes[3] is ctypes.c_int64 else 2**31 - 1
    return all(0 <= size <= limit for size in sizes)


def lane_matmul(dtype):
    """``numpy.matmul`` for the column GEMMs of one conv call, with the lanes'
    GEMM for ``dtype`` resolved now (``lane_gemm``): on a worker lane, a
    product goes to that GEMM when it is not NumPy's own (MKL), elsewhere and
    otherwise to ``numpy.matmul``."""
    lane = lane_gemm(dtype)
    if lane is None or lane is gemm(dtype):
        return np.matmul

    def product(a, b, out=None):
        if in_lane.active:
            return matmul(a, b, out, lane)
        return np.matmul(a, b, out=out)

    return product


def _operand(x):
    """(trans, leading dimension) under which CBLAS reads the 2-D matrix ``x``
    in place, or None if its strides do not allow it."""
    rows, cols = x.shape
    step_r, step_c = x.strides
    isz = x.itemsize
    if step_r % isz or step_c % isz:
        return None
    if cols == 1 or step_c == isz:
        ld = step_r // isz if rows > 1 else max(1, cols)
        if ld >= max(1, cols):
            return NO_TRANS, ld
    if rows == 1 or step_r == isz:
        ld = step_c // isz if cols > 1 else max(1, rows)
        if ld >= max(1, rows):
            return TRANS, ld
    return None


def _row_major(c):
    """Whether CBLAS can write the 2-D matrix ``c`` in place (row-major)."""
    rows, cols = c.shape
    isz = c.itemsize
    return ((cols <= 1 or c.strides[1] == isz)
            and (rows <= 1 or (c.strides[0] % isz == 0 and c.strides[0] >= cols * isz)))


def _gemm_2d(fn, a, b, c):
    """``c = a @ b`` for 2-D ``a``, ``b`` and a row-major ``c``."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        c[...] = 0
        return
    ops = []
    for x in (a, b):
        op = _operand(x)
        if op is None:
            x = np.ascontiguousarray(x)
            op = (NO_TRANS, max(1, x.shape[1]))
        ops.append((x, op))
    (a, (ta, lda)), (b, (tb, ldb)) = ops
    ldc = c.strides[0] // c.itemsize if m > 1 else max(1, n)
    if not fits(fn, m, n, k, lda, ldb, ldc):
        c[...] = np.matmul(a, b)
        return
    fn(ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0,
       c.ctypes.data, ldc)


def matmul(a, b, out, fn):
    """``numpy.matmul(a, b, out=out)`` through the CBLAS GEMM ``fn``, one
    matrix of the broadcast batch at a time, reading strided operands in
    place, for float32/float64 arrays of two or more dimensions (anything
    else goes to ``numpy.matmul``). ``out`` must not overlap ``a`` or ``b``
    (the convs' buffers never do)."""
    if (a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or a.dtype.char not in "fd"
            or a.shape[-1] != b.shape[-2]):
        return np.matmul(a, b, out=out)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    shape = batch + (a.shape[-2], b.shape[-1])
    if out is not None and (out.shape != shape or out.dtype != a.dtype):
        return np.matmul(a, b, out=out)
    if all(d == 1 for d in batch):  # the convs' usual case: one matrix each
        pairs = [(a[(0,) * (a.ndim - 2)], b[(0,) * (b.ndim - 2)], (0,) * len(batch))]
    else:
        a = np.broadcast_to(a, batch + a.shape[-2:])
        b = np.broadcast_to(b, batch + b.shape[-2:])
        pairs = [(a[i], b[i], i) for i in np.ndindex(*batch)]
    direct = out is not None and all(_row_major(out[i]) for _, _, i in pairs)
    result = out if direct else np.empty(shape, a.dtype)
    for a_i, b_i, i in pairs:
        _gemm_2d(fn, a_i, b_i, result[i])
    if out is not None and not direct:
        out[...] = result
        return out
    return result
