"""Model selection on a dask cluster (optional: skipped without dask.distributed)."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_moons
from sklearn.model_selection import GridSearchCV

from skflow import FlowDensity

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning",
    # dask's own deprecations and shutdown notices are not ours to fix.
    "ignore::DeprecationWarning",
    "ignore::ResourceWarning",
)


@pytest.mark.slow  # starts worker processes that import torch: ~30 s
def test_grid_search_over_kinds_on_a_local_dask_cluster():
    X, _ = make_moons(n_samples=120, noise=0.1, random_state=0)
    flow = FlowDensity(n_layers=2, hidden_units=8, max_iter=4, random_state=0)
    grid = {"kind": ["maf", "realnvp"]}
    local = GridSearchCV(flow, grid, cv=2).fit(X)
    remote = GridSearchCV(flow, grid, cv=2, n_jobs=-1)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with distributed.get_task_stream(client) as stream, joblib.parallel_backend("dask"):
            remote.fit(X)
    # The 2 kinds x 2 folds fits (and the refit) ran as tasks on the workers.
    assert len(stream.data) >= 4
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"], rtol=1e-5
    )
    assert remote.best_params_ == local.best_params_
