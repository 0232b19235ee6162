"""Which array module an op runs on: NumPy in gives NumPy out, CuPy in gives CuPy out.

CuPy is never imported here: an array is recognised by its type's module, so
``import defconv_np`` works where CuPy or a CUDA driver is missing.
"""

import functools
import itertools

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_cupy_array(value):
    """True for a ``cupy.ndarray`` (without importing CuPy)."""
    cls = type(value)
    return cls.__name__ == "ndarray" and cls.__module__.split(".")[0] == "cupy"


def array_module(**arrays):
    """Return ``numpy`` or ``cupy`` for the named arrays (``None`` values are skipped).

    Raises
    ------
    TypeError
        If a value is not a NumPy or CuPy array, or NumPy and CuPy arrays are mixed.
    """
    numpy_names, cupy_names = [], []
    for name, value in arrays.items():
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            numpy_names.append(name)
        elif is_cupy_array(value):
            cupy_names.append(name)
        else:
            raise TypeError(
                f"{name} must be a numpy.ndarray or cupy.ndarray, "
                f"got {type(value).__module__}.{type(value).__qualname__}"
            )
    devices = {arrays[name].device.id for name in cupy_names}
    if len(devices) > 1:
        where = ", ".join(f"{name} on GPU {arrays[name].device.id}" for name in cupy_names)
        raise ValueError(f"all CuPy arrays must be on one GPU, got {where}")
    if numpy_names and cupy_names:
        raise TypeError(
            "all arrays must live on the same device: "
            f"{', '.join(numpy_names)} {'is' if len(numpy_names) == 1 else 'are'} NumPy, "
            f"{', '.join(cupy_names)} {'is' if len(cupy_names) == 1 else 'are'} CuPy"
        )
    if cupy_names:
        import cupy

        return cupy
    return np


def common_float_dtype(**arrays):
    """The one floating dtype (float32 or float64) that all named arrays share."""
    dtype, first = None, None
    for name, value in arrays.items():
        if value is None:
            continue
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}")
        if dtype is None:
            dtype, first = value.dtype, name
        elif value.dtype != dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but {first} has {dtype}; "
                "all arrays must share one dtype"
            )
    return dtype


def on_arrays_device(function):
    """Run ``function`` with the GPU of its first CuPy argument current, so that
    CuPy allocations and CuPy's current stream belong to that device (an array
    on device 1 runs on device 1). NumPy calls are passed straight through."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for value in itertools.chain(args, kwargs.values()):
            if is_cupy_array(value):
                with value.device:
                    return function(*args, **kwargs)
        return function(*args, **kwargs)

    return wrapper
