"""
The latent space: a learned Gaussianization
===========================================

A flow is an invertible map ``T`` from the data to a latent space where the
fitted model is a standard normal. ``transform`` returns ``T(x)`` and
``inverse_transform`` maps back. Here a flow is fitted to two skewed,
correlated measurements of scikit-learn's wine table (malic acid and
proline): the left panel shows the rows with a grid of lines in data units,
the middle one the same rows and lines mapped into the latent space, where
the rows look like a round standard normal cloud and the grid shows how
the flow bends space to get there. The right panel maps an even grid of
latent points back with ``inverse_transform``: samples laid out by the
model's quantiles. The printed statistics compare skewness and correlation
before and after.
"""

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import stats
from sklearn.datasets import load_wine
from sklearn.exceptions import ConvergenceWarning

from skflow import FlowDensity

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget

wine = load_wine(as_frame=True).data
X = wine[["malic_acid", "proline"]].to_numpy()
est = FlowDensity(kind="nsf", random_state=0).fit(X)
Z = est.transform(X)

for name, A in [("data", X), ("latent", Z)]:
    skew = ", ".join(f"{s:+.2f}" for s in stats.skew(A))
    print(
        f"{name:6s} skewness {skew}; correlation {np.corrcoef(A.T)[0, 1]:+.2f}; "
        f"standard deviations {', '.join(f'{s:.3g}' for s in A.std(axis=0))}"
    )

# Grid lines in data units, from just below to just above the data.
lo, hi = X.min(axis=0), X.max(axis=0)
pad = 0.05 * (hi - lo)
ticks = [np.linspace(lo[j] - pad[j], hi[j] + pad[j], 9) for j in range(2)]
fine = [np.linspace(lo[j] - pad[j], hi[j] + pad[j], 200) for j in range(2)]
lines = [np.column_stack([np.full(200, a), fine[1]]) for a in ticks[0]]
lines += [np.column_stack([fine[0], np.full(200, b)]) for b in ticks[1]]

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
ax = axes[0]
for line in lines:
    ax.plot(line[:, 0], line[:, 1], color="0.8", lw=0.8)
ax.scatter(X[:, 0], X[:, 1], s=8, color="tab:blue")
ax.set(xlabel="malic acid", ylabel="proline", title="data, with a grid in data units")

ax = axes[1]
for line in lines:
    mapped = est.transform(line)
    ax.plot(mapped[:, 0], mapped[:, 1], color="0.8", lw=0.8)
ax.scatter(Z[:, 0], Z[:, 1], s=8, color="tab:blue")
circle = np.linspace(0, 2 * np.pi, 200)
for r in (1, 2, 3):
    ax.plot(r * np.cos(circle), r * np.sin(circle), color="tab:orange", lw=0.8)
ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal", xlabel="z0", ylabel="z1")
ax.set_title("transform(X): latent, with 1-2-3 sd circles")

ax = axes[2]
g = stats.norm.ppf(np.linspace(0.02, 0.98, 25))
latent_grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
back = est.inverse_transform(latent_grid)
ax.scatter(X[:, 0], X[:, 1], s=8, color="0.7", label="data")
ax.scatter(back[:, 0], back[:, 1], s=5, color="tab:orange", label="inverse_transform(grid)")
ax.set(xlabel="malic acid", ylabel="proline", title="a latent quantile grid mapped back")
ax.legend(fontsize=8, loc="upper right")
fig.tight_layout()
fig.savefig(Path(sys.argv[0]).with_suffix(".png"), dpi=80)  # also under sphinx-gallery
