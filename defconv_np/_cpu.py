"""CPU launchers: lay out the padded planes, pick the parallel work split, and
call the Numba kernels in ``kernels.cpu``.

Two ways of using the cores, one per kind of op:

* The im2col + GEMM convs run chunks on ``lanes`` worker threads (as many per
  call as the calling thread's Numba thread count), each calling serial,
  GIL-free kernels and single-threaded BLAS (``run_chunks``). Parallel Numba
  regions alternating with multi-threaded BLAS calls oversubscribe the cores:
  OpenBLAS's workers spin for a while after each call, and on a 2-core machine
  that made a conv up to ten times slower. The lanes are one process-wide pool
  of ``NUMBA_NUM_THREADS`` threads (the most any Python thread may ask Numba
  for), never resized or shut down, so Python threads with different Numba
  thread counts share it safely.
* grid_sample (2-D, 3-D, bicubic) and deformable attention have no GEMM:
  their serial, GIL-free kernels take contiguous shares of their work items
  on the same lanes (``run_items``, the calling thread taking the first).
  No kernel opens a parallel Numba region, so their speed does not depend on
  Numba's threading layer (as ``prange`` kernels under the fork-safe
  ``workqueue`` layer, the grid_sample forward at (8, 64, 64, 64) took
  0.78-1.31 ms on 2 cores, against 0.68-0.76 on the lanes), and calls from
  several Python threads need no lock (two threads in ``workqueue``
  parallel regions at once abort the process).

Fork safety (PyTorch DataLoader workers, multiprocessing's 'fork'): unless the
user chose one (``NUMBA_THREADING_LAYER`` or ``numba.config.THREADING_LAYER``),
Numba is asked for a fork-safe threading layer (``forksafe``: TBB if installed,
else ``workqueue``; GNU OpenMP, Numba's usual pick on Linux, kills a child
forked after it started). Our kernels open no parallel region any more, but
a user's own parallel Numba code in the same process does. This works only if
Numba has not started its layer (a parallel function,
``numba.set_num_threads`` or ``get_num_threads`` does) before this module is
imported, at the first CPU call. In a forked child, the lane pool and the
BLAS limit are reset (``_after_fork_in_child``): their threads and owners did
not survive the fork.
"""

import concurrent.futures
import contextlib
import functools
import os
import sys
import threading

import numba
import numpy as np

from . import _columns, _cpu_blas, config
from ._planes import SAMPLING_PAD, cropped, deform_sampling, grid_geometry, zero_padded
from .kernels import sampling
from .kernels.cpu import deform as deform_kernels
from .kernels.cpu import im2col as im2col_kernels
from .kernels.cpu import layout as layout_kernels


def _prefer_fork_safe_threading_layer():
    """Ask Numba for a fork-safe threading layer, unless the user named one.
    Numba reads the setting when its first parallel region (or thread-count
    query) starts the layer; after that it changes nothing."""
    if "NUMBA_THREADING_LAYER" not in os.environ and \
            str(numba.config.THREADING_LAYER).lower() == "default":
        numba.config.THREADING_LAYER = "forksafe"


_prefer_fork_safe_threading_layer()


def column_budget(buffers=1):
    """Bytes of column scratch a conv holding ``buffers`` column-sized
    buffers per lane may hold, over all its lanes: the global budget, and at
    most ``config.cpu_lane_column_bytes`` per buffer and lane."""
    return min(config.column_budget_bytes,
               column_lanes() * max(1, buffers) * config.cpu_lane_column_bytes)


def column_lanes():
    """Worker lanes of a conv's chunks or a sampler's shares: Numba's thread
    count (the calling Python thread's own, as set by
    ``numba.set_num_threads``)."""
    return numba.get_num_threads()


def _clear_openblas_controlling_thread():
    """Let the calling thread set a process-wide OpenBLAS limit.

    Recent threadpoolctl (3.8 here) lets only one Python thread, the first to set
    an OpenBLAS (pthreads) limit, change it until that thread leaves a ``with``
    block, and silently ignores every other thread. Our limit is not set in a
    ``with`` block, and is set and restored by whichever thread a conv runs on:
    the first conv's thread kept control for good, and convs called from any
    other thread left BLAS on all its threads. So control is cleared before and
    after each change (under ``_SingleThreadedBlas``'s lock), taking it even
    from a user's own ``threadpool_limits`` block in another thread: the limit
    is process-wide, and the conv running now needs it."""
    import threadpoolctl

    controller = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller, "clear_controlling_thread", None)
    if clear is not None:  # older threadpoolctl: no such rule
        clear(force=True)


