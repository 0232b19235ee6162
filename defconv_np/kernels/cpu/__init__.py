"""Numba CPU kernels: ``prange`` loops over independent output work, compiled
lazily on first call and cached on disk (``cache=True``)."""
