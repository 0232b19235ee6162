"""Numba CUDA kernels. Compiled lazily on first launch, per argument types (the
dtype), with no eager signatures, so importing them needs no driver."""
