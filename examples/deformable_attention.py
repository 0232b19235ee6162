"""A DAT-style deformable attention block with its full backward, from defconv_np's ops.

Xia et al., "Vision Transformer with Deformable Attention", CVPR 2022 (DAT):
queries come from every pixel; a small conv network on the queries predicts
offsets of a coarse grid of reference points; keys and values are projected
from the input *sampled* (bilinear, ``dc.grid_sample``) at the shifted points;
each head attends over those samples with a softmax.

    q   = Wq x                                   (N, C, H, W), a 1x1 projection
    off = s * tanh(conv1x1(GELU(dwconv(q_g))))   (N*G, 2, Hr, Wr), per offset group
    xs  = grid_sample(x_g, ref + off)            (N*G, C/G, Hr, Wr)
    k, v = Wk xs, Wv xs;   A = softmax(q.k / sqrt(Dh))  per head
    y   = Wo (A v)                               (N, C, H, W)

The backward of every step is written out by hand: dc.conv2d_backward for the
offset network, dc.grid_sample_backward for the sampling (its grid gradient
carries the loss to the offsets), NumPy for the projections and the softmax.
DAT's relative position bias is left out. The script checks the gradient of
``<y, dy>`` against central finite differences along a random direction of
all inputs and parameters (float64) and exits non-zero if they disagree.
"""

import sys

import numpy as np

import defconv_np as dc

GELU_C = np.sqrt(2.0 / np.pi)


def gelu(x):
    """GELU, tanh approximation; returns the value and its derivative."""
    inner = GELU_C * (x + 0.044715 * x**3)
    t = np.tanh(inner)
    value = 0.5 * x * (1.0 + t)
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * GELU_C * (1.0 + 3 * 0.044715 * x**2)
    return value, slope


def reference_points(hr, wr):
    """(Hr, Wr, 2) pixel centres of the coarse grid, normalised (x, y) as
    grid_sample reads them without align_corners."""
    ys = (2.0 * np.arange(hr) + 1.0) / hr - 1.0
    xs = (2.0 * np.arange(wr) + 1.0) / wr - 1.0
    return np.stack(np.meshgrid(xs, ys), axis=-1)


