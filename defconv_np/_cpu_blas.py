"""Direct calls into the BLAS NumPy itself uses, through its CBLAS interface.

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
"""

import ctypes
import os
import threading

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_lock = threading.Lock()
_found = None  # {dtype char: function}, once looked up
#: (NumPy dtype char, BLAS letter, ctypes real) of the two GEMMs
_KINDS = (("f", "s", ctypes.c_float), ("d", "d", ctypes.c_double))


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


def fits(fn, *sizes):
    """Whether every size and leading dimension in ``sizes`` fits ``fn``'s
    integer type (32-bit for some OpenBLAS builds)."""
    limit = 2**63 - 1 if fn.argtypes[3] is ctypes.c_int64 else 2**31 - 1
    return all(0 <= size <= limit for size in sizes)
