"""Which array module an op runs on: NumPy in gives NumPy out, CuPy in gives CuPy out.

CuPy is never imported here: an array is recognised by its type's module, so
``import defconv_np`` works where CuPy or a CUDA driver is missing.
"""

import functools
import itertools
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: The NumPy array types accepted: a memmap only says where the data lives.
#: Other subclasses change arithmetic (a masked array's sum skips its mask,
#: np.matrix's ``*`` is a product of matrices), so their results would mix
#: plain and subclass semantics; they are refused, and results are always plain.
NUMPY_ARRAY_TYPES = (np.ndarray, np.memmap)


def is_cupy_array(value):
    """True for a ``cupy.ndarray`` (without importing CuPy)."""
    cls = type(value)
    return cls.__name__ == "ndarray" and cls.__module__.split(".")[0] == "cupy"


def is_torch_tensor(value):
    """True for a PyTorch tensor (or Parameter), recognised by its type's module,
    without importing PyTorch."""
    return type(value).__module__.split(".")[0] == "torch"


def not_an_array(name, value):
    """The TypeError for a value that is neither a numpy.ndarray nor a cupy.ndarray,
    saying how to make it one."""
    cls = type(value)
    message = (f"{name} must be a numpy.ndarray or cupy.ndarray, "
               f"got {cls.__module__}.{cls.__qualname__}")
    if isinstance(value, np.ndarray):
        hint = (f"ndarray subclasses other than numpy.memmap are refused, as their arithmetic "
                f"differs; pass numpy.asarray({name}) for its plain data (fill a masked "
                f"array first)")
    elif is_torch_tensor(value):
        hint = (f"convert a tensor without copying: numpy.from_dlpack({name}) on the CPU, "
                f"cupy.from_dlpack({name}) on a GPU")
    elif isinstance(value, (list, tuple, numbers.Number, np.generic)):
        hint = f"convert it with numpy.asarray({name})"
    elif hasattr(value, "__cuda_array_interface__"):
        hint = f"convert it without copying with cupy.asarray({name})"
    elif hasattr(value, "__dlpack__"):
        hint = (f"convert it without copying: numpy.from_dlpack({name}) on the CPU, "
                f"cupy.from_dlpack({name}) on a GPU")
    elif hasattr(value, "__array__") or hasattr(value, "__array_interface__"):
        hint = f"convert it with numpy.asarray({name})"
    else:
        return TypeError(message)
    return TypeError(f"{message}: {hint}")


def array_module(**arrays):
    """Return ``numpy`` or ``cupy`` for the named arrays (``None`` values are skipped).

    Raises
    ------
    TypeError
        If a value is not a NumPy or CuPy array (ndarray subclasses other than
        numpy.memmap are refused too), or NumPy and CuPy arrays are mixed.
    """
    numpy_names, cupy_names = [], []
    for name, value in arrays.items():
        if value is None:
            continue
        if type(value) in NUMPY_ARRAY_TYPES:
            numpy_names.append(name)
        elif is_cupy_array(value):
            cupy_names.append(name)
        else:
            raise not_an_array(name, value)
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
