"""
Model selection on a dask cluster
=================================

The same kind search as :ref:`sphx_glr_auto_examples_plot_grid_search.py`,
with the fits spread over a dask cluster through joblib's ``dask`` backend.
:class:`~sklearn.model_selection.GridSearchCV` does not change; only the
``parallel_backend`` context around ``fit`` does. Here the cluster is a
:class:`~dask.distributed.LocalCluster` of two single-threaded worker
processes; for a real cluster, replace it with the scheduler's address
(``Client("tcp://scheduler:8786")``) or a dask-jobqueue / dask-kubernetes
cluster object. Needs ``pip install -e ".[distributed]"`` (from a checkout).

This example is not executed when the documentation is built (it starts
worker processes); run it with ``python examples/grid_search_dask.py``.
"""

import warnings

import joblib
import numpy as np
import pandas as pd
from sklearn.datasets import load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from skflow import FlowDensity
from skflow.engine import KINDS


def main():
    from dask.distributed import Client, LocalCluster

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short demo budget
    X = np.log1p(load_wine().data)  # skewed positive measurements
    flow = FlowDensity(n_layers=3, hidden_units=32, weight_decay=1e-3, max_iter=100, random_state=0)
    search = GridSearchCV(flow, {"kind": list(KINDS)}, cv=3, n_jobs=-1)
    # One thread per worker: each fit is a small torch job, and torch threads
    # inside several worker processes would oversubscribe the cores.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        with Client(cluster) as client:
            print(f"dask dashboard: {client.dashboard_link}")
            with joblib.parallel_backend("dask"):
                search.fit(X)
    table = pd.DataFrame(search.cv_results_)[["param_kind", "mean_test_score", "std_test_score"]]
    print(table.sort_values("mean_test_score", ascending=False).to_string(index=False))
    print(f"best kind: {search.best_params_['kind']}")


if __name__ == "__main__":  # worker processes re-import this file
    main()
