"""Where the CUDA kernels can run in this process: a real GPU (CuPy arrays),
Numba's CUDA simulator (NumPy arrays routed through the CUDA launchers), or
nowhere (the CUDA tests then skip and say why)."""

import os

import numpy as np

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _gpu_available():
    if SIMULATOR:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device: all mean "no GPU here"
        return False


GPU = _gpu_available()
MODE = "gpu" if GPU else "simulator" if SIMULATOR else None
SKIP_REASON = ("no GPU with CuPy, and not under Numba's CUDA simulator: run "
               "`tox -e cudasim` (NUMBA_ENABLE_CUDASIM=1) to test the CUDA kernels on CPU")


def to_device(array):
    """Move a NumPy array to where the CUDA kernels read it."""
    if array is None or MODE != "gpu":
        return array
    import cupy

    return cupy.asarray(array)


def to_host(array):
    if array is None or isinstance(array, np.ndarray):
        return array
    return array.get()
