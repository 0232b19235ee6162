"""Every bad argument raises the right exception, naming the argument."""

import numpy as np
import pytest

import defconv_np as dc

#: Each op's arguments, all passed by keyword.
SIGNATURES = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv2d_backward": ("grad_output", "input", "weight", "stride", "padding", "dilation", "groups"),
    "deform_conv2d": ("input", "offset", "weight", "bias", "stride", "padding", "dilation", "mask"),
    "deform_conv2d_backward": (
        "grad_output", "input", "offset", "weight", "stride", "padding", "dilation", "mask"
    ),
}
ARRAY_ARGUMENTS = ("grad_output", "input", "offset", "weight", "bias", "mask")
#: The spatial transformer ops, whose argument checks some tests share.
SPATIAL_SIGNATURES = {
    "affine_grid": ("theta", "size"),
    "affine_grid_backward": ("grad_grid", "size"),
    "grid_sample": ("input", "grid"),
    "grid_sample_backward": ("grad_output", "input", "grid"),
}
ALL_SIGNATURES = {**SIGNATURES, **SPATIAL_SIGNATURES}
ALL_ARRAY_ARGUMENTS = ARRAY_ARGUMENTS + ("theta", "grid", "grad_grid")


def valid_arguments():
    """A valid call: N=2, C=4, 6x5 input, O=4, 3x3 kernel, 2 weight groups,
    2 offset groups, padding 1, so Ho, Wo = 6, 5; a 6x5 sampling grid, so
    grid_sample's output is (2, 4, 6, 5) too."""
    rng = np.random.default_rng(0)
    return dict(
        input=rng.uniform(-1, 1, (2, 4, 6, 5)),
        weight=rng.uniform(-1, 1, (4, 2, 3, 3)),
        bias=rng.uniform(-1, 1, 4),
        offset=rng.uniform(-1, 1, (2, 2 * 2 * 9, 6, 5)),
        mask=rng.uniform(0, 1, (2, 2 * 9, 6, 5)),
        grad_output=rng.uniform(-1, 1, (2, 4, 6, 5)),
        stride=1,
        padding=1,
        dilation=1,
        groups=2,
        theta=rng.uniform(-1, 1, (2, 2, 3)),
        size=(2, 4, 6, 5),
        grid=rng.uniform(-1.2, 1.2, (2, 6, 5, 2)),
        grad_grid=rng.uniform(-1, 1, (2, 6, 5, 2)),
    )


def call(op, arguments):
    return getattr(dc, op)(**{name: arguments[name] for name in ALL_SIGNATURES[op]})


class FakeArray:
    """Array-like that is neither a NumPy nor a CuPy array (it only converts to one)."""

    def __init__(self, array):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._array, dtype=dtype)


