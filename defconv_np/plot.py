"""Pictures of where the ops sample: deformable sampling locations and
spatial-transformer grids, drawn over the input image.

Needs matplotlib (``pip install defconv_np[plot]``), imported only by this
module: ``import defconv_np`` never loads it. Each function draws into ``ax``
(a new figure when None) and returns the matplotlib Figure. NumPy or CuPy
arrays are accepted (CuPy arrays are copied to the host).
"""

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

try:
    import matplotlib.pyplot as plt
except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
    raise ImportError("defconv_np.plot needs matplotlib: pip install defconv_np[plot] "
                      "(or pip install matplotlib)") from exc

from ._typing import Array, IntPair

__all__ = ["sampling_grid", "sampling_locations"]


def _host(array) -> np.ndarray:
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def _pair(value, name) -> Tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


def _image(image, batch, channel) -> np.ndarray:
    image = _host(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (N, C, H, W), got shape {image.shape}")
    plane = image[batch].mean(axis=0) if channel is None else image[batch, channel]
    return np.asarray(plane, dtype=np.float64)


def _axes(ax, image_shape):
    if ax is None:
        h, w = image_shape
        scale = 5.0 / max(h, w)
        fig, ax = plt.subplots(figsize=(max(2.5, w * scale + 1), max(2.5, h * scale + 0.5)))
    return ax.figure, ax


def sampling_locations(image: Array, offset: Array, kernel_size: Optional[IntPair] = None,
                       stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, *,
                       positions: Optional[Sequence[Tuple[int, int]]] = None,
                       batch: int = 0, channel: Optional[int] = 0, group: int = 0,
                       ax: Any = None) -> Any:
    """Draw where :func:`~defconv_np.deform_conv2d` samples ``image`` for some
    output positions: the regular kernel taps (grey crosses) and the taps moved
    by ``offset`` (coloured dots, one colour per output position), joined by lines.

    Parameters
    ----------
    image : ndarray, (N, C, H, W)
        The convolution's input, float32 or float64, NumPy or CuPy.
    offset : ndarray, (N, 2*G*kh*kw, Ho, Wo)
        deform_conv2d's offsets (dy, dx pairs per kernel point), or
        active_conv2d's shared offsets (2*G*kh*kw,).
    kernel_size : int or (int, int), optional
        (kh, kw); by default a square kernel with ``kh*kw`` taps and G = 1.
    stride, padding, dilation : int or (int, int)
        As given to the op.
    positions : sequence of (ho, wo), optional
        Output positions to draw; by default up to 9 spread over the output.
    batch, channel, group : int
        The image, the channel shown (None: the mean over channels) and the
        offset group drawn.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn into (``ax``'s, or a new one).

    Raises
    ------
    TypeError
        A non-integer stride, padding, dilation or kernel size.
    ValueError
        ``image`` not 4-D, an offset whose channel count does not fit the
        kernel size, or a non-square tap count without ``kernel_size``.
    """
    plane = _image(image, batch, channel)
    offset = _host(offset).astype(np.float64)
    if offset.ndim == 1:  # active_conv2d's shared offsets
        offset = offset[None, :, None, None]
        batch_offset = 0
    elif offset.ndim == 4:
        batch_offset = batch
    else:
        raise ValueError(f"offset must be (N, 2*G*kh*kw, Ho, Wo) or (2*G*kh*kw,), "
                         f"got shape {offset.shape}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if kernel_size is None:
        taps = offset.shape[1] // 2
        kh = int(round(taps ** 0.5))
        if kh * kh != taps:
            raise ValueError(f"offset has {taps} taps, not a square kernel: pass kernel_size")
        kw = kh
    else:
        kh, kw = _pair(kernel_size, "kernel_size")
    k = kh * kw
    if offset.shape[1] % (2 * k) or not 0 <= group < offset.shape[1] // (2 * k):
        raise ValueError(f"offset channels ({offset.shape[1]}) do not hold offset group "
                         f"{group} of a {kh}x{kw} kernel")
    h, w = plane.shape
    ho_n = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo_n = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if positions is None:
        rows = np.unique(np.linspace(0, ho_n - 1, 3).round().astype(int))
        cols = np.unique(np.linspace(0, wo_n - 1, 3).round().astype(int))
        positions = [(int(r), int(c)) for r in rows for c in cols]
    fig, ax = _axes(ax, plane.shape)
    ax.imshow(plane, cmap="gray", interpolation="nearest")
    colours = plt.get_cmap("tab10")
    for n, (ho, wo) in enumerate(positions):
        oh = 0 if offset.shape[2] == 1 else ho
        ow = 0 if offset.shape[3] == 1 else wo
        i, j = np.divmod(np.arange(k), kw)
        base_y = ho * sh - ph + i * dh
        base_x = wo * sw - pw + j * dw
        channels = 2 * (group * k + np.arange(k))
        y = base_y + offset[batch_offset, channels, oh, ow]
        x = base_x + offset[batch_offset, channels + 1, oh, ow]
        colour = colours(n % 10)
        ax.scatter(base_x, base_y, marker="x", color="0.6", s=20, linewidths=1)
        for a, b, c, d in zip(base_x, base_y, x, y):
            ax.plot([a, c], [b, d], color=colour, linewidth=0.8, alpha=0.7)
        ax.scatter(x, y, color=colour, s=18, edgecolors="white", linewidths=0.5)
    ax.set_xlim(-0.5 - pw - 1, w - 0.5 + pw + 1)
    ax.set_ylim(h - 0.5 + ph + 1, -0.5 - ph - 1)
    ax.set_title(f"deformable sampling, {kh}x{kw} kernel, {len(positions)} output positions")
    return fig


def sampling_grid(image: Array, grid: Array, align_corners: bool = False, *,
                  batch: int = 0, channel: Optional[int] = 0, step: Union[int, None] = None,
                  ax: Any = None) -> Any:
    """Draw the positions of a :func:`~defconv_np.grid_sample` grid as a mesh
    over ``image``, in pixel coordinates.

    Parameters
    ----------
    image : ndarray, (N, C, H, W)
        grid_sample's input, float32 or float64, NumPy or CuPy.
    grid : ndarray, (N, Hg, Wg, 2)
        Normalised (x, y) positions, as from :func:`~defconv_np.affine_grid`.
    align_corners : bool
        As given to grid_sample (how -1 and 1 map to pixels).
    batch, channel : int
        The image and channel shown (channel None: the mean over channels).
    step : int, optional
        Draw every ``step``-th grid row and column (default: about 16 lines).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn into (``ax``'s, or a new one).

    Raises
    ------
    TypeError
        A ``step`` that is not an int.
    ValueError
        ``image`` not 4-D or ``grid`` not (N, Hg, Wg, 2).
    """
    plane = _image(image, batch, channel)
    grid = _host(grid).astype(np.float64)
    if grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid must be (N, Hg, Wg, 2), got shape {grid.shape}")
    h, w = plane.shape
    gx, gy = grid[batch, ..., 0], grid[batch, ..., 1]
    if align_corners:
        px, py = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
    else:
        px, py = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
    if step is None:
        step = max(1, max(grid.shape[1:3]) // 16)
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
        raise TypeError(f"step must be an int, got {step!r}")
    fig, ax = _axes(ax, plane.shape)
    ax.imshow(plane, cmap="gray", interpolation="nearest")
    for r in range(0, px.shape[0], step):
        ax.plot(px[r], py[r], color="tab:orange", linewidth=0.8)
    for c in range(0, px.shape[1], step):
        ax.plot(px[:, c], py[:, c], color="tab:orange", linewidth=0.8)
    ax.scatter(px[::step, ::step], py[::step, ::step], color="tab:red", s=6)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"grid_sample positions ({grid.shape[1]}x{grid.shape[2]} grid)")
    return fig
