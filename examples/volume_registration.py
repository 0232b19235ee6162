"""Recover a known 3-D rigid motion of a synthetic volume by gradient descent
on the affine matrix theta (N, 3, 4), with defconv_np's 5-D affine_grid and
trilinear grid_sample and their exact gradients.

The moving volume is a few smooth Gaussian blobs; the fixed volume is the same
volume resampled under a known rotation and translation. Minimising the mean
squared difference over theta (Adam) recovers the motion. Runs in a few
seconds on CPU; ``tests/test_examples.py`` runs it and its final assertion.

Run:  python examples/volume_registration.py
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import defconv_np as dc  # noqa: E402

SIZE = (1, 1, 24, 24, 24)
OPTIONS = dict(mode="bilinear", padding_mode="border", align_corners=False)


def blobs(rng, size, count=6):
    """(N, 1, D, H, W) sum of ``count`` anisotropic Gaussian blobs."""
    axes = [np.linspace(-1, 1, s) for s in size[2:]]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    volume = np.zeros(size[2:])
    for _ in range(count):
        centre = rng.uniform(-0.5, 0.5, 3)
        width = rng.uniform(0.15, 0.35, 3)
        volume += rng.uniform(0.5, 1.0) * np.exp(-(((x - centre[0]) / width[0]) ** 2
                                                   + ((y - centre[1]) / width[1]) ** 2
                                                   + ((z - centre[2]) / width[2]) ** 2))
    return np.broadcast_to(volume, size).copy()


def rigid_theta(axis_angle, shift):
    """(1, 3, 4): rotation (Rodrigues) of an axis-angle vector, then a shift."""
    angle = np.linalg.norm(axis_angle)
    k = axis_angle / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    return np.concatenate([rotation, np.asarray(shift, float)[:, None]], axis=1)[None]


def loss_and_gradient(theta, moving, fixed):
    """Mean squared difference of the warped moving volume and the fixed one,
    and its gradient with respect to theta."""
    grid = dc.affine_grid(theta, SIZE, OPTIONS["align_corners"])
    warped = dc.grid_sample(moving, grid, **OPTIONS)
    residual = warped - fixed
    loss = float(np.mean(residual ** 2))
    grad_warped = 2 * residual / residual.size
    grad_grid = dc.grid_sample_backward(grad_warped, moving, grid, **OPTIONS, needs=("grid",)).grid
    return loss, dc.affine_grid_backward(grad_grid, SIZE, OPTIONS["align_corners"])


def register(moving, fixed, steps=300, rate=0.01):
    """Adam on theta from the identity."""
    theta = np.eye(3, 4)[None].copy()
    first = np.zeros_like(theta)
    second = np.zeros_like(theta)
    beta1, beta2 = 0.9, 0.999
    losses = []
    for step in range(1, steps + 1):
        loss, grad = loss_and_gradient(theta, moving, fixed)
        losses.append(loss)
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad ** 2
        theta -= rate * (first / (1 - beta1 ** step)) / (np.sqrt(second / (1 - beta2 ** step)) + 1e-12)
    return theta, losses


def main():
    rng = np.random.default_rng(0)
    moving = blobs(rng, SIZE)
    true_theta = rigid_theta(np.array([0.12, -0.08, 0.15]), [0.08, -0.05, 0.1])
    fixed = dc.grid_sample(moving, dc.affine_grid(true_theta, SIZE, OPTIONS["align_corners"]),
                           **OPTIONS)
    theta, losses = register(moving, fixed)
    error = np.abs(theta - true_theta).max()
    print(f"loss {losses[0]:.3e} -> {losses[-1]:.3e}; max |theta - true theta| = {error:.4f}")
    print("recovered theta:\n", np.round(theta[0], 3))
    print("true theta:\n", np.round(true_theta[0], 3))
    assert losses[-1] < 1e-3 * losses[0], (losses[0], losses[-1])
    assert error < 0.01, error
    return theta, true_theta


if __name__ == "__main__":
    main()
