"""Argument checks shared by every op: each failure names the argument, what was
expected and what came."""

import numbers
import operator

import numpy as np

#: The largest stride, padding or dilation (the kernels index in int64), and
#: the most bytes an array may take (NumPy's and CuPy's limit on 64-bit machines).
INT64_MAX = 2**63 - 1


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))


def pair(value, name, *, minimum):
    """Normalise an int or a pair of ints (Python or NumPy integers, not bools)
    to a tuple ``(h, w)`` of Python ints, each in ``[minimum, 2**63 - 1]``."""
    if _is_bool(value) or not isinstance(value, (numbers.Integral, tuple, list)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        items = (value, value)
    else:
        items = tuple(value)
        if len(items) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    out = []
    for item in items:
        if _is_bool(item):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        try:
            item = operator.index(item)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if item < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        if item > INT64_MAX:
            raise ValueError(f"{name} must be <= 2**63 - 1 (int64), got {value!r}")
        out.append(item)
    return tuple(out)


def flag(value, name):
    """A bool or numpy.bool_, as a bool; anything else (None, 0, "no") is refused."""
    if not _is_bool(value):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def addressable(shape, itemsize):
    """Whether an array of ``shape`` with ``itemsize``-byte elements stays under
    the size limit of NumPy and CuPy: its non-zero dimensions and item size
    multiply to at most 2**63 - 1 bytes (Python ints, so nothing overflows)."""
    total = int(itemsize)
    for dim in shape:
        total *= max(int(dim), 1)
    return total <= INT64_MAX


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def ndim(array, name, expected, layout):
    if array.ndim != expected:
        raise ValueError(
            f"{name} must be {expected}-D {layout}, got shape {tuple(array.shape)}"
        )


def shape_equals(array, name, expected, layout):
    if tuple(array.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} {layout}, got {tuple(array.shape)}"
        )


def needs(value, allowed, name="needs"):
    """Normalise the ``needs`` keyword (an iterable of gradient names) to a frozenset."""
    if isinstance(value, str):
        value = (value,)
    try:
        wanted = frozenset(value)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of names from {allowed}, got {value!r}") from None
    unknown = sorted(str(w) for w in wanted - frozenset(allowed))
    if unknown:
        raise ValueError(f"{name} names unknown gradients {unknown}; expected names from {allowed}")
    return wanted


def conv_output_size(size, kernel, stride, padding, dilation, what):
    """Output length of a strided, dilated, padded correlation (torch's formula)."""
    extent = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - extent) // stride + 1
    if out < 1:
        raise ValueError(
            f"output {what} would be {out} (< 1): input {what} {size}, padding {padding}, "
            f"dilated kernel {extent} (kernel {kernel}, dilation {dilation}), stride {stride}"
        )
    return out
