"""scikit-learn's own estimator checks, for every flow kind."""

from __future__ import annotations

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from skflow import FlowDensity
from skflow.engine import KINDS

# An adaptive ODE solver picks one step sequence per batch, so a cnf row's
# score moves (within the solver tolerance) with the rows scored beside it;
# scikit-learn's subset-invariance check asks for 1e-7, which a fixed-step
# solver meets exactly.
KIND_OPTIONS = {"cnf": {"solver": "rk4", "n_steps": 8}}
# Tiny networks and few epochs: the checks test the API contract, not fit quality.
ESTIMATORS = [
    FlowDensity(
        kind=kind,
        n_layers=2,
        hidden_units=8,
        max_iter=3,
        kind_options=KIND_OPTIONS.get(kind),
        random_state=0,
    )
    for kind in sorted(KINDS)
]
# Training draws its validation split and minibatches over rows, so an
# integer weight is close to, but not bit for bit, a repeated row
# (tests/test_sample_weight.py checks the weighted statistics); weights of zero are exactly
# removed rows.
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": (
        "stochastic training: integer weights approximate repeated rows"
    )
}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        # Three epochs never converge; that warning is expected here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
