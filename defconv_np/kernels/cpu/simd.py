"""Explicit short-vector operations for the CPU kernels, as Numba intrinsics.

Numba runs LLVM without its SLP vectoriser, so a loop over a handful of
adjacent values (the four channels of a grouped plane) stays scalar: one load
per value, where a single vector load would do. The intrinsics here emit the
vector IR themselves. Each does, lane by lane, exactly the IEEE operations
of the scalar expression its docstring gives, in the same order (no
contraction into FMAs, no reassociation), so its results are bitwise those of
the scalar loop it replaces.

They read and write through the arrays' data pointers without bounds checks,
as the kernels' own loops do (Numba checks no bounds by default): the caller
guarantees every index.
"""

from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

#: Lanes of ``blend4``: the channels a grouped scratch plane holds side by side.
LANES = 4


def _require(condition, message):
    if not condition:
        raise TypingError(f"blend4: {message}")


@intrinsic
def blend4(typingctx, src, q, row, a, b, d, e, dst, o, stride):
    """For ``k`` in 0 .. 3: ``dst[o + k * stride] = a * src[q + k] + b * src[q
    + 4 + k] + d * src[q + row + k] + e * src[q + row + 4 + k]``, summed left
    to right: the bilinear samples of four channels stored side by side
    (``src``, 1-D), with corner weights ``a``, ``b``, ``d``, ``e``, into four
    planes ``stride`` apart (``dst``, 1-D). Indices are 64-bit integers; the
    weights are converted to the arrays' dtype, which both share."""
    _require(isinstance(src, types.Array) and src.ndim == 1 and src.layout == "C",
             f"src must be a 1-D contiguous array, got {src}")
    _require(isinstance(dst, types.Array) and dst.ndim == 1 and dst.layout == "C"
             and dst.mutable, f"dst must be a writable 1-D contiguous array, got {dst}")
    _require(src.dtype == dst.dtype and isinstance(src.dtype, types.Float),
             f"src and dst must share a float dtype, got {src.dtype} and {dst.dtype}")
    for name, index in (("q", q), ("row", row), ("o", o), ("stride", stride)):
        _require(isinstance(index, types.Integer) and index.bitwidth == 64,
                 f"{name} must be a 64-bit integer, got {index}")
    for name, weight in (("a", a), ("b", b), ("d", d), ("e", e)):
        _require(isinstance(weight, (types.Float, types.Integer)),
                 f"{name} must be a number, got {weight}")
    sig = types.none(src, q, row, a, b, d, e, dst, o, stride)

    def codegen(context, builder, signature, args):
        src_v, q_v, row_v, *weights, dst_v, o_v, stride_v = args
        dtype = signature.args[0].dtype
        src_arr = context.make_array(signature.args[0])(context, builder, src_v)
        dst_arr = context.make_array(signature.args[7])(context, builder, dst_v)
        scalar = context.get_value_type(dtype)
        vector = ir.VectorType(scalar, LANES)
        i64, i32 = ir.IntType(64), ir.IntType(32)

        def load(index):
            address = builder.bitcast(builder.gep(src_arr.data, [index]), vector.as_pointer())
            return builder.load(address, align=context.get_abi_sizeof(scalar))

        def splat(value, fromty):
            value = context.cast(builder, value, fromty, dtype)
            lane0 = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                           ir.Constant(i32, 0))
            return builder.shuffle_vector(lane0, ir.Constant(vector, ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))

        lanes = ir.Constant(i64, LANES)
        q_low = builder.add(q_v, row_v)
        corners = (q_v, builder.add(q_v, lanes), q_low, builder.add(q_low, lanes))
        total = None
        for weight, fromty, corner in zip(weights, signature.args[3:7], corners):
            term = builder.fmul(splat(weight, fromty), load(corner))
            total = term if total is None else builder.fadd(total, term)
        index = o_v
        for k in range(LANES):
            builder.store(builder.extract_element(total, ir.Constant(i32, k)),
                          builder.gep(dst_arr.data, [index]))
            index = builder.add(index, stride_v)
        return context.get_dummy_value()

    return sig, codegen
