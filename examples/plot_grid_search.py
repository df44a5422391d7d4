"""
Choosing a flow kind with GridSearchCV
======================================

:class:`~skflow.FlowDensity` is a regular scikit-learn estimator whose
``score`` is the mean held-out log-likelihood, so
:class:`~sklearn.model_selection.GridSearchCV` can pick the flow family (or
any other parameter) by cross-validation without a ``scoring`` argument.
Here it searches over every kind, with and without the fixed marginal
Gaussianization in front of the flow (``gaussianize``), on scikit-learn's
bundled wine table (178 rows, 13 measurements, ``log1p``-transformed) and
plots the CV table.
The error bars (standard deviation over the folds) are a reminder that on a
table this small several kinds are within noise of each other.

Every fit is independent, so the search parallelizes: ``n_jobs`` spreads it
over local cores, and joblib's dask backend spreads it over a cluster (see
the "Scaling out" section of the user guide).
"""

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Patch
from sklearn.datasets import load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skflow import FlowDensity
from skflow.engine import KINDS

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget

X = load_wine().data
flow = FlowDensity(n_layers=3, hidden_units=32, weight_decay=1e-3, max_iter=150, random_state=0)
search = GridSearchCV(
    make_pipeline(FunctionTransformer(np.log1p), flow),  # skewed positive measurements
    param_grid={"flowdensity__kind": list(KINDS), "flowdensity__gaussianize": [True, False]},
    cv=KFold(n_splits=3, shuffle=True, random_state=0),
    n_jobs=1,
)
search.fit(X)

table = pd.DataFrame(search.cv_results_)[
    [
        "param_flowdensity__kind",
        "param_flowdensity__gaussianize",
        "mean_test_score",
        "std_test_score",
        "mean_fit_time",
    ]
]
table.columns = ["kind", "gaussianize", "held-out log-lik", "std", "fit seconds"]
table = table.sort_values("held-out log-lik", ascending=False).reset_index(drop=True)
print(table.to_string(float_format="%.2f"))
print(f"best: {search.best_params_}")

fig, (ax, ax_table) = plt.subplots(
    1, 2, figsize=(11, 0.45 * len(table) + 1.5), gridspec_kw={"width_ratios": [1.2, 1]}
)
y = np.arange(len(table))[::-1]
colors = np.where(table["gaussianize"].astype(bool), "tab:blue", "tab:orange")
ax.barh(y, table["held-out log-lik"], xerr=table["std"], color=colors, alpha=0.8)
ax.legend(
    handles=[
        Patch(color=c, label=f"gaussianize={g}")
        for c, g in [("tab:blue", True), ("tab:orange", False)]
    ],
    loc="lower right",
)
ax.set_yticks(y, table["kind"])
lo = table["held-out log-lik"].min() - table["std"].max()
ax.set_xlim(lo - 1, table["held-out log-lik"].max() + table["std"].max() + 1)
ax.set_xlabel("mean held-out log-likelihood per row (3-fold CV, higher is better)")
ax.set_title("GridSearchCV over kinds and gaussianize (wine)")
ax_table.axis("off")
cells = table.to_numpy(dtype=object)
cells[:, 2:] = [[f"{v:.2f}" for v in row] for row in table.iloc[:, 2:].to_numpy()]
cv_table = ax_table.table(cellText=cells, colLabels=list(table.columns), loc="center")
cv_table.auto_set_font_size(False)
cv_table.set_fontsize(10)
cv_table.auto_set_column_width(range(len(table.columns)))
cv_table.scale(1, 1.5)
fig.tight_layout()
fig.savefig(Path(sys.argv[0]).with_suffix(".png"), dpi=90)  # also under sphinx-gallery
