"""A GEMM of our own for the CPU convs' lanes: register-tiled FMA micro-kernels
emitted as vector IR (Numba intrinsics), driven by cache blocking in Numba.

``gemm`` computes ``C (+)= A @ B`` for a row-major ``C`` and a ``B`` whose
rows are contiguous (unit stride along ``n``); ``A`` may have any strides, so
that a transposed operand is read in place. Operands are passed as byte
addresses with strides in elements, as a CBLAS takes them, so that the
implicit-GEMM conv's windows into its bands need no array objects. Only the
columns ``[0, n - n % TILE_N(dtype))`` are computed; the caller runs the
rest elsewhere (``_cpu_blas``).

The micro-kernel holds a ``MR x TILE_N`` block of ``C`` in vector registers
(6 rows x 4 vectors: 24 accumulators, 4 vectors of ``B`` and one broadcast
of ``A`` in the 32 registers of AVX-512), and per step of ``k`` loads four
vectors of one row of ``B``, broadcasts six values of ``A`` and issues 24
FMAs. No operand is packed: ``B``'s block of ``KC`` rows stays in L1 across
the row tiles of ``A``, and ``C``'s block of ``MB`` rows in L2 across the
blocks of ``k``. Where the CPU has no 512-bit vectors, the vectors are 256
bits wide and the tile half as wide.

Each element of ``C`` is ``sum over k`` of products fused into one rounding
each (FMA), in order of ``k``; within a block of ``KC`` the sum runs in a
register, and across blocks through ``C`` itself. The order depends only on
the sizes, never on threads or timing, so results are reproducible; they
differ from another BLAS's in the last bits, as BLAS libraries differ from
each other.

The micro-kernel's IR is compiled into ``gemm``, and Numba's cache checks
only this file: it is all here.
"""

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Bytes of one vector register: 64 with AVX-512, 32 otherwise.
VECTOR_BYTES = 64 if "+avx512f" in llvm.get_host_cpu_features().flatten() else 32
#: Vectors per row of the register tile, and rows of it.
NV, MR = 4, 6
#: Rows of ``A`` and ``C`` per cache block (``C``'s block stays in L2), and
#: steps of ``k`` per block (``B``'s block of KC x TILE_N stays in L1).
MB, KC = 192, 128


def tile_n(itemsize):
    """Columns of ``C`` per register tile for elements of ``itemsize`` bytes:
    ``gemm`` computes whole multiples of it."""
    return NV * VECTOR_BYTES // itemsize


