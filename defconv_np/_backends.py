"""Pick the backend module that holds the launchers for an array module."""

import numpy as np


def launchers(xp):
    """The launcher module for ``xp``: ``_cpu`` for NumPy, ``_cuda`` for CuPy."""
    if xp is np:
        from . import _cpu

        return _cpu
    from . import _cuda

    return _cuda
