"""Explicit short-vector operations for the CPU kernels, as Numba intrinsics.

Numba runs LLVM without its SLP vectoriser, so a loop over a handful of
adjacent values (the four channels of a grouped plane) stays scalar: one load
per value, where a single vector load would do. The intrinsics here emit the
vector IR themselves (``blend4``, ``blend4_pixels``, ``transpose8``), and
``prefer_wide_vectors`` lets the loop vectoriser use 512-bit vectors in the
function that calls it. The first three do, lane by lane, exactly the IEEE
operations of the scalar expression their docstrings give, in the same order
(no contraction into FMAs, no reassociation), so their results are bitwise
those of the scalar loops they replace; wider vectors leave a loop's
operations as they are, element by element.

They read and write through the arrays' data pointers without bounds checks,
as the kernels' own loops do (Numba checks no bounds by default): the caller
guarantees every index.

Their IR is compiled into the kernels that call them, and Numba's cache
checks only a kernel's own source file: after editing this module, delete
the cached kernels (``defconv_np/**/__pycache__/*.nbi`` and ``*.nbc``), as
after editing ``sampling.py`` or ``device.py``.
"""

from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

#: Lanes of ``blend4``: the channels a grouped scratch plane holds side by side.
LANES = 4


def _require(name, condition, message):
    if not condition:
        raise TypingError(f"{name}: {message}")


def _check_arrays(name, src, dst):
    _require(name, isinstance(src, types.Array) and src.ndim == 1 and src.layout == "C",
             f"src must be a 1-D contiguous array, got {src}")
    _require(name, isinstance(dst, types.Array) and dst.ndim == 1 and dst.layout == "C"
             and dst.mutable, f"dst must be a writable 1-D contiguous array, got {dst}")
    _require(name, src.dtype == dst.dtype and isinstance(src.dtype, types.Float),
             f"src and dst must share a float dtype, got {src.dtype} and {dst.dtype}")


def _check_indices(name, **indices):
    for key, index in indices.items():
        _require(name, isinstance(index, types.Integer) and index.bitwidth == 64,
                 f"{key} must be a 64-bit integer, got {index}")


class _Emitter:
    """IR helpers for one call: vectors of ``lanes`` values of ``dtype``."""

    def __init__(self, context, builder, dtype, lanes=LANES):
        self.context, self.builder, self.dtype = context, builder, dtype
        self.lanes = lanes
        self.scalar = context.get_value_type(dtype)
        self.vector = ir.VectorType(self.scalar, lanes)
        self.align = context.get_abi_sizeof(self.scalar)
        self.i32 = ir.IntType(32)

    def data(self, array_type, value):
        return self.context.make_array(array_type)(self.context, self.builder, value).data

    def index(self, value):
        return ir.Constant(ir.IntType(64), value)

    def load(self, data, index):
        """``lanes`` values from ``data[index]`` on."""
        address = self.builder.gep(data, [index])
        return self.builder.load(self.builder.bitcast(address, self.vector.as_pointer()),
                                 align=self.align)

    def store(self, value, data, index):
        address = self.builder.gep(data, [index])
        self.builder.store(value, self.builder.bitcast(address, self.vector.as_pointer()),
                           align=self.align)

    def load_rows(self, data, index, stride, count):
        """``count`` vectors from ``data[index]``, ``data[index + stride]``, ..."""
        rows = []
        for _ in range(count):
            rows.append(self.load(data, index))
            index = self.builder.add(index, stride)
        return rows

    def store_rows(self, vectors, data, index, stride):
        """Each vector to ``data[index]``, ``data[index + stride]``, ..."""
        for vector in vectors:
            self.store(vector, data, index)
            index = self.builder.add(index, stride)

    def splat(self, value, fromty):
        """``value`` (of Numba type ``fromty``) in every lane, as ``dtype``."""
        value = self.context.cast(self.builder, value, fromty, self.dtype)
        lane0 = self.builder.insert_element(ir.Constant(self.vector, ir.Undefined), value,
                                            ir.Constant(self.i32, 0))
        return self.shuffle(lane0, ir.Constant(self.vector, ir.Undefined), [0] * self.lanes)

    def shuffle(self, a, b, mask):
        """Lanes of ``a`` then ``b`` picked by ``mask`` (``lanes`` entries)."""
        return self.builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(self.i32, len(mask)),
                                                             mask))

    def cell(self, src, q, row, weights):
        """The four channels of the cell at ``q`` of a grouped plane (row
        ``row``): the weighted corners summed left to right."""
        b = self.builder
        lanes = self.index(LANES)
        q_low = b.add(q, row)
        corners = (q, b.add(q, lanes), q_low, b.add(q_low, lanes))
        total = None
        for weight, corner in zip(weights, corners):
            term = b.fmul(weight, self.load(src, corner))
            total = term if total is None else b.fadd(total, term)
        return total


