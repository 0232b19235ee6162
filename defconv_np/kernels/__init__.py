"""Compute kernels. ``sampling`` holds the per-point maths, written once as plain
Python and compiled for each target; ``cpu`` holds serial, GIL-free Numba kernels and
``cuda`` Numba CUDA kernels (imported only when a CuPy array arrives)."""
