"""
Density contours of every flow kind
===================================

Fit each flow family in :data:`skflow.engine.KINDS` to two 2-D point clouds
(two half moons and a ring of eight Gaussians) and draw the fitted density
next to the data. The panel titles give the mean log-likelihood of held-out
points (higher is better).

All kinds share the same small budget here (four layers, 32 hidden units,
a few seconds of training each), so the picture compares how much shape each
family captures quickly, not how well it can do with a full budget.
The fixed preprocessing (``gaussianize``, ``whiten``) is switched off so that
the panels show what each family learns by itself.
"""

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning

from skflow import FlowDensity
from skflow.engine import KINDS

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget


def eight_gaussians(n, rng):
    """A ring of eight small Gaussian blobs, a classic multimodal test density."""
    angles = rng.randint(8, size=n) * np.pi / 4
    centers = 2.0 * np.c_[np.cos(angles), np.sin(angles)]
    return centers + 0.15 * rng.randn(n, 2)


rng = np.random.RandomState(0)
datasets = {
    "two moons": make_moons(n_samples=1500, noise=0.08, random_state=0)[0],
    "eight Gaussians": eight_gaussians(1500, rng),
}
params = dict(n_layers=4, hidden_units=32, max_iter=100, learning_rate=3e-3, batch_size=128)
# The fixed preprocessing layers are off, so each panel shows what the
# family itself learns (marginal Gaussianization would do part of the work).
params.update(gaussianize=False, whiten=False, random_state=0)

kinds = list(KINDS)
fig, axes = plt.subplots(
    len(datasets), len(kinds) + 1, figsize=(2.2 * (len(kinds) + 1), 2.3 * len(datasets))
)
for row, (name, X) in enumerate(datasets.items()):
    X_train, X_test = X[:1000], X[1000:]
    lo, hi = X.min(axis=0) - 0.5, X.max(axis=0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
    grid = np.c_[gx.ravel(), gy.ravel()]

    ax = axes[row, 0]
    ax.scatter(X_train[:, 0], X_train[:, 1], s=2, color="k", alpha=0.4)
    ax.set_title("data" if row == 0 else "")
    ax.set_ylabel(name)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    for col, kind in enumerate(kinds, start=1):
        est = FlowDensity(kind=kind, **params).fit(X_train)
        density = np.exp(est.score_samples(grid)).reshape(gx.shape)
        ax = axes[row, col]
        ax.contourf(gx, gy, density, levels=20, cmap="viridis")
        title = f"{kind}\n" if row == 0 else ""
        ax.set_title(f"{title}held-out {est.score(X_test):.2f}", fontsize=9)
        print(f"{name:16s} {kind:8s} held-out log-lik {est.score(X_test):7.3f}")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
fig.savefig(Path(sys.argv[0]).with_suffix(".png"), dpi=90)  # also under sphinx-gallery
