"""``transform`` / ``inverse_transform``: the flow as a learned Gaussianization."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skflow import FlowDensity
from skflow.engine import KINDS

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def test_latent_is_standard_normal(cancer):
    """On a skewed, correlated real table the training rows' latent is close
    to independent standard normals, and new rows' nearly so (a 30-column
    fit on 398 rows is a little overconfident: their latent is broader)."""
    X_train, X_test, _, _ = cancer
    est = FlowDensity(random_state=0).fit(X_train)

    def off_diagonal(A):
        return np.abs(np.corrcoef(A.T)[np.triu_indices(A.shape[1], 1)]).mean()

    Z = est.transform(X_train)
    assert Z.shape == X_train.shape and Z.dtype == np.float64
    assert np.abs(Z.mean(axis=0)).max() < 0.15
    assert np.all((Z.std(axis=0) > 0.9) & (Z.std(axis=0) < 1.1))
    assert off_diagonal(Z) < 0.08 and np.median(np.abs(stats.skew(Z))) < 0.4
    Z = est.transform(X_test)
    assert np.abs(Z.mean(axis=0)).max() < 0.3 and np.median(Z.std(axis=0)) < 1.25
    assert off_diagonal(Z) < 0.15 < 0.3 < off_diagonal(X_test)
    assert np.median(np.abs(stats.skew(Z))) < 0.6 < 1.2 < np.median(np.abs(stats.skew(X_test)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_and_density(kind):
    X = load_wine().data
    est = FlowDensity(kind, n_layers=2, hidden_units=16, max_iter=10, random_state=0).fit(X)
    # Round trips within 1e-3 standard deviations of each column (cnf: the
    # ODE solver's tolerance), both ways.
    error = np.abs(est.inverse_transform(est.transform(X)) - X) / X.std(axis=0)
    assert error.max() < 1e-3
    z = np.random.RandomState(0).normal(size=(50, X.shape[1]))
    assert np.abs(est.transform(est.inverse_transform(z)) - z).max() < 1e-3


def test_fit_transform_and_feature_names():
    X = load_wine(as_frame=True).data
    est = FlowDensity(n_layers=2, hidden_units=16, max_iter=5, random_state=0)
    Z = est.fit_transform(X)
    np.testing.assert_array_equal(Z, est.transform(X))
    assert est.get_feature_names_out().tolist() == [f"z{i}" for i in range(13)]
    frame = est.set_output(transform="pandas").transform(X)
    assert frame.columns.tolist() == [f"z{i}" for i in range(13)]
    with pytest.raises(ValueError, match="input_features"):
        est.get_feature_names_out(["a"] * 13)


def test_gaussianizing_step_in_a_pipeline(cancer):
    X_train, _, y_train, _ = cancer
    pipe = make_pipeline(
        FlowDensity(n_layers=2, hidden_units=16, max_iter=20, random_state=0),
        LogisticRegression(max_iter=1000),
    )
    assert cross_val_score(pipe, X_train, y_train, cv=3).mean() > 0.9


def test_transform_errors():
    X = load_wine().data
    est = FlowDensity(n_layers=2, hidden_units=16, max_iter=5, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 3 columns, but the latent space"):
        est.inverse_transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="too far out for the flow's float32 .* refit with dtype"):
        est.transform(np.r_[X[:2], np.full((1, 13), 1e300)])
    # The fitted flow's precision, not a dtype set for the next fit.
    est.set_params(dtype="float64")
    with pytest.raises(ValueError, match="too far out for the flow's float32"):
        est.transform(np.full((1, 13), 1e300))
    est.set_params(dtype="float32")
    with pytest.raises(ValueError, match="NaN"):
        est.inverse_transform(np.full((2, 13), np.nan))
    with pytest.raises(ValueError, match="latent coordinates .* but X holds text"):
        est.inverse_transform(np.full((2, 13), "x"))
    # Beyond float32 (1e39), and where the heavy-tailed latent's inverse
    # saturates (about 10 standard deviations out here): refused, not
    # mapped to rows that do not map back.
    z = np.zeros((3, 13))
    z[1, 0], z[2, 0] = 20.0, 1e39
    with pytest.raises(ValueError, match=r"2 row\(s\) \(the first is row 1\) are too far"):
        est.inverse_transform(z)
    z = np.zeros((1, 13))
    z[0, 0] = 8.0  # still inside: maps back
    np.testing.assert_allclose(est.transform(est.inverse_transform(z)), z, atol=1e-4)


def test_augmented_cnf_has_no_latent_map():
    X = load_wine().data[:, :3]
    aug = FlowDensity(
        "cnf", n_layers=1, hidden_units=8, max_iter=2, kind_options={"augment_dims": 2}
    )
    with pytest.raises(ValueError, match="augment_dims"):
        aug.fit_transform(X)  # refused before training
    assert not hasattr(aug, "flow_")
    # Parameters are validated before kind_options is read.
    with pytest.raises(ValueError, match="'kind_options' parameter"):
        FlowDensity("cnf", kind_options="rk4").fit_transform(X)
    aug.fit(X)
    for method in (aug.transform, aug.inverse_transform):
        with pytest.raises(ValueError, match="augment_dims"):
            method(X[:2])


def test_cnf_rows_beyond_the_solver_are_refused():
    """A continuous flow skips rows too far out for its solver: their latent
    is unknown (NaN), which transform reports instead of passing the input
    off as a latent."""
    X = load_wine().data
    est = FlowDensity(
        "cnf", gaussianize=False, n_layers=1, hidden_units=16, max_iter=5, random_state=0
    ).fit(X)
    far = X[:2].copy()
    far[1, 0] = 1e8
    assert est.score_samples(far)[1] == -np.inf
    with pytest.raises(ValueError, match=r"1 row\(s\) \(the first is row 1\)"):
        est.transform(far)
    with pytest.raises(ValueError, match="too far out"):
        est.inverse_transform(np.full((2, 13), 1e39))


def test_density_is_the_latent_density_times_the_jacobian():
    """score_samples(x) = log N(transform(x)) + log|det dT/dx|, with T the
    map transform returns, on a column far from zero (centred inside)."""
    rng = np.random.RandomState(0)
    X = load_wine().data[:, :4] + [0.0, 0.0, 0.0, 1e9]
    X[:, 3] += rng.normal(size=len(X))
    est = FlowDensity(
        n_layers=2, hidden_units=16, max_iter=10, dtype="float64", random_state=0
    ).fit(X)
    Z = est.transform(X)
    rows = torch.tensor(X - est.center_)
    with torch.no_grad():
        z, log_det = est.flow_.transform(rows)
    np.testing.assert_allclose(Z, z.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        est.score_samples(X), stats.norm.logpdf(Z).sum(axis=1) + log_det.numpy(), rtol=1e-10
    )
    np.testing.assert_allclose(est.inverse_transform(Z), X, rtol=1e-12, atol=1e-6)


def test_inputs_pipelines_and_persistence(tmp_path):
    import pickle

    df = load_wine(as_frame=True).data
    est = FlowDensity(n_layers=2, hidden_units=16, max_iter=5, random_state=0)
    Z = est.fit(df).transform(df)
    # Reversed (negative strides) and read-only arrays.
    np.testing.assert_allclose(est.inverse_transform(Z[::-1]), df.to_numpy()[::-1], rtol=1e-3)
    Z.setflags(write=False)
    assert est.inverse_transform(Z).shape == df.shape
    # DataFrames: latent columns by name, in transform's order only.
    frame = pd.DataFrame(Z, columns=est.get_feature_names_out())
    np.testing.assert_array_equal(est.inverse_transform(frame), est.inverse_transform(Z))
    with pytest.raises(ValueError, match="reads latent columns"):
        est.inverse_transform(df)
    # A Pipeline maps back through its steps.
    pipe = make_pipeline(StandardScaler(), FlowDensity(n_layers=2, hidden_units=16, max_iter=5))
    back = pipe.fit(df).inverse_transform(pipe.transform(df))
    np.testing.assert_allclose(back, df.to_numpy(), rtol=1e-3, atol=1e-3)
    # Pickled and saved models map as the original.
    est.save(tmp_path / "m.skflow")
    for copy in (pickle.loads(pickle.dumps(est)), FlowDensity.load(tmp_path / "m.skflow")):
        np.testing.assert_array_equal(copy.transform(df), Z)


def test_no_log_det_context_is_per_thread_and_not_pickled():
    """Sampling and latent maps skip the cnf divergence in their own thread
    only: meanwhile other threads, and pickles taken, keep their densities."""
    import pickle
    import threading

    from skflow.engine.transforms import without_log_det

    X = load_wine().data[:, :4]
    est = FlowDensity("cnf", n_layers=1, hidden_units=8, max_iter=3, random_state=0).fit(X)
    expected = est.score_samples(X)
    seen = []
    with without_log_det():
        thread = threading.Thread(target=lambda: seen.append(est.score_samples(X)))
        thread.start()
        thread.join()
        copy = pickle.loads(pickle.dumps(est))
        with without_log_det():  # nesting restores the outer state
            pass
        rows = torch.tensor(X[:2] - est.center_, dtype=torch.float32)
        with torch.no_grad():
            assert torch.isnan(est.flow_.transform(rows)[1]).all()
    np.testing.assert_array_equal(seen[0], expected)
    np.testing.assert_array_equal(copy.score_samples(X), expected)
    np.testing.assert_array_equal(est.score_samples(X), expected)
