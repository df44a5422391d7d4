"""
Glow on 8x8 handwritten digits
==============================

Fit :class:`skflow.FlowDensity` with ``kind="glow"`` in image mode on
scikit-learn's 8x8 digits (1,797 images, one flattened image per row), report
the held-out bits per dimension next to a full-covariance Gaussian, and draw
new digits.

``kind_options={"image_shape": (1, 8, 8)}`` turns Glow's multi-scale
architecture on: squeeze 2x2 pixels into channels, steps of ActNorm,
invertible 1x1 convolution and convolutional affine coupling, and at each
of ``n_levels`` levels half of the channels factored out to the base.

Units. Pixels are integers 0..16, and a continuous density on integers can
grow without bound, so the data are *dequantized*: uniform noise in [0, 1)
is added and the result divided by 17, giving values in [0, 1). Bits/dim
is ``-log-likelihood / (64 ln 2)`` of these dequantized [0, 1) values
(lower is better; it is negative because the density on the unit cube
exceeds 1). Adding ``log2(17) = 4.09`` bounds the bits/dim of the integer
pixels themselves (the codelength of the discrete images).

Runs in under a minute on one CPU core (``max_time`` caps the training);
on a GPU, drop ``max_time`` and raise ``hidden_units`` for a better fit.
"""

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split

from skflow import FlowDensity

torch.set_num_threads(1)
rng = np.random.default_rng(0)
X = (load_digits().data + rng.uniform(size=(1797, 64))) / 17  # dequantized, in [0, 1)
X_train, X_test = train_test_split(X, test_size=0.25, random_state=0)
n_dims = X.shape[1]


def bits_per_dim(log_likelihood):
    return -log_likelihood / (n_dims * np.log(2))


start = time.perf_counter()
glow = FlowDensity(
    kind="glow",
    kind_options={"image_shape": (1, 8, 8), "n_levels": 2},
    n_layers=4,  # steps per level
    hidden_units=32,  # channels of the coupling networks
    max_time=35,
    random_state=0,
).fit(X_train)
glow_seconds = time.perf_counter() - start
gauss = GaussianMixture(1, covariance_type="full", reg_covar=1e-4, random_state=0).fit(X_train)

print(f"digits: {len(X_train)} training images, {len(X_test)} test images, 8x8 pixels")
print("test bits/dim of the dequantized [0, 1) pixels (lower is better):")
glow_bpd = bits_per_dim(glow.score(X_test))
print(f"  Glow ({glow.n_iter_} epochs, {glow_seconds:.0f} s)   {glow_bpd:6.3f}")
print(f"  full-covariance Gaussian     {bits_per_dim(gauss.score(X_test)):6.3f}")

samples = np.clip(glow.sample(32, random_state=0), 0, 1)


def mosaic(images, n_cols=8):
    """Tile 8x8 images into one picture with a one-pixel white gap."""
    grid = np.zeros((len(images) // n_cols * 9, n_cols * 9))
    for i, image in enumerate(images):
        row, col = divmod(i, n_cols)
        grid[row * 9 : row * 9 + 8, col * 9 : col * 9 + 8] = image.reshape(8, 8)
    return grid


fig, axes = plt.subplots(1, 2, figsize=(9, 2.6))
for ax, images, title in [
    (axes[0], X_test[:32], "real digits (test set)"),
    (axes[1], samples, f"Glow samples ({glow_bpd:.2f} bits/dim)"),
]:
    ax.imshow(mosaic(images), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()
out = Path(sys.argv[0]).with_name("plot_glow_digits.png")  # sphinx-gallery has no __file__
fig.savefig(out, dpi=100)
print(f"plot written to {out}")