def _cases():
    """(op, argument, replacement, exception, match) for every op and argument."""
    cases = []

    def case(op, name, replacement, exception, match, what):
        cases.append(pytest.param(op, name, replacement, exception, match, id=f"{op}-{name}-{what}"))

    for op, names in SIGNATURES.items():
        for name in (n for n in names if n in ARRAY_ARGUMENTS):
            case(op, name, lambda a: a[None], ValueError, name, "one-dim-too-many")
            case(op, name, lambda a: a[0, ...], ValueError, name, "one-dim-too-few")
            case(op, name, lambda a: a.astype(np.int64), TypeError, name, "integer-dtype")
            case(op, name, lambda a: a.astype(np.float32), TypeError, name, "float32-among-float64")
            case(op, name, lambda a: a.tolist(), TypeError, name, "list")
            case(op, name, FakeArray, TypeError, name, "foreign-array-like")
        for name in ("stride", "dilation"):
            for bad in (0, -1, (1, 0), (0, 2)):
                case(op, name, lambda a, bad=bad: bad, ValueError, name, f"{bad}")
        for bad in (-1, (0, -1), (-2, 1)):
            case(op, "padding", lambda a, bad=bad: bad, ValueError, "padding", f"{bad}")

        # Channels of weight do not divide (or match) those of input.
        channel_mismatch = np.ones((4, 3, 3, 3))
        case(op, "weight", lambda a: channel_mismatch, ValueError, "weight|input|groups", "channel-mismatch")
        if op.startswith("deform"):
            case(op, "offset", lambda a: a[:, :-1], ValueError, "offset", "odd-channels")
            case(op, "offset", lambda a: a[:, :-2], ValueError, "offset", "not-a-multiple-of-2khkw")
            # 3 offset groups do not divide 4 input channels.
            three_groups = np.zeros((2, 2 * 3 * 9, 6, 5))
            case(op, "offset", lambda a: three_groups, ValueError, "offset", "groups-do-not-divide-channels")
            case(op, "offset", lambda a: a[:, :, :-1], ValueError, "offset", "height-not-Ho")
            case(op, "offset", lambda a: a[:, :, :, :-1], ValueError, "offset", "width-not-Wo")
            case(op, "offset", lambda a: a[:1], ValueError, "offset", "batch-not-N")
            case(op, "mask", lambda a: a[:, :9], ValueError, "mask", "channels-not-offset-groups-times-khkw")
            case(op, "mask", lambda a: a[:, :, 1:], ValueError, "mask", "height-not-Ho")
            case(op, "mask", lambda a: a[:, :, :, 1:], ValueError, "mask", "width-not-Wo")
            case(op, "mask", lambda a: a[:1], ValueError, "mask", "batch-not-N")
        else:
            case(op, "groups", lambda a: 0, ValueError, "groups", "zero")
            case(op, "groups", lambda a: 3, ValueError, "groups|input|weight", "does-not-divide-channels")
        if "bias" in SIGNATURES[op]:
            case(op, "bias", lambda a: np.zeros(5), ValueError, "bias", "length-not-O")
        if op.endswith("backward"):
            case(op, "grad_output", lambda a: a[:, :, :, 1:], ValueError, "grad_output", "width-not-Wo")
            case(op, "grad_output", lambda a: a[:, 1:], ValueError, "grad_output", "channels-not-O")
            case(op, "grad_output", lambda a: a[1:], ValueError, "grad_output", "batch-not-N")
    return cases


@pytest.mark.parametrize("op", ALL_SIGNATURES)
def test_valid_arguments_are_accepted(op):
    # The baseline every failure case changes one thing of.
    call(op, valid_arguments())


@pytest.mark.parametrize("op, name, replacement, exception, match", _cases())
def test_bad_argument_raises_naming_it(op, name, replacement, exception, match):
    arguments = valid_arguments()
    arguments[name] = replacement(arguments[name])
    with pytest.raises(exception, match=match):
        call(op, arguments)


@pytest.mark.parametrize("op", SIGNATURES)
def test_output_smaller_than_one_pixel_raises(op):
    arguments = valid_arguments()
    # Height 1 with no padding cannot fit a 3-tall kernel: Ho = 1 - 3 + 1 = -1.
    arguments.update(input=arguments["input"][:, :, :1], padding=0)
    with pytest.raises(ValueError, match="output"):
        call(op, arguments)


@pytest.mark.parametrize("op", ["deform_conv2d", "deform_conv2d_backward"])
def test_weight_out_channels_not_divisible_by_groups_raises(op):
    # deform_conv2d infers groups = C // weight.shape[1] = 2; 3 outputs do not split in 2.
    arguments = valid_arguments()
    arguments.update(weight=np.ones((3, 2, 3, 3)), bias=None, grad_output=np.ones((2, 3, 6, 5)))
    with pytest.raises(ValueError, match="weight|groups"):
        call(op, arguments)


@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward"])
def test_out_channels_not_divisible_by_groups_raises(op):
    arguments = valid_arguments()
    arguments.update(weight=np.ones((3, 2, 3, 3)), bias=None, grad_output=np.ones((2, 3, 6, 5)))
    with pytest.raises(ValueError, match="weight|groups"):
        call(op, arguments)


