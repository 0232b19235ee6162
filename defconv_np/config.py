"""Tunables, in one place so tests can patch them (tiny budgets force chunking).

Read at call time, never cached at import, so ``monkeypatch.setattr(config, ...)``
takes effect on the next call.
"""

#: Upper bound, in bytes, on the scratch buffers an im2col-style call holds at
#: once (the column buffer, and in a backward pass its gradient too). Work is
#: split over images, and over output rows of one image when a single image
#: does not fit, so peak extra memory stays bounded for any batch size. On CPU
#: the budget is shared by the worker lanes, and each lane's share is capped
#: by ``cpu_lane_column_bytes`` per buffer: with the defaults, up to 8 lanes
#: get their full share in a backward (two buffers), 16 in a forward, and more
#: lanes share 64 MiB. It was 8 MiB, which left 16 lanes 0.5 MiB each: at that
#: share deform_conv2d v2 forward+backward at N=8, C=O=64, 64x64 took 130-136
#: ms against 45-47 with 4 MiB (``budget_scan``, 2 lanes), its chunks one
#: output row and its GEMMs too small for BLAS to reach its rate.
column_budget_bytes = 64 * 2**20

#: At most this many bytes of that budget per CPU lane and column-sized
#: buffer: a forward holds the columns, a backward the columns and their
#: gradient (twice this per lane), so both run chunks of the same pixels. On
#: a 2-core Intel Xeon (2 MiB L2 per core), ``benchmarks/cpu_bench.py``'s
#: ``budget_scan`` (deform_conv2d v2 at the benchmark shape, per lane, both
#: buffers together) gave forward+backward 41.7-45.7 ms with 8 MiB a lane
#: against 43.7-46.9 with 4 in all five scans of 2026-12-03
#: (``cpu_run19.json`` to ``cpu_run23_malloc.json``), when a backward had
#: half a lane's bytes per buffer; 8 MiB for a forward's one buffer slowed
#: active_conv2d's forward (14.3 -> 15.8-17.6 ms, ``active_bench.py``), so the
#: cap is per buffer. The scans of 2026-12-02 (``cpu_run10.json``,
#: ``cpu_run11.json``) had 4 MiB a lane take 3.0-4.3 ms off 2. On a 2-core
#: AMD EPYC (1 MiB L2 per core) an earlier scan gave 14.8 / 54.4 with 2 MiB,
#: 15.1 / 55.4 with 4 MiB and 15.8 / 59.6 with 8 MiB.
cpu_lane_column_bytes = 4 * 2**20

#: Bytes of column scratch per tile of output rows in the CPU deformable
#: conv's fused tiles (``kernels/cpu/deform_tiles.py``, run on our own GEMM),
#: one buffer per lane (besides a tile's product in the forward, O values a
#: pixel): at least one output row. At the benchmark shape
#: (N=8, C=O=64, 64x64, 3x3, float32, 2 lanes, 2 MiB L2 per core) one row
#: holds 144 KiB; the backward ran fastest with tiles of one row (34.3 ms
#: against 35.3 with 2 or 4), the forward alike with 1-8 (12.4-12.5 ms).
cpu_deform_tile_bytes = 192 * 2**10
#: Bytes of the band (padded input rows) and result a CPU lane holds at once
#: in conv2d's implicit-GEMM path (stride 1, ``_cpu_conv``); in a backward,
#: of the band, the margined gradient rows and their pixels-first copy. An
#: image whose band does not fit is split by output rows. conv2d forward at the benchmark
#: shape (N=8, C=O=64, 64x64, 3x3, 2 lanes, Intel Xeon with 2 MiB L2 per
#: core) took 12.2 / 11.5 / 11.3 / 11.2 / 11.1 ms with 1 / 2 / 4 / 8 / 16 MiB:
#: fewer, longer GEMMs run faster, and 4 MiB holds one such image.
cpu_conv_band_bytes = 4 * 2**20
#: Narrowest group (input and output channels per group) conv2d runs as
#: implicit GEMMs on CPU: each BLAS call costs microseconds of set-up, and
#: kh*kw*groups of them per band cost more than the column copy they save
#: when groups are thin (depthwise convs). Thinner groups take the column path.
cpu_implicit_conv_min_channels = 16

#: The same bound for CuPy arrays. A GPU needs large chunks for cuBLAS to
#: reach its GEMM rate and to amortise launches; 256 MiB is under half of the
#: column buffer torchvision holds at (N=16, C=256, 64x64, 3x3) (604 MB).
cuda_column_budget_bytes = 256 * 2**20

