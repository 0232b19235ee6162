"""Pick the backend module that holds the launchers for an array module."""

import numpy as np


def launchers(xp):
    """The launcher module for ``xp``: ``_cpu`` for NumPy, ``_cuda`` for CuPy."""
    from . import config

    if xp is np and not config.numpy_through_cuda_kernels:
        from . import _cpu

        return _cpu
    from . import _cuda

    return _cuda


def attention_launchers(xp):
    """The multi-scale deformable attention launchers for ``xp``:
    ``_cpu_attention`` for NumPy, ``_cuda_attention`` for CuPy."""
    from . import config

    if xp is np and not config.numpy_through_cuda_kernels:
        from . import _cpu_attention

        return _cpu_attention
    from . import _cuda_attention

    return _cuda_attention
