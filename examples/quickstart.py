"""
Quickstart: a normalizing flow on a real table
==============================================

Fit :class:`skflow.FlowDensity` on scikit-learn's bundled breast-cancer table
(569 rows, 30 measurements), compare its held-out log-likelihood with a
Gaussian mixture, flag outliers and draw new samples.
"""

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split

from skflow import FlowDensity

X = load_breast_cancer().data
X_train, X_test = train_test_split(X, test_size=0.3, random_state=0)

rows = []
for kind in ["maf", "realnvp"]:
    start = time.perf_counter()
    flow = FlowDensity(kind=kind, random_state=0).fit(X_train)
    rows.append((f"FlowDensity(kind={kind!r})", flow.score(X_test), time.perf_counter() - start))

for k in (1, 2, 4):
    start = time.perf_counter()
    gmm = GaussianMixture(n_components=k, covariance_type="full", random_state=0).fit(X_train)
    rows.append((f"GaussianMixture({k})", gmm.score(X_test), time.perf_counter() - start))

print(f"breast_cancer: {X_train.shape[0]} training rows, {X.shape[1]} columns")
print(f"{'model':32s} {'held-out log-lik / row':>24s} {'fit s':>7s}")
for name, ll, seconds in rows:
    print(f"{name:32s} {ll:24.2f} {seconds:7.2f}")

flow = FlowDensity(kind="maf", random_state=0).fit(X_train)
labels = flow.predict(X_test)
print(f"\nflagged as outliers (contamination='auto'): {np.sum(labels == -1)} of {len(X_test)}")
samples = flow.sample(500, random_state=0)

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].plot(flow.loss_curve_, label="training NLL")
axes[0].plot([-v for v in flow.validation_scores_], label="validation NLL")
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("nats per row")
axes[0].legend()
axes[0].set_title("Training curve (best epoch restored)")
i, j = 0, 1  # mean radius vs mean texture
axes[1].scatter(X_train[:, i], X_train[:, j], s=8, alpha=0.5, label="data")
axes[1].scatter(samples[:, i], samples[:, j], s=8, alpha=0.5, label="flow samples")
axes[1].set_xlabel("mean radius")
axes[1].set_ylabel("mean texture")
axes[1].legend()
axes[1].set_title("Samples vs data")
fig.tight_layout()
out = Path(__file__).with_name("quickstart.png")
fig.savefig(out, dpi=100)
print(f"plot written to {out}")
