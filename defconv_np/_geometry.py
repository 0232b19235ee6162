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
    out_h = _validate.conv_output_size(height, kh, stride[0], padding[0], dilation[0], "height")
    out_w = _validate.conv_output_size(width, kw, stride[1], padding[1], dilation[1], "width")
    return ConvGeometry(batch, channels, height, width, out_channels, groups, (kh, kw), stride,
                        padding, dilation, out_h, out_w)


def check_grad_output(grad_output, geom):
    _validate.ndim(grad_output, "grad_output", 4, "(N, O, Ho, Wo)")
    _validate.shape_equals(grad_output, "grad_output", geom.out_shape, "(N, O, Ho, Wo)")
