"""
Weighted rows: fitting a reweighted distribution
================================================

``fit(X, sample_weight=w)`` fits the distribution in which each row counts
with its weight: survey or importance weights, or the counts of aggregated
rows. Here the rows of scikit-learn's two-moons data get importance weights
that grow to the right (``exp(x)``), as if the right-hand side had been
under-sampled. The left panel shows the unweighted fit, the middle one the
weighted fit: its mass moves to the right moon. The right panel checks it
against the truth: a fit to rows *resampled* with those weights (what the
weights stand for) gives nearly the same density. The printed numbers are
each model's mean log-likelihood of fresh rows drawn from the reweighted
distribution.
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

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget

X, _ = make_moons(n_samples=1500, noise=0.08, random_state=0)
w = np.exp(X[:, 0])


def reweighted(n, seed):
    """Rows drawn from the reweighted distribution (resampling by w)."""
    pool, _ = make_moons(n_samples=20 * n, noise=0.08, random_state=seed)
    p = np.exp(pool[:, 0])
    return pool[np.random.RandomState(seed).choice(len(pool), n, p=p / p.sum())]


params = dict(kind="nsf", random_state=0)
models = {
    "unweighted fit": FlowDensity(**params).fit(X),
    "fit(X, sample_weight=w)": FlowDensity(**params).fit(X, sample_weight=w),
    "fit to resampled rows": FlowDensity(**params).fit(reweighted(1500, 1)),
}
test = reweighted(2000, 2)
for name, model in models.items():
    print(f"{name:26s} log-likelihood of reweighted rows {model.score(test):.3f}")

g0, g1 = np.linspace(-1.5, 2.5, 160), np.linspace(-1.0, 1.5, 110)
grid = np.stack(np.meshgrid(g0, g1), -1).reshape(-1, 2)
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
for ax, (name, model) in zip(axes, models.items(), strict=True):
    density = np.exp(model.score_samples(grid)).reshape(len(g1), len(g0))
    ax.contourf(g0, g1, density, levels=20, cmap="viridis")
    ax.scatter(X[::5, 0], X[::5, 1], s=2, color="white", alpha=0.5)
    ax.set_title(name)
    ax.set_xlabel("x0")
axes[0].set_ylabel("x1")
fig.tight_layout()
fig.savefig(Path(sys.argv[0]).with_suffix(".png"), dpi=80)  # also under sphinx-gallery