#: The BLAS on which the CPU worker lanes run the convs' GEMMs (``_cpu_blas``:
#: conv2d's implicit GEMMs, and the column GEMMs of deform_conv2d,
#: active_conv2d and strided conv2d): ``"numba"`` our own GEMM (Numba
#: micro-kernels, ``kernels/cpu/gemm.py``; products it does not run, with the
#: second operand transposed, go to NumPy's BLAS), ``"mkl"`` Intel MKL,
#: sequential (the ``mkl`` wheel: ``pip install defconv_np[mkl]``),
#: ``"numpy"`` NumPy's own BLAS; ``"auto"`` takes MKL where installed, else
#: ours on CPUs with 512-bit vectors (AVX-512), else NumPy's, except that
#: deform_conv2d takes ours in fused tiles on such CPUs whether or not MKL is
#: installed (``"numba"`` does too; ``_cpu_deform``). It is read when
#: a CPU conv starts: another value, or ``"mkl"`` without a usable MKL, is a
#: ValueError there. conv2d and the column paths keep NumPy's BLAS,
#: multithreaded, in a call that runs on one thread (a single image, or
#: ``numba.set_num_threads(1)``); deform_conv2d's fused tiles keep the
#: column path for a single image on several lanes, and run on the one
#: lane there is otherwise. On a
#: 2-core AVX-512 Xeon at the benchmark shape (N=8, C=O=64, 64x64, 3x3,
#: float32; ``benchmarks/results/cpu_run36_malloc.json``), ours / MKL /
#: OpenBLAS: conv2d forward 9.9 / 9.9 / 11.5 ms, forward+backward 32.9 /
#: 33.1 / 40.5; deform_conv2d v2 forward 12.9 / 13.8 / 15.8, forward+backward
#: 49.1 / 54.7 / 58.9 (ours in fused tiles).
cpu_blas = "auto"

#: Output pixels handled per tile by the CPU volume (5-D) and bicubic
#: grid_sample kernels: the sampling weights of one tile are computed once and
#: reused for every channel, and must stay in L1.
cpu_tile_pixels = 256

#: The same for the 2-D bilinear/nearest kernels, which copy the rows a tile's
#: samples touch, channel by channel, into a padded scratch plane: large tiles
#: copy each input row about once. 4096 (a 64x64 grid) measured fastest at
#: (8, 64, 64, 64) with rotated affine grids on a 2-core machine.
cpu_grid_tile_pixels = 4096

#: Input planes of at most this many pixels are read by those kernels in bands,
#: through a scratch plane per work item; larger ones, which a rotated or
#: scattered grid would copy many times over, through one zero-padded copy of
#: the input, in tiles of ``cpu_tile_pixels``. Measured on a 2-core machine
#: (forward+backward, rotated and uniformly random grids): bands 1.8-1.9x
#: faster at 128x128 and 256x256, as fast or faster at 512x512, 1.6-2.6x
#: slower at 1024x1024.
cpu_grid_band_pixels = 512 * 512

#: The 2-D bilinear grid_sample backward, where a work item's grid pixels are
#: one tile, takes up to this many channels at a time (32, 16 or 8; float64
#: 16 only), side by side in scratch planes (input and input gradient) of at
#: most ``cpu_grid_group_bytes`` each, so that its loops over them vectorise;
#: with room for fewer than 8 (float64: 16), or under 8 channels to a work
#: item, it takes them one at a time. Grids of up to
#: ``cpu_grid_group_tile_pixels`` pixels are then one tile (in place of
#: ``cpu_grid_tile_pixels``): reloading a transposed band per tile cost more
#: than the groups saved. Each work item allocates its planes, and
#: planes much over 1 MiB came back from the C library as fresh pages on
#: every call (at (8, 64, 128, 128) float32, groups of 32: 21 ms, 14 with
#: glibc's trimming and mmap off). On the 2-core development machine, 2
#: threads, backward (input and grid) with rotated grids, one channel at a
#: time -> groups, alternating in one process: (8, 64, 64, 64) float32
#: 4.6-4.7 -> 3.0-3.1 ms (32), float64 5.3 -> 4.2 (16); (8, 64, 128, 128)
#: float32 24.7-24.9 -> 17.0-17.3 (16); (4, 64, 32, 32) float32 0.67 -> 0.41;
#: (4, 32, 128, 128) float64 6.5 -> 6.1 with groups of 8, but grid-only 2.6
#: -> 2.8: one at a time. 0: always one at a time.
cpu_grid_group_channels = 32
cpu_grid_group_bytes = 5 << 18  # 1.25 MiB
cpu_grid_group_tile_pixels = 128 * 128

#: Work items per Numba thread that the CPU grid_sample kernels aim for when
#: they split images into pixel or channel blocks (load balance against
#: repeated weight maths).
cpu_items_per_thread = 4

#: CUDA launch shape: threads per block for the one-dimensional kernels.
cuda_threads_per_block = 256

#: Channels one thread of the deformable CUDA kernels handles for one sample
#: (the sample's cell and weights are computed once per block of channels);
#: None: all channels of its offset group. Smaller blocks give more threads,
#: and the offset/mask gradient then adds the blocks' sums atomically (never
#: with ``deterministic=True``, which keeps one block per group). Measured on
#: an H200 (benchmarks/results/h200_2026-11-26/run2): blocks of 8 were no
#: faster than whole groups at the three benchmark shapes (4.45 vs 3.59 ms
#: forward at N=16, C=256, 64x64), whose kernels are bound by index arithmetic
#: and launch overhead rather than by too few threads.
cuda_channels_per_thread = None

#: Cap on blocks per launch; the kernels' int64 grid-stride loops cover the rest.
cuda_max_blocks = 65535 * 4


#: Testing hook: route NumPy arrays through the CUDA launchers and kernels.
#: Only meaningful under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``),
#: where the kernels run on the CPU; the simulator test suite sets it.
numpy_through_cuda_kernels = False

#: Print a line to stderr (kernel, dtypes, seconds) each time Numba really
#: compiles a defconv_np kernel; loads from Numba's disk cache print nothing.
#: ``python -m defconv_np`` turns it on; the library is silent by default.
verbose_compile = False