@pytest.mark.parametrize("op", SIGNATURES)
def test_failed_validation_leaves_inputs_alone(op):
    arguments = valid_arguments()
    before = {name: value.copy() for name, value in arguments.items() if isinstance(value, np.ndarray)}
    arguments["stride"] = 0
    with pytest.raises(ValueError):
        call(op, arguments)
    for name, value in before.items():
        np.testing.assert_array_equal(arguments[name], value, err_msg=name)


def test_empty_channel_counts_are_rejected():
    x = np.zeros((1, 0, 4, 4))
    w = np.zeros((2, 0, 3, 3))
    with pytest.raises(ValueError, match="weight"):
        dc.conv2d(x, w)
    with pytest.raises(ValueError, match="weight"):
        dc.deform_conv2d(x, np.zeros((1, 18, 2, 2)), w)
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        dc.conv2d(x, np.zeros((0, 2, 3, 3)))
    with pytest.raises(ValueError, match="weight"):
        dc.deform_conv2d(x, np.zeros((1, 18, 2, 2)), np.zeros((0, 2, 3, 3)))


# --- stride, padding and dilation: ints within int64 -------------------------------------

INT64_MAX = 2**63 - 1
GEOMETRY_ARGUMENTS = ("stride", "padding", "dilation")


@pytest.mark.parametrize("op", SIGNATURES)
@pytest.mark.parametrize("name", GEOMETRY_ARGUMENTS)
@pytest.mark.parametrize("bad", [2**63, 2**64, 2**70, np.uint64(2**63), (1, 2**63), (2**70, 1)],
                         ids=["2**63", "2**64", "2**70", "uint64-2**63", "pair-1-2**63",
                              "pair-2**70-1"])
def test_geometry_argument_beyond_int64_raises_naming_it(op, name, bad):
    arguments = valid_arguments()
    arguments[name] = bad
    with pytest.raises(ValueError, match=rf"^{name} "):
        call(op, arguments)


@pytest.mark.parametrize("op", SIGNATURES)
@pytest.mark.parametrize("bad", [2**62, (0, 2**61), 2**40, (2**31, 2**31)],
                         ids=["2**62", "pair-0-2**61", "2**40", "pair-2**31"])
def test_padding_too_large_for_any_array_raises_naming_it(op, bad):
    # 2**62 and 2**61: the padded input's extent passes int64; 2**40, 2**31:
    # the output (or the padded input) would have more bytes than an array can hold.
    arguments = valid_arguments()
    arguments["padding"] = bad
    with pytest.raises(ValueError, match=r"^padding "):
        call(op, arguments)


@pytest.mark.parametrize("op", SIGNATURES)
@pytest.mark.parametrize("bad", [2**62, (1, 2**40)], ids=["2**62", "pair-1-2**40"])
def test_dilation_too_large_for_the_input_names_it(op, bad):
    arguments = valid_arguments()
    arguments["dilation"] = bad
    with pytest.raises(ValueError, match=r"^output .*dilation"):
        call(op, arguments)


def _one_pixel_output(arguments, op):
    """Shrink offset, mask and grad_output to a 1x1 output."""
    for name in ("offset", "mask", "grad_output"):
        arguments[name] = np.ascontiguousarray(arguments[name][:, :, :1, :1])
    return arguments


def _assert_same_results(result, expected):
    if isinstance(expected, tuple):
        for got, want in zip(result, expected):
            assert (got is None) == (want is None)
            if want is not None:
                assert type(got) is np.ndarray
                np.testing.assert_array_equal(got, want)
    else:
        assert type(result) is np.ndarray
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("op", SIGNATURES)
def test_largest_stride_and_dilation_are_accepted(op):
    # Any stride past the padded input gives one output pixel; any dilation of
    # a 1x1 kernel changes nothing. 2**63 - 1 is the largest allowed.
    arguments = _one_pixel_output(valid_arguments(), op)
    arguments.update(padding=0)
    expected = call(op, dict(arguments, stride=6))
    _assert_same_results(call(op, dict(arguments, stride=INT64_MAX)), expected)
    _assert_same_results(call(op, dict(arguments, stride=(np.int64(INT64_MAX), 7))), expected)

    arguments = valid_arguments()
    arguments.update(weight=arguments["weight"][:, :, :1, :1].copy(), padding=0,
                     offset=arguments["offset"][:, :4].copy(), mask=arguments["mask"][:, :2].copy())
    expected = call(op, dict(arguments, dilation=1))
    _assert_same_results(call(op, dict(arguments, dilation=INT64_MAX)), expected)


