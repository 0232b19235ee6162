"""Type aliases for the public signatures (annotations only; nothing is checked).

``Array`` is ``numpy.ndarray`` or ``cupy.ndarray``; CuPy is optional, so the
alias is ``Any`` rather than a union that would need it installed.
"""

from typing import Any, Iterable, Optional, Sequence, Tuple, Union

Array = Any
"""A ``numpy.ndarray`` or ``cupy.ndarray`` of float32 or float64."""

IntPair = Union[int, Tuple[int, int]]
"""An int, or a pair of ints (height, width)."""

Size = Sequence[int]
"""(N, C, H, W)."""

__all__ = ["Array", "IntPair", "Iterable", "Optional", "Size"]
