"""Validation and shape bookkeeping common to conv2d and deform_conv2d."""

from typing import NamedTuple

from . import _validate


class ConvGeometry(NamedTuple):
    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    groups: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    out_h: int
    out_w: int

    @property
    def out_shape(self):
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    @property
    def kernel_points(self):
        return self.kernel[0] * self.kernel[1]


def conv_geometry(input, weight, bias, stride, padding, dilation, groups):
    """Check input/weight/bias shapes against each other; ``groups=None`` infers
    it as torchvision's deform_conv2d does (C // weight.shape[1])."""
    _validate.ndim(input, "input", 4, "(N, C, H, W)")
    _validate.ndim(weight, "weight", 4, "(O, C/groups, kh, kw)")
    batch, channels, height, width = input.shape
    out_channels, per_group, kh, kw = weight.shape
    if out_channels < 1 or per_group < 1 or kh < 1 or kw < 1:
        raise ValueError(
            f"weight must have non-empty (O, C/groups, kh, kw) dims, got shape {weight.shape}")
    if channels < 1:
        raise ValueError(f"input must have at least one channel, got shape {input.shape}")
    if groups is None:
        if channels % per_group:
            raise ValueError(
                f"input channels ({channels}) must be a multiple of weight.shape[1] "
                f"({per_group}); weight groups are inferred as C // weight.shape[1]")
        groups = channels // per_group
    else:
        groups = _validate.positive_int(groups, "groups")
        if channels % groups or channels // groups != per_group:
            raise ValueError(
                f"weight must have shape (O, C/groups, kh, kw) = (O, {channels}/{groups}, kh, kw) "
                f"for input channels {channels} and groups {groups}, got {weight.shape}")
    if out_channels % groups:
        raise ValueError(
            f"weight.shape[0] (out channels, {out_channels}) must be divisible by groups ({groups})")
    if bias is not None:
        _validate.shape_equals(bias, "bias", (out_channels,), "(O,)")
    stride = _validate.pair(stride, "stride", minimum=1)
    padding = _validate.pair(padding, "padding", minimum=0)
    dilation = _validate.pair(dilation, "dilation", minimum=1)
    for what, size, pad in (("height", height, padding[0]), ("width", width, padding[1])):
        # every sample position lies in the padded input: in int64 when this fits
        if size + 2 * pad > _validate.INT64_MAX:
            raise ValueError(
                f"padding {padding} is too large: the padded input {what} would be "
                f"{size} + 2*{pad} = {size + 2 * pad}, over 2**63 - 1 (int64)")
    out_h = _validate.conv_output_size(height, kh, stride[0], padding[0], dilation[0], "height")
    out_w = _validate.conv_output_size(width, kw, stride[1], padding[1], dilation[1], "width")
    out_shape = (batch, out_channels, out_h, out_w)
    if not _validate.addressable(out_shape, input.dtype.itemsize):
        culprit = (f"padding {padding} is too large" if any(padding) else
                   f"output too large for input {input.shape} and weight {weight.shape}")
        raise ValueError(f"{culprit}: the output (N, O, Ho, Wo) would be {out_shape}, "
                         f"over 2**63 - 1 bytes")
    return ConvGeometry(batch, channels, height, width, out_channels, groups, (kh, kw), stride,
                        padding, dilation, out_h, out_w)


def check_offset_groups(geom, offset, axis):
    """The offset groups G of an offset whose axis ``axis`` holds the
    2*G*kh*kw (dy, dx) channels, checked against the kernel and the input
    channels (deform_conv2d's axis 1, active_conv2d's axis 0)."""
    points = geom.kernel_points
    n_off = offset.shape[axis]
    if n_off == 0 or n_off % (2 * points):
        raise ValueError(
            f"offset.shape[{axis}] must be a positive multiple of 2*kh*kw = {2 * points} "
            f"(2 * offset groups * kernel points), got {n_off}")
    groups = n_off // (2 * points)
    if geom.channels % groups:
        raise ValueError(
            f"input channels ({geom.channels}) must be divisible by the offset groups "
            f"({groups} = offset.shape[{axis}] / (2*kh*kw))")
    return groups


def check_padded_input(geom, itemsize):
    """The dense conv pads its input for real: that copy must be an array too."""
    padded = (geom.batch, geom.channels, geom.height + 2 * geom.padding[0],
              geom.width + 2 * geom.padding[1])
    if not _validate.addressable(padded, itemsize):
        raise ValueError(f"padding {geom.padding} is too large: the padded input "
                         f"(N, C, H + 2*ph, W + 2*pw) would be {padded}, over 2**63 - 1 bytes")


def check_grad_output(grad_output, geom):
    _validate.ndim(grad_output, "grad_output", 4, "(N, O, Ho, Wo)")
    _validate.shape_equals(grad_output, "grad_output", geom.out_shape, "(N, O, Ho, Wo)")