@pytest.mark.parametrize("op", SIGNATURES)
def test_numpy_integers_are_accepted_for_geometry(op):
    arguments = valid_arguments()
    expected = call(op, arguments)
    arguments.update(stride=np.int64(1), padding=(np.int32(1), np.uint8(1)),
                     dilation=np.int16(1))
    _assert_same_results(call(op, arguments), expected)


@pytest.mark.parametrize("op", SIGNATURES)
@pytest.mark.parametrize("name", GEOMETRY_ARGUMENTS)
@pytest.mark.parametrize("bad", [1.0, np.float64(1), (1, 1.0), True, np.True_, (np.True_, 1),
                                 (1, False), "1", None, np.array([1, 1])],
                         ids=["float", "numpy-float", "pair-with-float", "bool", "numpy-bool",
                              "pair-with-numpy-bool", "pair-with-bool", "str", "None",
                              "ndarray"])
def test_non_integer_geometry_raises_type_error(op, name, bad):
    arguments = valid_arguments()
    arguments[name] = bad
    with pytest.raises(TypeError, match=rf"^{name} "):
        call(op, arguments)


# --- deterministic: a bool ---------------------------------------------------------------

DETERMINISTIC_OPS = ("deform_conv2d_backward", "grid_sample_backward")


@pytest.mark.parametrize("op", DETERMINISTIC_OPS)
@pytest.mark.parametrize("bad", ["no", None, 2, 0, 1.0, "True", np.array(True)],
                         ids=["str-no", "None", "2", "0", "float", "str-True", "0d-array"])
def test_deterministic_must_be_a_bool(op, bad):
    arguments = valid_arguments()
    with pytest.raises(TypeError, match=r"^deterministic "):
        getattr(dc, op)(**{name: arguments[name] for name in ALL_SIGNATURES[op]},
                        deterministic=bad)


@pytest.mark.parametrize("op", DETERMINISTIC_OPS)
@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_deterministic_accepts_bools(op, value):
    arguments = valid_arguments()
    getattr(dc, op)(**{name: arguments[name] for name in ALL_SIGNATURES[op]},
                    deterministic=value)


# --- what an array argument may be -------------------------------------------------------


class PlainSubclass(np.ndarray):
    """An ndarray subclass that adds nothing: still refused (only numpy.ndarray
    and numpy.memmap are accepted, so results are always plain arrays)."""


class Tensor:
    """Stands in for ``torch.Tensor`` (recognised by its type's module and name)."""

    __module__ = "torch"

    def __init__(self, array):
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim


def _array_argument_cases(kinds):
    return [pytest.param(op, name, kind, id=f"{op}-{name}-{kind}")
            for op, names in ALL_SIGNATURES.items()
            for name in names if name in ALL_ARRAY_ARGUMENTS
            for kind in kinds]


SUBCLASSES = {
    "masked": lambda a: np.ma.MaskedArray(a, mask=a > 0.5),
    "subclass": lambda a: a.view(PlainSubclass),
}


@pytest.mark.parametrize("op, name, kind", _array_argument_cases(SUBCLASSES))
def test_ndarray_subclass_raises_naming_it(op, name, kind):
    arguments = valid_arguments()
    arguments[name] = SUBCLASSES[kind](arguments[name])
    with pytest.raises(TypeError, match=rf"^{name} (?s:.*)numpy\.asarray"):
        call(op, arguments)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("op", ["conv2d", "deform_conv2d"])
def test_matrix_bias_raises_type_error(op):
    arguments = valid_arguments()
    arguments["bias"] = np.asmatrix(arguments["bias"])
    with pytest.raises(TypeError, match=r"^bias (?s:.*)numpy\.asarray"):
        call(op, arguments)


