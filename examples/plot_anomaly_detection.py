"""
Anomaly detection on breast-cancer measurements
===============================================

Treat malignant tumours as anomalies: fit on benign rows only of
scikit-learn's bundled breast-cancer table (30 measurements per row), then
rank held-out benign and malignant rows by how unlikely each model finds
them. :class:`~skflow.FlowDensity` follows the outlier API of
:class:`~sklearn.ensemble.IsolationForest` (``score_samples``,
``decision_function``, ``predict``), so the two drop into the same ROC
comparison. The measurements are positive and skewed: the flow handles that
itself (its fixed first layers Gaussianize each column, and the density stays
that of the raw measurements), while the Gaussian mixture gets a ``log1p``
transform in a pipeline.
"""

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import RocCurveDisplay, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skflow import FlowDensity

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget

data = load_breast_cancer()
X, malignant = data.data, data.target == 0  # target 0 is malignant
X_benign_train, X_benign_test = train_test_split(X[~malignant], test_size=0.3, random_state=0)
X_test = np.vstack([X_benign_test, X[malignant]])
is_anomaly = np.r_[np.zeros(len(X_benign_test)), np.ones(malignant.sum())]
print(
    f"fit on {len(X_benign_train)} benign rows; test on {len(X_benign_test)} benign "
    f"and {malignant.sum()} malignant rows"
)

models = {
    "FlowDensity(kind='maf')": FlowDensity(kind="maf", random_state=0),
    "log1p + GaussianMixture(1)": make_pipeline(
        FunctionTransformer(np.log1p), GaussianMixture(n_components=1, random_state=0)
    ),
    "IsolationForest": IsolationForest(random_state=0),
}
fig, (ax_roc, ax_hist) = plt.subplots(1, 2, figsize=(11, 4.5))
for name, model in models.items():
    model.fit(X_benign_train)
    # Lower score_samples means more abnormal, for all three models.
    anomaly_score = -model.score_samples(X_test)
    auc = roc_auc_score(is_anomaly, anomaly_score)
    RocCurveDisplay.from_predictions(is_anomaly, anomaly_score, name=name, ax=ax_roc)
    print(f"{name:26s} ROC AUC {auc:.3f}")
    if isinstance(model, FlowDensity):
        flagged = model.predict(X_test) == -1
        print(
            f"  predict(): flags {flagged[is_anomaly == 1].mean():.0%} of malignant and "
            f"{flagged[is_anomaly == 0].mean():.0%} of benign test rows"
        )
        # Malignant rows reach far lower log-densities than any benign row;
        # pile everything below the benign range at the left edge.
        benign = -anomaly_score[is_anomaly == 0]
        low = benign.min() - (benign.max() - benign.min())
        log_density = np.clip(-anomaly_score, low, None)
        bins = np.linspace(low, log_density.max(), 40)
        ax_hist.hist(log_density[is_anomaly == 0], bins=bins, alpha=0.6, label="benign (held out)")
        ax_hist.hist(log_density[is_anomaly == 1], bins=bins, alpha=0.6, label="malignant")
        ax_hist.axvline(model.offset_, color="k", ls="--", label="offset_ (predict threshold)")
ax_roc.plot([0, 1], [0, 1], color="0.7", ls=":")
ax_roc.set_title("Malignant rows as anomalies")
ax_hist.set_xlabel("FlowDensity log-density (clipped on the left)")
ax_hist.set_ylabel("rows")
ax_hist.set_title("Flow log-density of held-out rows")
ax_hist.legend()
fig.tight_layout()
fig.savefig(Path(sys.argv[0]).with_suffix(".png"), dpi=90)  # also under sphinx-gallery