class DeformableAttention:
    """Shapes: C channels, G offset groups, M heads, reference grid stride ``r``."""

    def __init__(self, channels, groups, heads, stride, kernel=3, offset_range=2.0, seed=0):
        rng = np.random.default_rng(seed)
        c, cg = channels, channels // groups
        self.groups, self.heads, self.stride, self.kernel = groups, heads, stride, kernel
        self.offset_range = offset_range
        self.params = {
            "wq": rng.standard_normal((c, c)) / np.sqrt(c),
            "wk": rng.standard_normal((c, c)) / np.sqrt(c),
            "wv": rng.standard_normal((c, c)) / np.sqrt(c),
            "wo": rng.standard_normal((c, c)) / np.sqrt(c),
            "w_dw": rng.standard_normal((cg, 1, kernel, kernel)) / kernel,  # depthwise
            "w_off": rng.standard_normal((2, cg, 1, 1)) / np.sqrt(cg),
        }

    def forward(self, x, params):
        p = params
        n, c, h, w = x.shape
        g, m = self.groups, self.heads
        cg, dh = c // g, c // m
        q = np.einsum("oc,nchw->nohw", p["wq"], x)
        q_g = q.reshape(n * g, cg, h, w)
        conv = dict(stride=self.stride, padding=self.kernel // 2, groups=cg)
        h1 = dc.conv2d(q_g, p["w_dw"], **conv)
        a1, gelu_slope = gelu(h1)
        h2 = dc.conv2d(a1, p["w_off"])
        hr, wr = h2.shape[2:]
        scale_off = self.offset_range * 2.0 / max(hr, wr)  # offset_range reference cells
        t2 = np.tanh(h2)
        offsets = scale_off * t2  # (N*G, 2, Hr, Wr): x then y
        grid = reference_points(hr, wr)[None] + offsets.transpose(0, 2, 3, 1)
        x_g = x.reshape(n * g, cg, h, w)
        xs = dc.grid_sample(x_g, grid, "bilinear", "zeros", False).reshape(n, c, hr * wr)
        k = np.einsum("oc,ncj->noj", p["wk"], xs)
        v = np.einsum("oc,ncj->noj", p["wv"], xs)
        qh = q.reshape(n, m, dh, h * w)
        kh, vh = k.reshape(n, m, dh, -1), v.reshape(n, m, dh, -1)
        scale = 1.0 / np.sqrt(dh)
        logits = np.einsum("nmdi,nmdj->nmij", qh, kh) * scale
        attn = np.exp(logits - logits.max(axis=-1, keepdims=True))
        attn /= attn.sum(axis=-1, keepdims=True)
        o = np.einsum("nmij,nmdj->nmdi", attn, vh).reshape(n, c, h * w)
        y = np.einsum("oc,nci->noi", p["wo"], o).reshape(n, c, h, w)
        cache = dict(x=x, q=q, q_g=q_g, conv=conv, h1=h1, a1=a1, gelu_slope=gelu_slope, t2=t2,
                     scale_off=scale_off, grid=grid, x_g=x_g, xs=xs, qh=qh, kh=kh, vh=vh,
                     scale=scale, attn=attn, o=o)
        return y, cache

    def backward(self, dy, params, cache):
        """Gradients of ``<y, dy>``: (d x, {name: d param})."""
        p, s = params, cache
        n, c, h, w = dy.shape
        g, m = self.groups, self.heads
        cg, dh = c // g, c // m
        grads = {}
        dy = dy.reshape(n, c, h * w)
        grads["wo"] = np.einsum("noi,nci->oc", dy, s["o"])
        do = np.einsum("oc,noi->nci", p["wo"], dy).reshape(n, m, dh, h * w)
        d_attn = np.einsum("nmdi,nmdj->nmij", do, s["vh"])
        dvh = np.einsum("nmij,nmdi->nmdj", s["attn"], do)
        d_logits = s["attn"] * (d_attn - (d_attn * s["attn"]).sum(axis=-1, keepdims=True))
        d_logits *= s["scale"]
        dqh = np.einsum("nmij,nmdj->nmdi", d_logits, s["kh"])
        dkh = np.einsum("nmij,nmdi->nmdj", d_logits, s["qh"])
        dk, dv = dkh.reshape(n, c, -1), dvh.reshape(n, c, -1)
        grads["wk"] = np.einsum("noj,ncj->oc", dk, s["xs"])
        grads["wv"] = np.einsum("noj,ncj->oc", dv, s["xs"])
        dxs = np.einsum("oc,noj->ncj", p["wk"], dk) + np.einsum("oc,noj->ncj", p["wv"], dv)
        hr, wr = s["grid"].shape[1:3]
        sampled = dc.grid_sample_backward(dxs.reshape(n * g, cg, hr, wr), s["x_g"], s["grid"],
                                          "bilinear", "zeros", False)
        dx = sampled.input.reshape(n, c, h, w)
        d_offsets = sampled.grid.transpose(0, 3, 1, 2)  # the reference points are constant
        dh2 = d_offsets * s["scale_off"] * (1.0 - s["t2"] ** 2)
        off_net = dc.conv2d_backward(dh2, s["a1"], p["w_off"], needs=("input", "weight"))
        grads["w_off"] = off_net.weight
        dh1 = off_net.input * s["gelu_slope"]
        dw = dc.conv2d_backward(dh1, s["q_g"], p["w_dw"], **s["conv"], needs=("input", "weight"))
        grads["w_dw"] = dw.weight
        dq = dw.input.reshape(n, c, h, w) + dqh.reshape(n, c, h, w)
        grads["wq"] = np.einsum("nohw,nchw->oc", dq, s["x"])
        dx += np.einsum("oc,nohw->nchw", p["wq"], dq)
        return dx, grads


def main():
    rng = np.random.default_rng(1)
    block = DeformableAttention(channels=8, groups=2, heads=2, stride=2)
    x = rng.standard_normal((2, 8, 8, 8))
    dy = rng.standard_normal((2, 8, 8, 8))
    y, cache = block.forward(x, block.params)
    dx, grads = block.backward(dy, block.params, cache)

    # one random direction through the input and every parameter
    u_x = rng.standard_normal(x.shape)
    u = {name: rng.standard_normal(value.shape) for name, value in block.params.items()}
    analytic = np.vdot(dx, u_x) + sum(np.vdot(grads[name], u[name]) for name in u)

    def loss(step):
        params = {name: value + step * u[name] for name, value in block.params.items()}
        return np.vdot(block.forward(x + step * u_x, params)[0], dy)

    eps = 1e-6
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    error = abs(analytic - numeric) / max(abs(numeric), 1e-12)
    print(f"output {y.shape}, {cache['xs'].shape[2]} sampled keys per image")
    print(f"directional derivative: analytic {analytic:.10f}, finite differences {numeric:.10f}, "
          f"relative error {error:.2e}")
    return 0 if error < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