@intrinsic
def blend4(typingctx, src, q, row, a, b, d, e, dst, o, stride):
    """For ``k`` in 0 .. 3: ``dst[o + k * stride] = a * src[q + k] + b * src[q
    + 4 + k] + d * src[q + row + k] + e * src[q + row + 4 + k]``, summed left
    to right: the bilinear samples of four channels stored side by side
    (``src``, 1-D), with corner weights ``a``, ``b``, ``d``, ``e``, into four
    planes ``stride`` apart (``dst``, 1-D). Indices are 64-bit integers; the
    weights are converted to the arrays' dtype, which both share."""
    _check_arrays("blend4", src, dst)
    _check_indices("blend4", q=q, row=row, o=o, stride=stride)
    for name, weight in (("a", a), ("b", b), ("d", d), ("e", e)):
        _require("blend4", isinstance(weight, (types.Float, types.Integer)),
                 f"{name} must be a number, got {weight}")
    sig = types.none(src, q, row, a, b, d, e, dst, o, stride)

    def codegen(context, builder, signature, args):
        src_v, q_v, row_v, *weights, dst_v, o_v, stride_v = args
        emit = _Emitter(context, builder, signature.args[0].dtype)
        splats = [emit.splat(w, t) for w, t in zip(weights, signature.args[3:7])]
        total = emit.cell(emit.data(signature.args[0], src_v), q_v, row_v, splats)
        dst_data = emit.data(signature.args[7], dst_v)
        index = o_v
        for k in range(LANES):
            builder.store(builder.extract_element(total, ir.Constant(emit.i32, k)),
                          builder.gep(dst_data, [index]))
            index = builder.add(index, stride_v)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def blend4_pixels(typingctx, src, cells, t, w00, w01, w10, w11, row, dst, o, stride):
    """``blend4`` for the four pixels ``t .. t + 3`` at once: pixel ``t + j``
    reads the cell at ``q = 4 * cells[t + j]`` with weights ``w00[t + j]``,
    ``w01[t + j]``, ``w10[t + j]``, ``w11[t + j]`` (1-D arrays of the dtype)
    and its channel ``k`` goes to ``dst[o + k * stride + t + j]``. The four
    cells' vectors are transposed in registers, so that each channel's four
    pixels are one vector store instead of four scalar ones."""
    _check_arrays("blend4_pixels", src, dst)
    _check_indices("blend4_pixels", t=t, row=row, o=o, stride=stride)
    _require("blend4_pixels", isinstance(cells, types.Array) and cells.ndim == 1
             and cells.layout == "C" and cells.dtype == types.uint64,
             f"cells must be a 1-D contiguous uint64 array, got {cells}")
    for name, weight in (("w00", w00), ("w01", w01), ("w10", w10), ("w11", w11)):
        _require("blend4_pixels", isinstance(weight, types.Array) and weight.ndim == 1
                 and weight.layout == "C" and weight.dtype == src.dtype,
                 f"{name} must be a 1-D contiguous array of {src.dtype}, got {weight}")
    sig = types.none(src, cells, t, w00, w01, w10, w11, row, dst, o, stride)

    def codegen(context, builder, signature, args):
        src_v, cells_v, t_v, *weight_vs, row_v, dst_v, o_v, stride_v = args
        emit = _Emitter(context, builder, signature.args[0].dtype)
        src_data = emit.data(signature.args[0], src_v)
        cell_data = emit.data(signature.args[1], cells_v)
        weight_data = [emit.data(ty, v) for ty, v in zip(signature.args[3:7], weight_vs)]
        dtype = signature.args[0].dtype
        pixels = []
        for j in range(LANES):
            tj = builder.add(t_v, emit.index(j))
            q = builder.mul(builder.load(builder.gep(cell_data, [tj])), emit.index(LANES))
            splats = [emit.splat(builder.load(builder.gep(data, [tj])), dtype)
                      for data in weight_data]
            pixels.append(emit.cell(src_data, q, row_v, splats))
        # 4 x 4 transpose: pixels (lanes = channels) to channels (lanes = pixels)
        low01 = emit.shuffle(pixels[0], pixels[1], [0, 4, 1, 5])
        low23 = emit.shuffle(pixels[2], pixels[3], [0, 4, 1, 5])
        high01 = emit.shuffle(pixels[0], pixels[1], [2, 6, 3, 7])
        high23 = emit.shuffle(pixels[2], pixels[3], [2, 6, 3, 7])
        channels = (emit.shuffle(low01, low23, [0, 1, 4, 5]),
                    emit.shuffle(low01, low23, [2, 3, 6, 7]),
                    emit.shuffle(high01, high23, [0, 1, 4, 5]),
                    emit.shuffle(high01, high23, [2, 3, 6, 7]))
        emit.store_rows(channels, emit.data(signature.args[8], dst_v), builder.add(o_v, t_v),
                        stride_v)
        return context.get_dummy_value()

    return sig, codegen


