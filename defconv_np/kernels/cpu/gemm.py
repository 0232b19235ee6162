"""A GEMM of our own for the CPU convs' lanes: register-tiled FMA micro-kernels
emitted as vector IR (Numba intrinsics), driven by cache blocking in Numba.

``gemm_taps`` computes ``C (+)= sum over taps t of A_t @ B_t`` for a
row-major ``C`` and ``B_t`` whose rows are contiguous (unit stride along
``n``), each ``B_t`` a window of one buffer at its own shift; ``A_t`` may have
any strides, so that a transposed operand is read in place. One tap is a
plain GEMM; the implicit-GEMM conv's kh*kw taps of a band are one call, their
products summed in registers. Operands are passed as byte addresses with
strides in elements, as a CBLAS takes them, so that windows into a band need
no array objects.

The micro-kernel holds an ``MR x TILE_N`` block of ``C`` in vector registers
(with AVX-512, 6 rows x 4 vectors: 24 accumulators, 4 vectors of ``B`` and
one broadcast of ``A`` in its 32 registers; with 256-bit vectors 6 x 2 in
16), and per step of ``k`` loads the vectors of one row of ``B``, broadcasts
six values of ``A`` and issues the FMAs. ``B``'s block of ``KC`` rows stays
in L1 across the row tiles of ``A``, and ``C``'s block of ``MB`` rows in L2
across the blocks of ``k``. Operands are read in place, but for ``B``'s
blocks where its rows lie ``PACK_STRIDE`` or more elements apart (the
channels-first columns of active_conv2d): those are copied to adjacent rows
first (active_conv2d forward at the benchmark shape 14.5 -> 13.5 ms). The last tile of a row of
``C`` masks its loads and stores past ``n``; the last tile of a column
computes its missing rows on row 0's values and stores none of them.

Each element of ``C`` is a sum of products, each fused into one rounding
(FMA), over taps and then ``k`` in order; within a block of ``KC`` the sum
runs in a register, and across blocks through ``C`` itself. The order
depends only on the sizes, never on threads or timing, so results are
reproducible; they differ from another BLAS's in the last bits, as BLAS
libraries differ from each other. At the convs' shapes on one core of a
2-core AVX-512 Xeon it ran 155-202 GFLOP/s in float32 (200-202 in the
deformable forward's product) against 141-157 for NumPy's OpenBLAS and
182-195 for MKL (``benchmarks/gemm_choice.py``).

The micro-kernel's IR is compiled into ``gemm_taps``, and Numba's cache checks
only this file: it is all here.
"""

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

#: The features Numba compiles for: its ``NUMBA_CPU_FEATURES`` where set
#: (a portable cache), else the host's.
_FEATURES = (config.CPU_FEATURES if config.CPU_FEATURES is not None
             else llvm.get_host_cpu_features().flatten())
#: Bytes of one vector register: 64 with AVX-512, 32 otherwise.
VECTOR_BYTES = 64 if "+avx512f" in _FEATURES.split(",") else 32
#: Vectors per row of the register tile (what the registers hold), and rows.
NV, MR = (4 if VECTOR_BYTES == 64 else 2), 6
#: Rows of ``A`` and ``C`` per cache block (``C``'s block stays in L2), and
#: steps of ``k`` per block (``B``'s block of KC x TILE_N stays in L1).
MB, KC = 192, 128
#: Elements between B's rows from which ``gemm_taps`` packs B's blocks first.
PACK_STRIDE = 1024


def tile_n(itemsize):
    """Columns of ``C`` per register tile for elements of ``itemsize`` bytes."""
    return NV * VECTOR_BYTES // itemsize


def _vectors(context, like_type):
    """(scalar LLVM type, its bytes, lanes, vector type) for values of the
    Numba type ``like_type`` in vectors of ``VECTOR_BYTES``."""
    scalar = context.get_value_type(like_type)
    size = context.get_abi_sizeof(scalar)
    lanes = VECTOR_BYTES // size
    return scalar, size, lanes, ir.VectorType(scalar, lanes)


def _vector_at(builder, vec, pointer, index):
    """A ``vec`` pointer to element ``index`` of the scalar ``pointer``."""
    return builder.bitcast(builder.gep(pointer, [index]), vec.as_pointer())