class _SingleThreadedBlas:
    """Process-wide 'BLAS on one thread' while any conv's lanes run (counted,
    so that overlapping calls from several Python threads restore it once).

    The process-wide limit covers BLAS libraries with one shared thread pool
    (OpenBLAS on pthreads); libraries with per-thread limits (OpenBLAS on
    OpenMP) are limited in each lane thread itself (``limit_this_lane``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._limiter = None
        self._controller = None
        self._modules_seen = -1

    def controller(self):
        """threadpoolctl's view of the loaded BLAS libraries, rebuilt when
        Python modules were imported since (an import such as ``scipy.linalg``
        loads a second OpenBLAS, which a stale view would leave on all its
        threads inside the lanes). Scanning the libraries costs milliseconds,
        counting modules nothing."""
        modules = len(sys.modules)
        if self._controller is None or modules != self._modules_seen:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
            self._modules_seen = modules
        return self._controller

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._users == 0:
                _clear_openblas_controlling_thread()
                self._limiter = self.controller().limit(limits=1, user_api="blas")
                _clear_openblas_controlling_thread()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._restore()

    def _restore(self):
        _clear_openblas_controlling_thread()
        self._limiter.restore_original_limits()
        _clear_openblas_controlling_thread()
        self._limiter = None

    def limit_this_lane(self):
        """One BLAS thread in the calling (lane) thread for the libraries whose
        limits are per thread, where the caller's limit does not reach."""
        for lib in self.controller().lib_controllers:
            if lib.user_api == "blas" and getattr(lib, "threading_layer", None) == "openmp":
                lib.set_num_threads(1)

    def before_fork(self):
        self._lock.acquire()  # no limit is half set or half restored at the fork

    def after_fork_in_parent(self):
        self._lock.release()

    def after_fork_in_child(self):
        """The calls that held the limit were in threads the child does not
        have: give the child's BLAS its threads back."""
        self._lock = threading.Lock()
        if self._users:
            self._users = 0
            self._restore()


single_threaded_blas = _SingleThreadedBlas()


class _LanePool:
    """The lane threads, kept across calls: starting threads costs
    milliseconds, and so does OpenBLAS's set-up the first time a new thread
    calls it. The convs' chunk runs (``run_chunks``) and the samplers'
    shares (``run_items``, whose calling thread takes a share itself) both
    run here.

    One pool of ``NUMBA_NUM_THREADS`` threads (the most ``numba.set_num_threads``
    allows any Python thread) serves every call: a call uses at most its
    caller's thread count of lanes, so a thread with fewer Numba threads uses
    fewer, and we never resize or shut the pool down under another call
    (``concurrent.futures`` refuses new work at interpreter exit: the convs
    then fail, the samplers run on the calling thread). Lane tasks never
    submit lane tasks, and ``run_items`` takes back shares no lane started,
    so sharing cannot deadlock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pool = None

    def get(self):
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    numba.config.NUMBA_NUM_THREADS, thread_name_prefix="defconv_np-lane",
                    initializer=single_threaded_blas.limit_this_lane)
            return self._pool

    def after_fork_in_child(self):
        """The pool's threads did not survive the fork: drop it unjoined."""
        self._lock = threading.Lock()
        self._pool = None


_lane_pool = _LanePool()


def _after_fork_in_child():
    _lane_pool.after_fork_in_child()
    single_threaded_blas.after_fork_in_child()


