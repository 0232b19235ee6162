"""Numba CPU kernels: serial, GIL-free loops over a range of independent work
items (the launchers share the items over their worker lanes), compiled
lazily on first call and cached on disk (``cache=True``)."""
