"""Which kernels Numba really compiles (not those it loads from its disk cache).

Numba fires a ``numba:compile`` event around every compilation and none for a
cache hit. One global listener, installed on import, records the outermost
compilation of each defconv_np kernel: it prints a line to stderr when
``config.verbose_compile`` is true, and feeds the recorders of
:func:`recording` (used by ``warmup`` and its tests). Nothing is printed by
default.
"""

import contextlib
import sys
import threading
import time
from typing import Iterator, List, NamedTuple

from numba.core import event

from . import config


class CompiledKernel(NamedTuple):
    """One kernel compilation: its name, its argument types and its seconds."""

    name: str
    signature: str
    dtypes: str
    seconds: float


def _dtypes(args):
    names = []
    for a in args:
        dtype = getattr(a, "dtype", None)
        if dtype is not None and str(dtype).startswith("float") and str(dtype) not in names:
            names.append(str(dtype))
    return "/".join(names) or "-"


class _Listener(event.Listener):
    def __init__(self):
        self._local = threading.local()
        self.recorders: List[list] = []

    def on_start(self, ev):
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        stack.append(time.perf_counter())

    def on_end(self, ev):
        stack = self._local.stack
        start = stack.pop()
        if stack:  # a device function compiled inside a kernel: counted with it
            return
        data = ev.data or {}
        dispatcher = data.get("dispatcher")
        py_func = getattr(dispatcher, "py_func", None)
        module = getattr(py_func, "__module__", "") or ""
        if not module.startswith("defconv_np"):
            return
        args = data.get("args") or ()
        record = CompiledKernel(f"{module}.{py_func.__qualname__}",
                                "(" + ", ".join(str(a) for a in args) + ")",
                                _dtypes(args), time.perf_counter() - start)
        for recorder in list(self.recorders):
            recorder.append(record)
        if config.verbose_compile:
            print(f"compiled {record.name.removeprefix('defconv_np.')} "
                  f"[{record.dtypes}] in {record.seconds:.1f} s",
                  file=sys.stderr, flush=True)


_LISTENER = _Listener()
event.register("numba:compile", _LISTENER)


@contextlib.contextmanager
def recording() -> Iterator[List[CompiledKernel]]:
    """Collect, in a list, the defconv_np kernels compiled inside the block."""
    compiled: List[CompiledKernel] = []
    _LISTENER.recorders.append(compiled)
    try:
        yield compiled
    finally:
        _LISTENER.recorders.remove(compiled)