os.register_at_fork(before=single_threaded_blas.before_fork,
                    after_in_parent=single_threaded_blas.after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _run_on_lanes(tasks):
    """Run the callables on the lane threads; wait for all of them before
    raising the first error, so none is still running when the caller unwinds
    (even if a submission fails part-way)."""
    pool = _lane_pool.get()
    futures = []
    try:
        for task in tasks:
            futures.append(pool.submit(task))
    finally:
        concurrent.futures.wait(futures)
    for future in futures:
        future.result()


def run_chunks(chunks, work, new_state, begin_run=None, end_run=None):
    """Run ``work(chunk, state)`` over the chunks on ``column_lanes()`` threads.

    Chunks of one image (row chunks) form a run and stay on one lane, because
    their input gradients overlap; runs are dealt to lanes round-robin, each
    lane with its own state (scratch buffers, partial sums), returned in lane
    order. ``begin_run(chunk)`` and ``end_run(chunk)``, if given, are called on
    the lane around each run with its first chunk (which names the run's
    images ``n0:n1``). With a single lane the chunks run here, and BLAS keeps
    all its threads.
    """
    runs = {}
    for chunk in chunks:
        runs.setdefault(chunk.n0, []).append(chunk)
    runs = list(runs.values())

    def run_all(my_runs, state):
        for run in my_runs:
            if begin_run is not None:
                begin_run(run[0])
            for chunk in run:
                work(chunk, state)
            if end_run is not None:
                end_run(run[0])

    lanes = min(column_lanes(), len(runs))
    if lanes <= 1:
        state = new_state()
        run_all(runs, state)
        return [state]
    states = [new_state() for _ in range(lanes)]
    with single_threaded_blas():
        _run_on_lanes([functools.partial(_as_lane, run_all, runs[i::lanes], states[i])
                       for i in range(lanes)])
    return states


def _as_lane(run_all, runs, state):
    """``run_all(runs, state)`` with this thread marked as a worker lane, whose
    GEMMs go to ``config.cpu_blas``'s choice (``_cpu_blas.lane_gemm``)."""
    _cpu_blas.in_lane.active = True
    try:
        run_all(runs, state)
    finally:
        _cpu_blas.in_lane.active = False


class LaneImages:
    """Zero-padded channels-last copies of the images each lane works on, made
    by that lane when it starts a run of chunks (``begin``), and, in a backward
    pass, the lane's padded input gradient of those images, written back into
    the (N, C, H, W) gradient when the run ends (``end``).

    A lane copies an image just before it samples it, so the copy is still in
    the core's cache when the sampling reads it (measured 0.86 against
    1.09 ms per 64x64x64 deformable im2col); no copy of the whole batch is
    held, and the layout copies run inside the lanes' parallel work."""

    def __init__(self, input, top, left, height_p, row_stride):
        self.source = kernel_operand(input)
        self.input_shape = input.shape
        self.place = (top, left, row_stride)
        self.plane = height_p * row_stride
        self.grad_input = None
        self._lanes = threading.local()

    def start_backward(self, want_input):
        """Gradients wanted: each run's is written into ``grad_input``."""
        self.grad_input = np.empty(self.input_shape, self.source.dtype) if want_input else None

    def begin(self, chunk):
        lane = self._lanes
        nb = chunk.n1 - chunk.n0
        if getattr(lane, "buffers", None) is None or lane.buffers.shape[1] < nb:
            # the run's copy, and its input gradient in a backward pass
            lane.buffers = np.empty((1 + (self.grad_input is not None), nb, self.plane,
                                     self.input_shape[1]), self.source.dtype)
        lane.images = lane.buffers[0, :nb]
        layout_kernels.to_channels_last_padded(self.source[chunk.n0:chunk.n1], 0, nb,
                                               *self.place, lane.images)
        if self.grad_input is not None:
            lane.grads = lane.buffers[1, :nb]
            lane.grads[...] = 0

    def end(self, chunk):
        if self.grad_input is not None:
            lane = self._lanes
            layout_kernels.from_channels_last_padded(
                lane.grads, 0, chunk.n1 - chunk.n0, *self.place,
                self.grad_input[chunk.n0:chunk.n1])

    def images(self):
        """The calling lane's copies of its current run's images."""
        return self._lanes.images

    def grads(self):
        """The calling lane's padded input gradient of those images."""
        return self._lanes.grads


def kernel_operand(array):
    """``array`` as the kernels take it: C-contiguous and writeable. Numba
    compiles separate code for read-only arrays, so a read-only input would
    otherwise cost a second compilation of every kernel."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def run_items(count, kernel):
    """``kernel(lo, hi)`` over contiguous, equal shares of work items ``0 ..
    count - 1``, one share per lane (``column_lanes()``): the first on the
    calling thread, the others on the lane pool. For serial, GIL-free
    kernels: unlike a parallel Numba region this needs no threading layer,
    so it runs alike whichever layer Numba picked (under its fork-safe
    ``workqueue``, the grid_sample forward at (8, 64, 64, 64) took 0.78-1.31
    ms on two cores, against 1.23 on one; on the lanes 0.68-0.76, and 0.57
    as a parallel kernel under GNU OpenMP, which is not fork-safe), and calls
    from several Python threads share the lanes without a lock.

    After its own share the calling thread takes back every share no lane has
    started and runs it itself: lanes busy with another thread's conv (a
    whole chunk run each) would otherwise hold it up (a grid_sample of 0.94
    ms took 15-23 ms beside a deform_conv2d, 1.1-2.7 this way), and a call
    from inside a lane task cannot wait on itself. Where the pool takes no
    work (at interpreter shutdown, after ``concurrent.futures``' exit hook),
    every share runs here. An error surfaces after every started share has
    finished; shares not started by then are dropped."""
    lanes = min(column_lanes(), count)
    if lanes <= 1:
        kernel(0, count)
        return
    bounds = [count * i // lanes for i in range(lanes + 1)]
    shares = [functools.partial(kernel, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    pool = _lane_pool.get()
    queued = []  # (share, its future, or None where the pool refused it)
    try:
        for share in shares[1:]:
            try:
                queued.append((share, pool.submit(share)))
            except RuntimeError:  # shutting down: the pool takes no new work
                queued.append((share, None))
        shares[0]()
        for share, future in queued:
            if future is None or future.cancel():
                share()
    finally:
        started = [future for _, future in queued
                   if future is not None and not future.cancel()]
        concurrent.futures.wait(started)
    for future in started:
        future.result()


def work_blocks(work_items, limit):
    """Blocks to split each of ``work_items`` into (at most ``limit``), so that
    every Numba thread gets ``config.cpu_items_per_thread`` items."""
    target = numba.get_num_threads() * config.cpu_items_per_thread
    return max(1, min(limit, -(-target // max(1, work_items))))


class _LaneColumns:
    """What the CPU column providers share: pixels-first columns whose GEMM
    results are stored transposed, and images (and input gradients) handled
    per run by ``LaneImages`` (``self.lanes``)."""

    layout = _columns.PixelsFirst
    store_transposed = staticmethod(layout_kernels.store_transposed)
    matmul_for = staticmethod(_cpu_blas.lane_matmul)

    def run_chunks(self, chunks, work, new_state):
        return run_chunks(chunks, work, new_state, self.lanes.begin, self.lanes.end)

    def input_grad(self):
        return self.lanes.grad_input


class DenseColumns(_LaneColumns, _columns.SeparateBackward):
    """im2col / col2im of a plain strided, dilated, padded conv2d, pixels-first
    from channels-last copies of the input padded by the conv's own padding
    (``LaneImages``): every tap of every output pixel is in bounds, and each
    is a contiguous channel vector."""

    def __init__(self, input, kernel, stride, padding, dilation, out_w, weight_groups):
        _, _, h, w = input.shape
        self.geometry = (kernel, stride, dilation, weight_groups)
        self.out_w = out_w
        self.padded_hw = (h + 2 * padding[0], w + 2 * padding[1])
        self.lanes = LaneImages(input, *padding, *self.padded_hw)

    def _shaped(self, images):
        return images.reshape(images.shape[0], *self.padded_hw, images.shape[2])

    def fill(self, chunk, cols):
        im2col_kernels.im2col_channels_last(self._shaped(self.lanes.images()), 0, chunk.r0,
                                            self.out_w, *self.geometry, cols)

    def start_backward(self, want_input):
        self.lanes.start_backward(want_input)

    def scatter_input_grad(self, chunk, grad_cols):
        im2col_kernels.col2im_channels_last(grad_cols, 0, chunk.r0, self.out_w, *self.geometry,
                                            self._shaped(self.lanes.grads()))


class DeformColumns(_LaneColumns):
    """Deformable im2col and its adjoints (input, offset, mask), channels-last
    (the images through ``LaneImages``, with the border of ``kernels.sampling``)."""

    def __init__(self, input, offset, mask, kernel, stride, padding, dilation, weight_groups,
                 deterministic=False):
        # the CPU kernels own whole gradient values: always deterministic
        _, _, h, w = input.shape
        self.lanes = LaneImages(input, sampling.PAD_BEFORE, sampling.PAD_BEFORE,
                                sampling.padded_height(h), sampling.padded_width(w))
        self.sampling = deform_sampling(np, input, offset, mask, kernel, stride, padding,
                                        dilation, kernel_operand)
        self.weight_groups = weight_groups

    def common(self, chunk):
        """The sampling arguments the deformable kernels take for ``chunk``."""
        s = self.sampling
        return (s.height, s.width, s.row_stride, s.offset, s.mask, s.use_mask, chunk.n0,
                chunk.r0, s.y_base, s.x_base, self.weight_groups)

    def fused_tiles(self, dtype, chunks):
        """A ``_cpu_deform.DeformTiles`` for this call where our own GEMM may
        run inside the kernels (``_cpu_blas.fuses``) and the chunks spread
        over the lanes, or there is one lane (``numba.set_num_threads(1)``,
        one core); else None, for the column path (whose single-lane GEMMs
        keep NumPy's BLAS multithreaded). An empty batch (no chunks) takes
        the column path, which has nothing to run."""
        from ._cpu_deform import DeformTiles

        if not chunks or not _cpu_blas.fuses():
            return None
        if column_lanes() > 1 and len({chunk.n0 for chunk in chunks}) < 2:
            return None
        return DeformTiles(self, dtype)

    def fill(self, chunk, cols):
        deform_kernels.deform_im2col(self.lanes.images(), *self.common(chunk), cols)

    def start_backward(self, want_input, grad_offset, grad_mask):
        """Where the backward writes: the input gradient (if ``want_input``,
        through the lanes' padded channels-last buffers) and the given offset
        and mask gradients (or None)."""
        self.lanes.start_backward(want_input)
        self.grad_offset, self.grad_mask = grad_offset, grad_mask

    def backward_chunk(self, chunk, cols, grad_cols):
        """Rebuild the columns into ``cols`` (if given; for the weight
        gradient) with the forward kernel, then turn ``grad_cols`` (if given)
        into input, offset and mask gradients in one pass over the samples (a
        kernel fusing both measured slower)."""
        if cols is not None:
            self.fill(chunk, cols)
        if grad_cols is None:
            return
        deform_kernels.deform_backward(grad_cols, self.lanes.images(), *self.common(chunk),
                                       *self.gradient_targets(grad_cols.dtype))

    def gradient_targets(self, dtype):
        """``(want_input, want_offset, want_mask, grad_input, grad_offset,
        grad_mask)`` as the backward kernels take them, for the calling lane
        (its padded input gradient) as ``start_backward`` set them up; a
        gradient not wanted is a dummy of ``dtype`` and the right rank."""
        want_input = self.lanes.grad_input is not None
        want_offset = self.grad_offset is not None
        want_mask = self.grad_mask is not None
        dummy4 = np.zeros((1, 1, 1, 1), dtype)
        return (want_input, want_offset, want_mask,
                self.lanes.grads() if want_input else dummy4[0],
                self.grad_offset if want_offset else dummy4,
                self.grad_mask if want_mask else dummy4)


from .kernels.cpu import grid_sample as grid_sample_kernels  # noqa: E402


class GridSampler:
    """grid_sample and its adjoints (input, grid) for one (input, grid) pair."""

    def __init__(self, input, grid, nearest, padding_mode, align_corners, deterministic=False):
        # the CPU kernels own whole gradient planes: always deterministic
        n, c, h, w = input.shape
        # Small planes are read in bands through a scratch plane per work item
        # (cache-resident, and no padded copy); a large one would be copied
        # many times over by a rotated or scattered grid, so it is read from
        # one zero-padded copy of the input.
        self.padded = h * w > config.cpu_grid_band_pixels
        self.input_shape = input.shape
        self.input = (zero_padded(np, input, *SAMPLING_PAD) if self.padded
                      else kernel_operand(input))
        self.tile = config.cpu_tile_pixels if self.padded else config.cpu_grid_tile_pixels
        self.grid = kernel_operand(grid).reshape(n, -1, 2)
        # sample positions are formed in the input dtype, as PyTorch forms them
        self.geometry = grid_geometry(input, align_corners)
        self.modes = (nearest, padding_mode, align_corners)

    def sample(self, out):
        """Write the samples into ``out`` (N, C, Hg, Wg), C-contiguous."""
        n, npix = self.grid.shape[:2]
        blocks = work_blocks(n, npix)
        out3 = out.reshape(n, out.shape[1], -1)
        run_items(n * blocks, lambda lo, hi: grid_sample_kernels.grid_sample(
            self.input, self.padded, *self.geometry, self.grid, *self.modes, blocks, self.tile,
            out3, lo, hi))

    def _channel_group(self):
        """Channels the bilinear backward takes at a time: the most of 32, 16
        or 8 (float64: 16) whose scratch planes (input, input gradient) fit
        ``config.cpu_grid_group_bytes`` each, capped by
        ``config.cpu_grid_group_channels``; 0 for one at a time. Whole
        passes of the vector loops (groups of 29 ran slower than of 16), at
        most 128 bytes of each position (float64 groups of 32 ran slower than
        of 16; of 8, no faster than one at a time)."""
        pad = sampling.PAD_BEFORE + sampling.PAD_AFTER
        itemsize = self.input.dtype.itemsize
        plane_bytes = (self.input_shape[2] + pad) * (self.input_shape[3] + pad) * itemsize
        room = config.cpu_grid_group_bytes // plane_bytes
        sizes = (32, 16, 8) if itemsize == 4 else (16,)
        fitting = max((g for g in sizes if g <= room), default=0)
        group = min(config.cpu_grid_group_channels, fitting)
        return group if group >= grid_sample_kernels.MIN_GROUP else 0

    def backward(self, grad_output, grad_input, grad_grid):
        """Write the input and/or grid gradients into the arrays given (either may be None)."""
        n, c = self.input_shape[:2]
        npix = self.grid.shape[1]
        want_input, want_grid = grad_input is not None, grad_grid is not None
        if want_input:
            # A work item owns whole channel planes: split channels, not pixels.
            blocks_c, blocks_p = work_blocks(n, c), 1
            if self.padded:
                target = np.zeros_like(self.input)
            elif grad_input.flags.c_contiguous and grad_input.flags.writeable:
                target = grad_input  # overwritten in place
            else:
                target = np.empty_like(self.input)
        else:
            blocks_c, blocks_p = 1, work_blocks(n, npix)
            target = np.zeros((1, 1, 1, 1), self.input.dtype)
        partials = np.zeros((n, blocks_c, npix, 2) if want_grid else (1, 1, 1, 2), np.float64)
        group = self._channel_group()
        tile = self.tile
        nearest = self.modes[0]
        if (group and -(-c // blocks_c) >= grid_sample_kernels.MIN_GROUP
                and not (self.padded or nearest) and npix <= config.cpu_grid_group_tile_pixels):
            tile = max(tile, npix)  # the kernel groups channels where a block is one tile
        go = kernel_operand(grad_output).reshape(n, c, npix)
        run_items(n * blocks_c * blocks_p, lambda lo, hi: grid_sample_kernels.grid_sample_backward(
            go, self.input, self.padded, *self.geometry, self.grid, *self.modes, want_input,
            want_grid, blocks_c, blocks_p, tile, group, target, partials, lo, hi))
        if want_input and self.padded:
            grad_input[...] = cropped(np, target, self.input_shape, *SAMPLING_PAD)
        elif want_input and target is not grad_input:
            grad_input[...] = target
        if want_grid:
            grad_grid[...] = partials.sum(axis=1).reshape(grad_grid.shape)


from ._cpu_active import ActiveColumns  # noqa: E402,F401  (imports this module's run_chunks)
from ._cpu_volume import BicubicSampler, VolumeSampler  # noqa: E402,F401  (imports this module)
from ._cpu_conv import implicit_conv2d_backward, implicit_conv2d_forward  # noqa: E402,F401