def _make_tile(edge):
    @intrinsic
    def tile(typingctx, like, rows, cols, a, a_rs, a_ks, a_ts, b, b_ks, shifts, taps, c, ldc, k,
             accumulate):
        """``C[i, j] (+)= sum over taps t and p < k of A_t[i, p] * B_t[p, j]``
        for ``i < rows`` (at most MR) and ``j < cols`` (at most TILE_N; all of
        them unless ``edge``, which masks the vectors past ``cols``), where
        ``A_t[i, p]`` is at ``a + (t*a_ts + i*a_rs + p*a_ks)*size``,
        ``B_t[p, j]`` at ``b + (shifts[t] + p*b_ks + j)*size`` and ``C[i,
        j]`` at ``c + (i*ldc + j)*size``: byte addresses (``shifts`` that of
        ``taps`` 64-bit integers), element strides, 64-bit integers, in the
        dtype of the scalar ``like``. ``C`` is read first when ``accumulate``
        is nonzero, else taken as zero. The rows past ``rows`` are computed
        on row 0's values and never stored."""
        sig = types.none(like, rows, cols, a, a_rs, a_ks, a_ts, b, b_ks, shifts, taps, c, ldc, k,
                         accumulate)

        def codegen(context, builder, signature, args):
            (_, rows_v, cols_v, a_v, a_rs_v, a_ks_v, a_ts_v, b_v, b_ks_v, shifts_v, taps_v, c_v,
             ldc_v, k_v, acc_v) = args
            scalar, size, lanes, vec = _vectors(context, signature.args[0])
            i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
            zero = ir.Constant(vec, None)
            a_p, b_p, c_p = (builder.inttoptr(v, scalar.as_pointer()) for v in (a_v, b_v, c_v))
            shifts_p = builder.inttoptr(shifts_v, i64.as_pointer())
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec] * 3),
                f"llvm.fma.v{lanes}f{8 * size}")
            masks = []
            if edge:
                mask_t = ir.VectorType(i1, lanes)
                masked_load = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32, mask_t, vec]),
                    f"llvm.masked.load.v{lanes}f{8 * size}.p0")
                masked_store = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mask_t]),
                    f"llvm.masked.store.v{lanes}f{8 * size}.p0")
                wide = ir.VectorType(i64, lanes)
                first = builder.insert_element(ir.Constant(wide, ir.Undefined), cols_v,
                                               ir.Constant(i32, 0))
                limit = builder.shuffle_vector(first, ir.Constant(wide, ir.Undefined),
                                               ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
                masks = [builder.icmp_signed("<", ir.Constant(wide, [v * lanes + j
                                                                     for j in range(lanes)]),
                                             limit) for v in range(NV)]
            align = ir.Constant(i32, size)

            def address(pointer, index):
                return _vector_at(builder, vec, pointer, index)

            def load(pointer, index, v):
                if edge:
                    return builder.call(masked_load, [address(pointer, index), align, masks[v],
                                                      zero])
                return builder.load(address(pointer, index), align=size)

            def store(value, pointer, index, v):
                if edge:
                    builder.call(masked_store, [value, address(pointer, index), align, masks[v]])
                else:
                    builder.store(value, address(pointer, index), align=size)

            def c_index(i, v):
                return builder.add(builder.mul(ir.Constant(i64, i), ldc_v),
                                   ir.Constant(i64, v * lanes))

            def row_ok(i):
                return builder.icmp_signed("<", ir.Constant(i64, i), rows_v)

            accs = [[cgutils.alloca_once(builder, vec) for _ in range(NV)] for _ in range(MR)]
            for row in accs:
                for acc in row:
                    builder.store(zero, acc)
            keep = builder.icmp_signed("!=", acc_v, ir.Constant(acc_v.type, 0))
            with builder.if_then(keep):
                for i in range(MR):
                    with builder.if_then(row_ok(i)):
                        for v in range(NV):
                            builder.store(load(c_p, c_index(i, v), v), accs[i][v])
            # rows past ``rows`` read row 0 (a valid address), and are dropped
            a_rows = [builder.select(row_ok(i), builder.mul(ir.Constant(i64, i), a_rs_v),
                                     ir.Constant(i64, 0)) for i in range(MR)]
            with cgutils.for_range(builder, taps_v) as tap:
                b_tap = builder.load(builder.gep(shifts_p, [tap.index]))
                a_tap = builder.mul(tap.index, a_ts_v)
                with cgutils.for_range(builder, k_v) as step:
                    b_row = builder.add(b_tap, builder.mul(step.index, b_ks_v))
                    bs = [load(b_p, builder.add(b_row, ir.Constant(i64, v * lanes)), v)
                          for v in range(NV)]
                    a_step = builder.add(a_tap, builder.mul(step.index, a_ks_v))
                    for i in range(MR):
                        value = builder.load(builder.gep(a_p, [builder.add(a_step, a_rows[i])]))
                        one = builder.insert_element(ir.Constant(vec, ir.Undefined), value,
                                                     ir.Constant(i32, 0))
                        splat = builder.shuffle_vector(
                            one, ir.Constant(vec, ir.Undefined),
                            ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
                        for v in range(NV):
                            total = builder.call(fma, [splat, bs[v], builder.load(accs[i][v])])
                            builder.store(total, accs[i][v])
            for i in range(MR):
                with builder.if_then(row_ok(i)):
                    for v in range(NV):
                        store(builder.load(accs[i][v]), c_p, c_index(i, v), v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_full_tile, _edge_tile = _make_tile(False), _make_tile(True)


@intrinsic
def _size_of(typingctx, like):
    """Bytes of one value of ``like``'s type, as a 64-bit constant."""
    def codegen(context, builder, signature, args):
        size = context.get_abi_sizeof(context.get_value_type(signature.args[0]))
        return ir.Constant(ir.IntType(64), size)

    return types.int64(like), codegen


@intrinsic
def _pack(typingctx, like, src, stride, rows, dst):
    """``dst[r, :TILE_N] = src[r, :TILE_N]`` for ``r < rows``: ``src`` rows
    ``stride`` elements apart, ``dst`` rows adjacent (byte addresses, in the
    dtype of ``like``)."""
    sig = types.none(like, src, stride, rows, dst)

    def codegen(context, builder, signature, args):
        _, src_v, stride_v, rows_v, dst_v = args
        scalar, size, lanes, vec = _vectors(context, signature.args[0])
        i64 = ir.IntType(64)
        src_p, dst_p = (builder.inttoptr(v, scalar.as_pointer()) for v in (src_v, dst_v))
        with cgutils.for_range(builder, rows_v) as row:
            s_row = builder.mul(row.index, stride_v)
            d_row = builder.mul(row.index, ir.Constant(i64, NV * lanes))
            for v in range(NV):
                shift = ir.Constant(i64, v * lanes)
                value = builder.load(_vector_at(builder, vec, src_p, builder.add(s_row, shift)),
                                     align=size)
                builder.store(value, _vector_at(builder, vec, dst_p, builder.add(d_row, shift)),
                              align=size)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def gemm_taps(like, m, n, k, a, a_rs, a_ks, a_ts, b, b_ks, shifts, c, ldc, accumulate):
    """``C (+)= sum over taps t of A_t @ B_t``, ``C`` (m, n), each ``A_t`` (m,
    k) and ``B_t`` (k, n), in the layout ``_full_tile`` describes, one tap per
    entry of ``shifts`` (a contiguous int64 array of element offsets into
    ``b``); ``like`` is a zero of the dtype, the rest 64-bit integers: byte
    addresses ``a``, ``b``, ``c`` and element strides. ``accumulate`` nonzero
    adds to ``C`` (``beta = 1``), zero overwrites it (``beta = 0``). All taps
    of a block of ``k`` accumulate in registers: the implicit-GEMM conv's
    kh*kw products of a band are one call, C read and written once per block."""
    size = _size_of(like)
    width = NV * VECTOR_BYTES // size
    taps = shifts.size
    at_shifts = np.int64(shifts.ctypes.data)
    # one tap whose B rows lie far apart: its shift folded into ``b``, each
    # whole block of B is copied to adjacent rows before the tiles read it
    packing = taps == 1 and b_ks >= PACK_STRIDE
    pack = np.empty(KC * width if packing else 0, dtype=np.float64)
    no_shift = np.zeros(1, dtype=np.int64)
    if packing:
        b += shifts[0] * size
        at_shifts = np.int64(no_shift.ctypes.data)
    for i0 in range(0, m, MB):
        i1 = min(m, i0 + MB)
        for p0 in range(0, max(k, 1), KC):  # once for k = 0: C = 0, or unchanged
            steps = max(0, min(KC, k - p0))
            keep = 1 if (accumulate != 0 or p0 > 0) else 0
            a_block = a + (p0 * a_ks) * size
            b_block = b + (p0 * b_ks) * size
            for j0 in range(0, n, width):
                cols = min(width, n - j0)
                b_tile, b_stride = b_block + j0 * size, b_ks
                if packing and cols == width:
                    _pack(like, b_tile, b_ks, steps, np.int64(pack.ctypes.data))
                    b_tile, b_stride = np.int64(pack.ctypes.data), np.int64(width)
                for t in range(i0, i1, MR):
                    rows = min(MR, i1 - t)
                    a_tile, c_tile = a_block + t * a_rs * size, c + (t * ldc + j0) * size
                    if cols == width:
                        _full_tile(like, rows, cols, a_tile, a_rs, a_ks, a_ts, b_tile, b_stride,
                                   at_shifts, taps, c_tile, ldc, steps, keep)
                    else:
                        _edge_tile(like, rows, cols, a_tile, a_rs, a_ks, a_ts, b_tile, b_stride,
                                   at_shifts, taps, c_tile, ldc, steps, keep)
