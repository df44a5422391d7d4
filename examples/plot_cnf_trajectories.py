"""
Flow-matching CNF: from noise to data along trajectories
========================================================

A continuous normalizing flow (``kind="cnf"``) moves points with a learned
velocity field :math:`dx/dt = f(x, t)`: standard normal noise at
:math:`t = 0` flows to the data at :math:`t = 1`. With flow matching (the
default training) the field is regressed on straight noise-to-data paths,
without solving any ODE during training; scoring and sampling then solve the
ODE.

The fitted flow is a plain torch module, so the trajectories can be traced by
integrating its velocity field with a few lines of Runge-Kutta. The top row
shows the particles at five times, the bottom row their paths and the
density the model assigns (``score_samples``, which solves the same ODE with
the exact divergence).
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
from skflow.engine.transforms import Compose

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget

X, _ = make_moons(n_samples=2000, noise=0.06, random_state=0)
# Flow-matching epochs are cheap (no ODE): give it patience.
est = FlowDensity(kind="cnf", n_layers=1, hidden_units=64, max_iter=400, n_iter_no_change=100)
est.set_params(learning_rate=3e-3, random_state=0)
# Plain standardization in front: the ODE then runs in (scaled) data coordinates.
est.set_params(gaussianize=False, whiten=False).fit(X)
print(f"{est.n_iter_} epochs; mean log-likelihood {est.score(X[:500]):.3f} per row")

# The flow is Compose(fixed preprocessing layers..., ContinuousFlow); the
# ODE runs in the preprocessed (standardized) coordinates.
layers = est.flow_.transform.transforms
preprocess, cnf = Compose(*layers[:-1]), layers[-1]
times = np.linspace(0.0, 1.0, 41)


@torch.no_grad()
def trajectories(n, seed=0):
    """Integrate dx/dt = f(x, t) from noise at t=0 to t=1 (RK4 on ``times``);
    returns the states in data units, shape (len(times), n, 2)."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    knots = np.linspace(0.0, 1.0, len(cnf.blocks) + 1)  # each block owns a time slice

    def velocity(x, t):
        block = min(int(np.searchsorted(knots, t, side="right")) - 1, len(cnf.blocks) - 1)
        return cnf.blocks[block].field(torch.tensor(t, dtype=x.dtype), x)

    states = [x]
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        h = t1 - t0
        k1 = velocity(x, t0)
        k2 = velocity(x + h / 2 * k1, t0 + h / 2)
        k3 = velocity(x + h / 2 * k2, t0 + h / 2)
        k4 = velocity(x + h * k3, t1)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        states.append(x)
    path = torch.stack(states)
    data_units = preprocess.inverse(path.reshape(-1, 2))[0]
    return data_units.reshape(path.shape).numpy()


paths = trajectories(600)
lo, hi = np.array([-1.6, -1.1]), np.array([2.6, 1.6])

fig = plt.figure(figsize=(13, 6.5))
grid = fig.add_gridspec(2, 5, height_ratios=[1, 1.5])
for col, t in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
    ax = fig.add_subplot(grid[0, col])
    i = int(np.argmin(np.abs(times - t)))
    ax.scatter(paths[i, :, 0], paths[i, :, 1], s=3, color=plt.cm.plasma(t * 0.9))
    ax.set_title(f"t = {t:.2f}")
    ax.set_xlim(lo[0] - 0.6, hi[0] + 0.6)
    ax.set_ylim(lo[1] - 0.9, hi[1] + 0.9)
    ax.set_xticks([])
    ax.set_yticks([])

ax = fig.add_subplot(grid[1, :3])
for path in paths[:, :150].transpose(1, 0, 2):
    ax.plot(path[:, 0], path[:, 1], color="0.6", lw=0.5, alpha=0.6)
ax.scatter(
    paths[0, :150, 0],
    paths[0, :150, 1],
    s=6,
    color=plt.cm.plasma(0.0),
    label="t = 0 (noise)",
)
ax.scatter(paths[-1, :150, 0], paths[-1, :150, 1], s=6, color=plt.cm.plasma(0.9), label="t = 1")
ax.set_title("Trajectories of 150 particles")
ax.legend(loc="lower left")
ax.set_aspect("equal")

ax = fig.add_subplot(grid[1, 3:])
gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 90), np.linspace(lo[1], hi[1], 70))
log_density = est.score_samples(np.c_[gx.ravel(), gy.ravel()]).reshape(gx.shape)
ax.contourf(gx, gy, np.exp(log_density), levels=20, cmap="viridis")
ax.set_title("Fitted density (score_samples)")
ax.set_aspect("equal")
ax.set_xticks([])
ax.set_yticks([])
fig.tight_layout()
fig.savefig(Path(sys.argv[0]).with_suffix(".png"), dpi=80)  # also under sphinx-gallery