def _make_tile(rows):
    @intrinsic
    def tile(typingctx, like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate):
        """``C[i, :TILE_N] (+)= sum_p A[i, p] * B[p, :TILE_N]`` for ``i <
        rows``: ``A[i, p]`` at ``a + (i*a_rs + p*a_ks)*size``, ``B[p, j]``
        at ``b + (p*b_ks + j)*size``, ``C[i, j]`` at ``c + (i*ldc + j)*size``
        (byte addresses, element strides, 64-bit integers), in the dtype of
        the scalar ``like``; ``C`` is read first when ``accumulate`` is
        nonzero, else taken as zero."""
        sig = types.none(like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate)

        def codegen(context, builder, signature, args):
            _, a_v, a_rs_v, a_ks_v, b_v, b_ks_v, c_v, ldc_v, k_v, acc_v = args
            scalar = context.get_value_type(signature.args[0])
            size = context.get_abi_sizeof(scalar)
            lanes = VECTOR_BYTES // size
            vec = ir.VectorType(scalar, lanes)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            a_p, b_p, c_p = (builder.inttoptr(v, scalar.as_pointer()) for v in (a_v, b_v, c_v))
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec] * 3),
                f"llvm.fma.v{lanes}f{8 * size}")

            def vector_at(pointer, index):
                return builder.bitcast(builder.gep(pointer, [index]), vec.as_pointer())

            def c_index(i, v):
                return builder.add(builder.mul(ir.Constant(i64, i), ldc_v),
                                   ir.Constant(i64, v * lanes))

            accs = [[cgutils.alloca_once(builder, vec) for _ in range(NV)] for _ in range(rows)]
            keep = builder.icmp_signed("!=", acc_v, ir.Constant(acc_v.type, 0))
            for i in range(rows):
                for v in range(NV):
                    builder.store(ir.Constant(vec, None), accs[i][v])
            with builder.if_then(keep):
                for i in range(rows):
                    for v in range(NV):
                        builder.store(builder.load(vector_at(c_p, c_index(i, v)), align=size),
                                      accs[i][v])
            with cgutils.for_range(builder, k_v) as loop:
                b_row = builder.mul(loop.index, b_ks_v)
                bs = [builder.load(vector_at(b_p, builder.add(b_row, ir.Constant(i64, v * lanes))),
                                   align=size) for v in range(NV)]
                a_index = builder.mul(loop.index, a_ks_v)
                for i in range(rows):
                    value = builder.load(builder.gep(a_p, [a_index]))
                    a_index = builder.add(a_index, a_rs_v)
                    first = builder.insert_element(ir.Constant(vec, ir.Undefined), value,
                                                   ir.Constant(i32, 0))
                    splat = builder.shuffle_vector(
                        first, ir.Constant(vec, ir.Undefined),
                        ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
                    for v in range(NV):
                        total = builder.call(fma, [splat, bs[v], builder.load(accs[i][v])])
                        builder.store(total, accs[i][v])
            for i in range(rows):
                for v in range(NV):
                    builder.store(builder.load(accs[i][v]), vector_at(c_p, c_index(i, v)),
                                  align=size)
            return context.get_dummy_value()

        return sig, codegen

    return tile


@intrinsic
def _size_of(typingctx, like):
    """Bytes of one value of ``like``'s type, as a 64-bit constant."""
    def codegen(context, builder, signature, args):
        size = context.get_abi_sizeof(context.get_value_type(signature.args[0]))
        return ir.Constant(ir.IntType(64), size)

    return types.int64(like), codegen


_tile1, _tile2, _tile3, _tile4, _tile5, _tile6 = (_make_tile(r) for r in range(1, MR + 1))


@njit(nogil=True, cache=True)
def _tile(rows, like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate):
    if rows == 6:
        _tile6(like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate)
    elif rows == 5:
        _tile5(like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate)
    elif rows == 4:
        _tile4(like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate)
    elif rows == 3:
        _tile3(like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate)
    elif rows == 2:
        _tile2(like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate)
    else:
        _tile1(like, a, a_rs, a_ks, b, b_ks, c, ldc, k, accumulate)


@njit(nogil=True, cache=True)
def gemm(like, m, n, k, a, a_rs, a_ks, b, b_ks, c, ldc, accumulate):
    """``C (+)= A @ B`` over columns ``[0, n - n % tile_n)`` (see the module
    docstring); ``like`` is a zero of the dtype, the rest 64-bit integers:
    byte addresses ``a``, ``b``, ``c`` and element strides. ``accumulate``
    nonzero adds to ``C`` (``beta = 1``), zero overwrites it (``beta = 0``)."""
    size = _size_of(like)
    width = NV * VECTOR_BYTES // size
    n_full = n - n % width
    for i0 in range(0, m, MB):
        i1 = min(m, i0 + MB)
        for p0 in range(0, max(k, 1), KC):  # once for k = 0: C = 0, or unchanged
            steps = max(0, min(KC, k - p0))
            keep = 1 if (accumulate != 0 or p0 > 0) else 0
            for j0 in range(0, n_full, width):
                for t in range(i0, i1, MR):
                    _tile(min(MR, i1 - t), like, a + (t * a_rs + p0 * a_ks) * size, a_rs, a_ks,
                          b + (p0 * b_ks + j0) * size, b_ks, c + (t * ldc + j0) * size, ldc,
                          steps, keep)
