"""
Samples vs data on a real table
===============================

A density model is only as good as the data it generates. Fit a neural spline
flow (default parameters) to four measurements of scikit-learn's bundled wine
table and compare new samples with the real rows: histograms on the diagonal,
pairwise scatter plots below it (data in grey, samples in orange), and a
Gaussian mixture's samples for reference in the upper triangle. The held-out
log-likelihoods printed first compare the two in numbers: on 178 rows and
four columns a two-component mixture is a strong baseline, and the two are
close.
"""

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import KFold, cross_val_score

from skflow import FlowDensity

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget

wine = load_wine(as_frame=True).data
X = wine[["alcohol", "malic_acid", "flavanoids", "proline"]]

flow = FlowDensity(kind="nsf", random_state=0)
gmm = GaussianMixture(n_components=2, random_state=0)
cv = KFold(n_splits=3, shuffle=True, random_state=0)
for name, model in [("FlowDensity(kind='nsf')", flow), ("GaussianMixture(2)", gmm)]:
    held_out = cross_val_score(model, X, cv=cv).mean()
    print(f"{name:24s} held-out log-likelihood {held_out:.2f} per row (3-fold CV)")

samples = flow.fit(X).sample(len(X) * 3, random_state=0, as_frame=True)  # X's column names
gmm_samples = gmm.fit(X).sample(len(X) * 3)[0]

names = list(X.columns)
d = len(names)
fig, axes = plt.subplots(d, d, figsize=(9, 9))
for i in range(d):
    for j in range(d):
        ax = axes[i, j]
        if i == j:
            bins = 25
            ax.hist(X.iloc[:, i], bins=bins, density=True, color="0.6", label="data")
            ax.hist(
                samples.iloc[:, i],
                bins=bins,
                density=True,
                histtype="step",
                lw=2,
                color="tab:orange",
                label="flow samples",
            )
        elif i > j:
            ax.scatter(X.iloc[:, j], X.iloc[:, i], s=6, color="0.5")
            ax.scatter(samples.iloc[:, j], samples.iloc[:, i], s=3, alpha=0.4, color="tab:orange")
        else:
            ax.scatter(X.iloc[:, j], X.iloc[:, i], s=6, color="0.5")
            ax.scatter(gmm_samples[:, j], gmm_samples[:, i], s=3, alpha=0.4, color="tab:blue")
        if i == d - 1:
            ax.set_xlabel(names[j])
        if j == 0:
            ax.set_ylabel(names[i])
for i in range(d):  # scatter plots share the x range of their column's histogram
    for j in range(d):
        if i != j:
            axes[i, j].set_xlim(axes[j, j].get_xlim())
            axes[i, j].set_ylim(axes[i, i].get_xlim())
axes[0, 0].legend(fontsize=7, loc="upper left")
fig.suptitle(
    "wine: data (grey), FlowDensity(kind='nsf') samples (orange, lower left),\n"
    "GaussianMixture(2) samples (blue, upper right)"
)
fig.tight_layout()
fig.savefig(Path(sys.argv[0]).with_suffix(".png"), dpi=80)  # also under sphinx-gallery
