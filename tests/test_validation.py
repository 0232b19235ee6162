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


def valid_arguments():
    """A valid call: N=2, C=4, 6x5 input, O=4, 3x3 kernel, 2 weight groups,
    2 offset groups, padding 1, so Ho, Wo = 6, 5."""
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
    )


def call(op, arguments):
    return getattr(dc, op)(**{name: arguments[name] for name in SIGNATURES[op]})


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


@pytest.mark.parametrize("op", SIGNATURES)
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