#: Side of ``transpose8``'s square blocks.
BLOCK = 8


@intrinsic
def transpose8(typingctx, src, s0, s_stride, dst, d0, d_stride):
    """``dst[d0 + j * d_stride + i] = src[s0 + i * s_stride + j]`` for ``i``,
    ``j`` in 0 .. 7: an 8 x 8 block, read as eight runs of eight values and
    written as eight, transposed in registers (three rounds of shuffles).
    Moves values only, so it is exact. Indices are 64-bit integers."""
    _check_arrays("transpose8", src, dst)
    _check_indices("transpose8", s0=s0, s_stride=s_stride, d0=d0, d_stride=d_stride)
    sig = types.none(src, s0, s_stride, dst, d0, d_stride)

    def codegen(context, builder, signature, args):
        src_v, s0_v, s_stride_v, dst_v, d0_v, d_stride_v = args
        emit = _Emitter(context, builder, signature.args[0].dtype, BLOCK)
        src_data = emit.data(signature.args[0], src_v)
        dst_data = emit.data(signature.args[3], dst_v)
        rows = emit.load_rows(src_data, s0_v, s_stride_v, BLOCK)
        # pairs of rows interleaved, then pairs of pairs, then the halves
        # swapped across: the eight columns
        pairs = []
        for k in range(0, BLOCK, 2):
            pairs.append(emit.shuffle(rows[k], rows[k + 1], [0, 8, 1, 9, 4, 12, 5, 13]))
            pairs.append(emit.shuffle(rows[k], rows[k + 1], [2, 10, 3, 11, 6, 14, 7, 15]))
        quads = []
        for k in (0, 4):
            for low, high in ((pairs[k], pairs[k + 2]), (pairs[k + 1], pairs[k + 3])):
                quads.append(emit.shuffle(low, high, [0, 1, 8, 9, 4, 5, 12, 13]))
                quads.append(emit.shuffle(low, high, [2, 3, 10, 11, 6, 7, 14, 15]))
        columns = [emit.shuffle(quads[j % 4], quads[j % 4 + 4],
                                [0, 1, 2, 3, 8, 9, 10, 11] if j < 4 else
                                [4, 5, 6, 7, 12, 13, 14, 15]) for j in range(BLOCK)]
        emit.store_rows(columns, dst_data, d0_v, d_stride_v)
        return context.get_dummy_value()

    return sig, codegen


#: The vector width LLVM's loop vectoriser may use in a function that calls
#: ``prefer_wide_vectors`` (on CPUs without 512-bit vectors it uses theirs).
WIDE_VECTOR_BITS = 512


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorise the calling function's loops with 512-bit vectors.

    LLVM's tuning for AVX-512 server CPUs prefers 256-bit vectors for
    auto-vectorised loops (``prefer-256-bit``), whatever the loop; this
    sets the function attribute ``"prefer-vector-width"`` that overrides the
    preference for the one function being compiled (and what Numba inlines
    into it). Emits no code."""
    sig = types.none()

    def codegen(context, builder, signature, args):
        # llvmlite validates attribute names against a fixed list that
        # predates string attributes; the set itself renders any entry
        set.add(builder.function.attributes, f'"prefer-vector-width"="{WIDE_VECTOR_BITS}"')
        return context.get_dummy_value()

    return sig, codegen
