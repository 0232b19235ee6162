# requires: jax
"""Train a tiny DCNv2-style classifier in JAX with defconv_np's ops.

A stem convolution, then a modulated deformable convolution whose offsets and
mask come from a convolution initialised to zero (so training starts from a
plain convolution with mask sigmoid(0) = 0.5, as in DCNv2), global average
pooling and a linear layer. A few SGD steps under jit(value_and_grad) on a
fixed synthetic batch; the loss must drop.

Run:  python examples/jax_dcnv2.py [--steps 8]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import defconv_np.jax as dj

KERNEL = 3
POINTS = KERNEL * KERNEL


def init_params(key, in_channels=3, channels=8, classes=2):
    stem_key, dcn_key, head_key = jax.random.split(key, 3)

    def he(key, shape):
        fan_in = shape[1] * shape[2] * shape[3]
        return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)

    return {
        "stem_w": he(stem_key, (channels, in_channels, KERNEL, KERNEL)),
        "stem_b": jnp.zeros(channels),
        # 2*K offsets (dy, dx per kernel point) and K mask logits, from zero
        "offset_w": jnp.zeros((3 * POINTS, channels, KERNEL, KERNEL)),
        "offset_b": jnp.zeros(3 * POINTS),
        "dcn_w": he(dcn_key, (channels, channels, KERNEL, KERNEL)),
        "dcn_b": jnp.zeros(channels),
        "head_w": jax.random.normal(head_key, (channels, classes)),
        "head_b": jnp.zeros(classes),
    }


def forward(params, images):
    x = jax.nn.relu(dj.conv2d(images, params["stem_w"], params["stem_b"], padding=1))
    offsets_and_mask = dj.conv2d(x, params["offset_w"], params["offset_b"], padding=1)
    offset = offsets_and_mask[:, :2 * POINTS]
    mask = jax.nn.sigmoid(offsets_and_mask[:, 2 * POINTS:])
    x = jax.nn.relu(dj.deform_conv2d(x, offset, params["dcn_w"], params["dcn_b"], padding=1,
                                     mask=mask))
    pooled = x.mean(axis=(2, 3))
    return pooled @ params["head_w"] + params["head_b"]


def loss_fn(params, images, labels):
    logits = forward(params, images)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def synthetic_batch(n=16, size=12, seed=0):
    """Noisy images with a bright horizontal (label 0) or vertical (label 1) bar."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.1, (n, 3, size, size)).astype(np.float32)
    labels = np.arange(n) % 2
    for i, label in enumerate(labels):
        row, col = rng.integers(0, size - 5, 2)
        if label:
            images[i, :, row:row + 5, col] += 1.0
        else:
            images[i, :, row, col:col + 5] += 1.0
    return jnp.asarray(images), jnp.asarray(labels)


@jax.jit
def sgd_step(params, images, labels, learning_rate=0.5):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    params = jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grads)
    return params, loss, grads


def train(steps=8, seed=0):
    """The losses of ``steps`` SGD steps, and the gradients of the first step."""
    params = init_params(jax.random.PRNGKey(seed))
    images, labels = synthetic_batch(seed=seed)
    losses, first_grads = [], None
    for _ in range(steps):
        params, loss, grads = sgd_step(params, images, labels)
        losses.append(float(loss))
        first_grads = grads if first_grads is None else first_grads
    return losses, first_grads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    losses, _ = train(args.steps)
    for step, loss in enumerate(losses):
        print(f"step {step}: loss {loss:.4f}")
    assert losses[-1] < losses[0], f"the loss did not drop: {losses}"


if __name__ == "__main__":
    main()