def test_masked_grad_output_is_not_half_used():
    # It used to give a masked bias gradient and unmasked input/weight gradients.
    arguments = valid_arguments()
    grad_output = np.ma.MaskedArray(arguments["grad_output"], mask=arguments["grad_output"] > 0)
    with pytest.raises(TypeError, match=r"^grad_output "):
        dc.conv2d_backward(grad_output, arguments["input"], arguments["weight"], padding=1,
                           groups=2)


@pytest.mark.parametrize("op", ALL_SIGNATURES)
def test_memmap_arguments_are_accepted_and_give_plain_arrays(op, tmp_path):
    arguments = valid_arguments()
    expected = call(op, arguments)
    for name in ALL_SIGNATURES[op]:
        if name in ALL_ARRAY_ARGUMENTS:
            plain = arguments[name]
            mapped = np.memmap(tmp_path / name, dtype=plain.dtype, mode="w+", shape=plain.shape)
            mapped[...] = plain
            arguments[name] = mapped
    _assert_same_results(call(op, arguments), expected)


@pytest.mark.parametrize("op, name, kind", _array_argument_cases(["fake-torch"]))
def test_torch_tensor_points_to_from_dlpack(op, name, kind):
    arguments = valid_arguments()
    arguments[name] = Tensor(arguments[name])
    with pytest.raises(TypeError, match=rf"^{name} (?s:.*)numpy\.from_dlpack(?s:.*)cupy\.from_dlpack"):
        call(op, arguments)


def test_real_torch_tensor_points_to_from_dlpack():
    torch = pytest.importorskip("torch")
    arguments = valid_arguments()
    with pytest.raises(TypeError, match=r"^input (?s:.*)numpy\.from_dlpack"):
        dc.conv2d(torch.from_numpy(arguments["input"]), arguments["weight"], groups=2)


PYTHON_VALUES = {
    "list": lambda a: a.tolist(),
    "tuple": lambda a: tuple(a.tolist()),
    "float": lambda a: 1.0,
    "numpy-scalar": lambda a: np.float64(1.0),
}


@pytest.mark.parametrize("op, name, kind", _array_argument_cases(PYTHON_VALUES))
def test_python_value_points_to_asarray(op, name, kind):
    arguments = valid_arguments()
    arguments[name] = PYTHON_VALUES[kind](arguments[name])
    with pytest.raises(TypeError, match=rf"^{name} (?s:.*)numpy\.asarray"):
        call(op, arguments)


# --- needs and size ----------------------------------------------------------------------

BACKWARD_OPS = ("conv2d_backward", "deform_conv2d_backward", "grid_sample_backward")


@pytest.mark.parametrize("op", BACKWARD_OPS)
@pytest.mark.parametrize("bad, exception", [(3, TypeError), (None, TypeError),
                                            ([["input"]], TypeError), (("bogus",), ValueError),
                                            ("bogus", ValueError), (("input", 1), ValueError)],
                         ids=["int", "None", "unhashable", "unknown-name", "unknown-str",
                              "non-str-name"])
def test_needs_errors_name_it(op, bad, exception):
    arguments = valid_arguments()
    with pytest.raises(exception, match=r"^needs "):
        getattr(dc, op)(**{name: arguments[name] for name in ALL_SIGNATURES[op]}, needs=bad)


@pytest.mark.parametrize("op", ["affine_grid", "affine_grid_backward"])
@pytest.mark.parametrize("size", [(1, 1, 2**63, 2), (1, 1, 2**40, 2**40), (0, 1, 2**62, 2**62),
                                  (1, 1, 2**70, 1), (2**70, 1, 2, 2)],
                         ids=["H-2**63", "HW-2**80", "empty-batch-HW-2**124", "H-2**70",
                              "N-2**70"])
def test_size_too_large_raises_naming_it(op, size):
    n = min(size[0], 1)
    arguments = dict(theta=np.zeros((n, 2, 3)), grad_grid=np.zeros((n, 1, 1, 2)), size=size)
    with pytest.raises(ValueError, match=r"^size "):
        call(op, arguments)
