"""Messy input and numerical failure: every case errors clearly or is handled.

Table-driven: each bad input either raises the named exception with a message
that says what is wrong, or is handled and gives finite, correct numbers.
Also: divergence recovery, the invertibility check, float64 mode,
and determinism across fits and processes. (Torch threads in parallel grid
search: ``test_estimator.py::test_grid_search_parallel_over_kinds``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from skflow import FlowDensity
from skflow._preprocessing import degenerate_columns
from skflow.engine import KINDS
from skflow.engine.diagnostics import round_trip_error
from skflow.engine.transforms import Compose, Transform
from skflow.exceptions import InvertibilityWarning

FAST = dict(n_layers=2, hidden_units=16, max_iter=10, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

X = make_moons(n_samples=300, noise=0.1, random_state=0)[0]


@pytest.fixture(scope="module")
def fitted():
    return FlowDensity(**FAST).fit(X)


def _with(value, row=0, col=0):
    bad = X.copy()
    bad[row, col] = value
    return bad


def _frame_with_text(dtype=object):
    pd = pytest.importorskip("pandas")
    return pd.DataFrame({"a": X[:, 0], "b": np.where(X[:, 1] > 0, "up", "down")}).astype(
        {"b": dtype}
    )


def _frame_with_missing():
    pd = pytest.importorskip("pandas")
    b = pd.array(np.round(X[:, 1] * 10).astype(int), dtype="Int64")
    b[3] = pd.NA
    return pd.DataFrame({"a": X[:, 0], "b": b})


# (input, exception, message that must appear). Each message names the problem.
BAD_FIT_INPUT = {
    "nan": (lambda: _with(np.nan), ValueError, "Input X contains NaN"),
    "inf": (lambda: _with(np.inf), ValueError, "infinity"),
    "-inf": (lambda: _with(-np.inf), ValueError, "infinity"),
    "0 rows": (lambda: X[:0], ValueError, "0 sample"),
    "1 row": (lambda: X[:1], ValueError, "minimum of 2 is required"),
    "1-d array": (lambda: X[:, 0], ValueError, "Expected 2D array"),
    "3-d array": (lambda: X[:, :, None], ValueError, "dim 3"),
    "sparse csr": (lambda: sp.csr_matrix(X), TypeError, "dense data is required"),
    "sparse coo": (lambda: sp.coo_array(X), TypeError, "dense data is required"),
    "strings": (lambda: X.astype(str).astype(object) + "x", ValueError, "numeric features only"),
    "text column": (_frame_with_text, ValueError, r"non-numeric columns: \['b'\]"),
    "categorical column": (
        lambda: _frame_with_text("category"),
        ValueError,
        r"categorical columns \['b'\].*OneHotEncoder",
    ),
    # Integer codes would convert silently, as if they had an order and scale.
    "integer categorical column": (
        lambda: _frame_with_text().assign(b=lambda f: (f.b == "up").astype(int).astype("category")),
        ValueError,
        r"categorical columns \['b'\].*astype\(float\)",
    ),
    "pandas NA": (_frame_with_missing, ValueError, "Input X contains NaN"),
    "pandas Series": (
        lambda: pytest.importorskip("pandas").Series(X[:, 0]),
        ValueError,
        "Expected a 2-dimensional container",
    ),
    "datetime column": (
        lambda: _frame_with_text().assign(
            b=lambda f: (
                pytest.importorskip("pandas").Timestamp("2020-01-01")
                + pytest.importorskip("pandas").to_timedelta(f.a, unit="D")
            )
        ),
        ValueError,
        r"date/time columns \['b'\].*total_seconds",
    ),
    "period column": (
        lambda: _frame_with_text().assign(
            b=lambda f: pytest.importorskip("pandas").period_range("2020-01", periods=len(f))
        ),
        ValueError,
        r"date/time columns \['b'\]",
    ),
    "pd.NA in an object column": (
        lambda: _frame_with_text().assign(
            b=lambda f: f.a.astype(object).where(f.a > f.a.min(), pytest.importorskip("pandas").NA)
        ),
        ValueError,
        r"missing values \(pd.NA\)",
    ),
    "complex": (lambda: X.astype(complex), ValueError, "Complex data not supported"),
    # Numbers the arithmetic cannot hold: refused, not fitted to rounding noise.
    "column of 1e40": (lambda: X * [1e40, 1], ValueError, r"\[0\] have values beyond 8.5"),
    "column of 1e-100": (lambda: X * [1, 1e-100], ValueError, r"\[1\] have a spread below"),
    # float32's smallest normal numbers: the marginal map's knot gaps were
    # subnormal, its slopes infinite, every score -inf.
    "columns of 3e-38": (
        lambda: X * 3e-38,
        ValueError,
        r"\[0, 1\] have a spread below 1.18e-34\. Try dtype='float64'",
    ),
    # numpy hands over counts of the array's unit: densities per day or per second.
    "datetime64 array": (
        lambda: np.datetime64("2020-01-01") + np.arange(len(X) * 2).reshape(-1, 2),
        ValueError,
        r"X holds datetime64\[D\] values. Convert them",
    ),
    "interval column": (
        lambda: _frame_with_text().assign(
            b=lambda f: pytest.importorskip("pandas").arrays.IntervalArray.from_breaks(
                np.arange(len(f) + 1)
            )
        ),
        TypeError,
        r"non-numeric values \(non-numeric columns: \['b'\]\)",
    ),
    # Beyond float64's limits too: no dtype='float64' hint.
    "column of 1e200 in float32": (
        lambda: X * [1e200, 1],
        ValueError,
        r"in float32: column\(s\) \[0\] have values beyond 8.5.*\. Rescale these",
    ),
    "column of 1e200": (
        lambda: X * [1e200, 1],
        ValueError,
        r"float64: column\(s\) \[0\] have values beyond 1e\+150",
    ),
}
FIT_PARAMS = {"column of 1e200": dict(dtype="float64")}


@pytest.mark.parametrize("case", sorted(BAD_FIT_INPUT))
def test_bad_fit_input_raises_clearly(case):
    make, exc, match = BAD_FIT_INPUT[case]
    with pytest.raises(exc, match=match):
        FlowDensity(**FAST, **FIT_PARAMS.get(case, {})).fit(make())


BAD_QUERY_INPUT = {
    "nan": (lambda: _with(np.nan)[:5], ValueError, "Input X contains NaN"),
    "inf": (lambda: _with(np.inf)[:5], ValueError, "infinity"),
    "0 rows": (lambda: X[:0], ValueError, "0 sample"),
    "too many features": (lambda: np.c_[X, X][:5], ValueError, "4 features, but FlowDensity"),
    "too few features": (lambda: X[:5, :1], ValueError, "1 features, but FlowDensity"),
    "sparse": (lambda: sp.csr_matrix(X), TypeError, "dense data is required"),
    "strings": (lambda: X[:5].astype(str).astype(object) + "x", ValueError, "numeric features"),
}


@pytest.mark.parametrize("method", ["score_samples", "predict", "decision_function", "score"])
@pytest.mark.parametrize("case", sorted(BAD_QUERY_INPUT))
def test_bad_query_input_raises_clearly(fitted, case, method):
    make, exc, match = BAD_QUERY_INPUT[case]
    with pytest.raises(exc, match=match):
        getattr(fitted, method)(make())


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _constant_column():
    return np.c_[X, np.full(len(X), 7.0)]


# Inputs that are valid, if unusual: fit works and scores are finite.
ODD_BUT_VALID = {
    "2 rows": lambda: X[:2],
    "3 rows": lambda: X[:3],
    "1 column": lambda: X[:, :1],
    "constant column": _constant_column,
    "integer dtype": lambda: np.round(X * 10).astype(np.int64),
    "float32": lambda: X.astype(np.float32),
    "read-only": lambda: _read_only(X),
    "fortran order": lambda: np.asfortranarray(X),
    "bool": lambda: X > 0,
}


@pytest.mark.parametrize("case", sorted(ODD_BUT_VALID))
def test_unusual_but_valid_input_is_handled(case):
    data = ODD_BUT_VALID[case]()
    est = FlowDensity(**FAST).fit(data)
    scores = est.score_samples(data)
    assert scores.shape == (len(data),) and np.isfinite(scores).all()
    assert est.sample(3, random_state=0).shape == (3, data.shape[1])
    assert np.isfinite(est.reconstruction_error_)


def test_float32_and_float64_input_give_the_same_model():
    x32 = X.astype(np.float32)
    a = FlowDensity(**FAST).fit(x32)
    b = FlowDensity(**FAST).fit(x32.astype(np.float64))
    np.testing.assert_array_equal(a.score_samples(x32), b.score_samples(x32))


def test_column_scaled_by_1e12_shifts_log_density_by_log_1e12():
    # Standardization inside the flow makes the fit scale-free; the density
    # of the scaled column is divided by the scale.
    scale = np.array([1e12, 1.0])
    a = FlowDensity(**FAST).fit(X)
    b = FlowDensity(**FAST).fit(X * scale)
    np.testing.assert_allclose(
        b.score_samples(X * scale), a.score_samples(X) - np.log(1e12), rtol=0, atol=1e-3
    )


FAR = [1e10, -1e10, 1e30, 1e37, 1e300, -1e300]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_densities_do_not_depend_on_where_the_data_sit(dtype):
    # Unix timestamps, a large offset or a large constant: the rows are
    # centred in float64 first, so float32 keeps every digit of the variation.
    params = {**FAST, "dtype": dtype}
    data = np.c_[X, np.full(len(X), 3.0)]
    reference = FlowDensity(**params).fit(data)
    for offset in ([0, 1.7e9, 0], [-1e6, 0, 1e18]):
        est = FlowDensity(**params).fit(data + offset)
        np.testing.assert_allclose(
            est.score_samples(data + offset), reference.score_samples(data), atol=1e-3
        )
        samples = est.sample(200, random_state=0)
        np.testing.assert_array_equal(samples[:, 2], (data + offset)[0, 2])  # the constant
        assert abs((samples - offset)[:, :2].mean(0) - data[:, :2].mean(0)).max() < 0.3


def test_float64_fits_what_float32_cannot_hold():
    params = {**FAST, "dtype": "float64"}
    est = FlowDensity(**params).fit(X)
    tiny = FlowDensity(**params).fit(X * [1e-100, 1])
    np.testing.assert_allclose(
        tiny.score_samples(X[:5] * [1e-100, 1]),
        est.score_samples(X[:5]) + np.log(1e100),
        rtol=1e-6,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_extreme_query_is_very_unlikely_never_nan(kind, dtype):
    est = FlowDensity(kind=kind, dtype=dtype, **FAST).fit(X)
    far = np.array([[v, 0.0] for v in FAR] + [[0.0, v] for v in FAR] + [[v, -v] for v in FAR])
    scores = est.score_samples(far)
    assert not np.isnan(scores).any()
    # Finite and far below every training row (the latent's logarithmic
    # tails make that tens of nats at 1e10, not millions), or the limit -inf.
    assert (scores < est.score_samples(X).min() - 30).all()
    assert (est.predict(far) == -1).all()
    # Rows are scored independently: an extreme row does not spoil its chunk
    # (cnf: an adaptive solver picks one step sequence per batch, so scores
    # move within its tolerance, 1e-5, with the other rows; documented).
    np.testing.assert_allclose(
        est.score_samples(np.r_[X[:3], far[:1]])[:3],
        est.score_samples(X[:3]),
        rtol=1e-4 if kind == "cnf" else 1e-6,
    )


def test_pandas_feature_names_with_and_without(fitted):
    pd = pytest.importorskip("pandas")
    named = pd.DataFrame(X, columns=["a", "b"])
    unnamed = pd.DataFrame(X)  # integer column labels: no feature names
    est = FlowDensity(**FAST).fit(named)
    assert list(est.feature_names_in_) == ["a", "b"]
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        est.score_samples(X)
    with pytest.raises(ValueError, match="feature names should match"):
        est.score_samples(named[["b", "a"]])
    est = FlowDensity(**FAST).fit(unnamed)
    assert not hasattr(est, "feature_names_in_")
    with pytest.warns(UserWarning, match="X has feature names, but FlowDensity was fitted"):
        est.score_samples(named)


@pytest.mark.parametrize(
    "n_samples, match",
    [(-1, "non-negative int"), (2.5, "non-negative int"), (True, "non-negative int")],
)
def test_sample_rejects_bad_counts(fitted, n_samples, match):
    with pytest.raises(ValueError, match=match):
        fitted.sample(n_samples)


@pytest.mark.parametrize("dequantize", ["auto", False])
def test_healthy_draws_are_not_checked_again(monkeypatch, dequantize):
    # Only draws far beyond the data are mapped forward again; a constant
    # column (range 0) made every draw "far".
    X3 = np.c_[X, np.full(len(X), 3.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FlowDensity(dequantize=dequantize, **FAST).fit(X3)
    checked = []
    real = est.flow_.transform.forward
    monkeypatch.setattr(est.flow_.transform, "forward", lambda x: checked.append(len(x)) or real(x))
    est.sample(2000, random_state=0)
    assert sum(checked) < 20
    # A range the model has left behind (a warm fit on moved rows keeps the
    # first fit's): "far" widens until it is rare again.
    est.lattice_range_ = est.lattice_range_ + 10 * np.ptp(X3, axis=0).max()
    checked.clear()
    est.sample(2000, random_state=0)
    assert sum(checked) <= 20


def test_draws_the_inverse_breaks_on_are_redrawn_or_warned_of(monkeypatch):
    est = FlowDensity(**FAST).fit(X)
    real = est.flow_.sample_with_latent
    calls = []

    def broken(n, generator=None, rows=slice(None, None, 2), value=float("nan")):
        # An inverse that breaks down on some draws: non-finite, or far out
        # (1e30; its forward map then misses the latent).
        x, z = real(n, generator)
        if len(calls) < limit:
            x[rows] = value
        calls.append(n)
        return x, z

    limit = 1  # the first call only: each broken row is drawn once more
    for value in (float("nan"), 1e30):
        calls.clear()
        monkeypatch.setattr(est.flow_, "sample_with_latent", partial(broken, value=value))
        with warnings.catch_warnings():
            warnings.simplefilter("error", InvertibilityWarning)
            S = est.sample(5, random_state=0)
        assert calls == [5, 3] and np.abs(S).max() < 10
        # Reproducible, and the unbroken rows are the draws as they were.
        monkeypatch.setattr(est.flow_, "sample_with_latent", real)
        np.testing.assert_array_equal(S[1::2], est.sample(5, random_state=0)[1::2])
    # An inverse that keeps breaking: those rows come back NaN, with a warning.
    limit = 100
    calls.clear()
    monkeypatch.setattr(est.flow_, "sample_with_latent", broken)
    with pytest.warns(InvertibilityWarning, match="1 of 5 samples are not finite"):
        S = est.sample(5, random_state=0)
    assert np.isnan(S[0]).all() and np.isfinite(S[1:]).all() and len(calls) == 9


# 160 TB; bytes beyond torch's sizes; a numpy int whose product would wrap.
@pytest.mark.parametrize("n_samples", [10**13, 2**60, 2**70, np.int64(2**62)])
def test_sample_too_large_to_draw_says_so(fitted, n_samples):
    with pytest.raises(MemoryError, match=r"draw fewer rows per call"):
        fitted.sample(n_samples)
    assert fitted.sample(3, random_state=0).shape == (3, 2)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sample_zero_rows(kind):
    est = FlowDensity(kind, n_layers=1, hidden_units=8, max_iter=1, random_state=0).fit(X)
    out = est.sample(0)
    assert out.shape == (0, 2) and out.dtype == np.float64
    assert est.sample(0, as_frame=True).shape == (0, 2)


def test_reversed_and_strided_arrays_score_like_contiguous_ones(fitted):
    query = X[:50]
    expected = fitted.score_samples(query)
    np.testing.assert_array_equal(fitted.score_samples(query[::-1]), expected[::-1])
    np.testing.assert_array_equal(fitted.score_samples(query[::-2]), expected[::-2])
    refit = FlowDensity(**{**FAST, "contamination": 0.1}).fit(X[::-1])
    assert np.isfinite(refit.offset_)


@pytest.mark.parametrize("stage", ["validation", "offset", "interrupt"])
def test_failed_refit_keeps_the_fitted_model(stage, monkeypatch):
    """A refit that fails part-way (after validate_data reset the shape, or
    after the new flow was stored) leaves the previous model untouched."""
    est = FlowDensity(**{**FAST, "contamination": 0.1}).fit(X)
    before = {k: v for k, v in vars(est).items() if k.endswith("_")}
    scores = est.score_samples(X)
    X4 = np.random.RandomState(1).randn(80, 4) * 5 + 3
    if stage == "validation":
        est.set_params(hidden_units=(0,))
        error = ValueError
    else:
        error = RuntimeError if stage == "offset" else KeyboardInterrupt

        def fail(*args, **kwargs):
            raise error("boom")

        name = "_compute_offset" if stage == "offset" else "_check_invertibility"
        monkeypatch.setattr(FlowDensity, name, fail)
    with pytest.raises(error):
        est.fit(X4)
    assert {k: v for k, v in vars(est).items() if k.endswith("_")}.keys() == before.keys()
    assert est.n_features_in_ == 2 and est.flow_ is before["flow_"]
    np.testing.assert_array_equal(est.score_samples(X), scores)
    assert (est.predict(X) == -1).mean() == pytest.approx(0.1, abs=0.02)


# Each message must name the parameter and say what is allowed.
INVALID_PARAMS = [
    (dict(kind="nope"), r"'kind' parameter .* must be a str among"),
    (dict(n_layers=0), r"'n_layers' parameter .* must be an int in the range \[1, inf\)"),
    (dict(n_layers=2.5), r"'n_layers' parameter .* must be an int"),
    (dict(max_iter=0), r"'max_iter' parameter .* range \[1, inf\)"),
    (dict(batch_size=0), r"'batch_size' parameter .* must be a str among \{'auto'\} or an int"),
    (dict(batch_size="big"), r"'batch_size' parameter"),
    (dict(learning_rate=0.0), r"'learning_rate' parameter .* range \(0.0, inf\)"),
    (dict(weight_decay=-1.0), r"'weight_decay' parameter .* range \[0.0, inf\)"),
    (dict(validation_fraction=0.0), r"'validation_fraction' parameter .* range \(0.0, 1.0\)"),
    (dict(n_iter_no_change=0), r"'n_iter_no_change' parameter"),
    (dict(tol=-1.0), r"'tol' parameter .* range \[0.0, inf\)"),
    (dict(contamination=0.0), r"'contamination' parameter .* range \(0.0, 0.5\]"),
    (dict(dtype="float16"), r"'dtype' parameter .* among \{'float(32|64)', 'float(32|64)'\}"),
    (dict(max_time=0), r"'max_time' parameter .* range \(0.0, inf\)"),
    (dict(random_state="seed"), r"'random_state' parameter"),
    (dict(kind_options=[1]), r"'kind_options' parameter .* None or an instance of 'dict'"),
    (dict(hidden_units=(8, -1)), r"hidden_units must be .*a positive int or a tuple"),
    # (bools pass as Integral and Real to scikit-learn's validation)
    (dict(hidden_units=True), r"'hidden_units' parameter .* a number, not a bool"),
    (dict(n_layers=True), r"'n_layers' parameter .* a number, not a bool; got True"),
    (dict(max_iter=True), r"'max_iter' parameter .* not a bool"),
    (dict(batch_size=True), r"'batch_size' parameter .* not a bool"),
    (dict(max_time=True), r"'max_time' parameter .* not a bool"),
    (dict(learning_rate=True), r"'learning_rate' parameter .* not a bool"),
    (dict(hidden_units=(8, True)), r"hidden_units must be .*a positive int or a tuple"),
    (dict(device="tpu"), r"device='tpu'"),
]


@pytest.mark.parametrize("params, match", INVALID_PARAMS, ids=lambda v: str(v)[:30])
def test_invalid_parameter_messages_say_what_is_allowed(params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FlowDensity(**{**FAST, **params}).fit(X)


# ------------------------------------------------------------ numerical failure
@pytest.mark.parametrize("kind", ["maf", "realnvp"])
def test_divergence_restores_best_weights_and_says_what_to_try(kind):
    with pytest.warns(ConvergenceWarning, match="diverged.*Try a smaller learning_rate"):
        # 1e10: the heavy-tailed latent keeps some kinds finite at 1e7.
        est = FlowDensity(kind=kind, learning_rate=1e10, n_layers=3, max_iter=30, random_state=0)
        est.fit(X)
    assert np.isnan(est.loss_curve_[-1]) or est.n_iter_ < 30
    assert np.isfinite(est.score_samples(X)).all()
    assert np.isfinite(est.sample(5, random_state=0)).all()
    assert est.reconstruction_error_ < 1e-2


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("float64", 1e-10)])
def test_healthy_fit_inverts_its_training_data(dtype, tol):
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvertibilityWarning)
        est = FlowDensity(dtype=dtype, **FAST).fit(X)
    assert 0 <= est.reconstruction_error_ < tol


class _LossyInverse(Transform):
    """Identity forward, inverse off by 10%: a layer whose inverse is broken."""

    def forward(self, x):
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z):
        return 1.1 * z, z.new_zeros(z.shape[0])


def test_broken_inverse_is_measured_and_warned(monkeypatch):
    maf = KINDS["maf"]
    monkeypatch.setitem(KINDS, "maf", lambda d, **kw: Compose(maf(d, **kw), _LossyInverse()))
    with pytest.warns(InvertibilityWarning, match="does not invert its training data"):
        est = FlowDensity(**FAST).fit(X)
    assert est.reconstruction_error_ > 0.05
    assert np.isfinite(est.score_samples(X)).all()


def test_exploding_inverse_of_a_real_fit_is_caught():
    # An absurd learning rate does not make nsf's loss diverge (its splines
    # are bounded) but leaves near-step-shaped splines (huge knot slopes,
    # nearly flat in between), whose autoregressive inverse misses by whole
    # standard deviations: an exploding inverse (Behrmann et al. 2021). Only
    # the round-trip check notices.
    # early_stopping=False keeps the final weights: with validation, the
    # initial Gaussian-copula weights stay best and are restored instead.
    params = dict(
        kind="nsf",
        learning_rate=1e7,
        n_layers=3,
        hidden_units=32,
        max_iter=10,
        early_stopping=False,
    )
    with pytest.warns(InvertibilityWarning, match="round-trip error .* standard deviations"):
        est = FlowDensity(**params, random_state=0).fit(X)
    assert est.reconstruction_error_ > 1.0
    assert np.isfinite(est.score_samples(X)).all()


def test_round_trip_error_reports_nan_as_inf():
    class Nan(_LossyInverse):
        def inverse(self, z):
            return torch.full_like(z, torch.nan), z.new_zeros(z.shape[0])

    err = round_trip_error(Nan(), torch.zeros(3, 2))
    assert err.shape == (3, 2) and torch.isinf(err).all()


def test_float64_mode_is_exact_to_more_digits():
    est = FlowDensity(dtype="float64", **FAST).fit(X)
    assert est.flow_.base._anchor.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in est.flow_.parameters())
    lo = FlowDensity(dtype="float32", **FAST).fit(X)
    # Same initialization and data order: the two precisions agree closely.
    np.testing.assert_allclose(lo.score_samples(X), est.score_samples(X), atol=5e-3)
    assert est.reconstruction_error_ < 1e-3 * lo.reconstruction_error_


# ------------------------------------------------------------------ determinism
def _fingerprint(est, X):
    """Exact bits of everything a fit produces that a user sees."""
    return [
        [float(v).hex() for v in est.loss_curve_],
        [float(v).hex() for v in est.score_samples(X)],
        [float(v).hex() for v in est.sample(7, random_state=3).ravel()],
    ]


_IN_FRESH_PROCESS = """
import json, sys, warnings
import torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
from sklearn.datasets import make_moons
from skflow import FlowDensity
from skflow.engine import KINDS
from test_robustness import _fingerprint
X = make_moons(n_samples=300, noise=0.1, random_state=0)[0]
params = json.loads(sys.argv[1])
print(json.dumps({kind: _fingerprint(FlowDensity(kind=kind, **params).fit(X), X)
                  for kind in sorted(KINDS)}))
"""


def test_bitwise_reproducible_across_fits_and_processes():
    # Same seed, thread count (1, as conftest sets) and build: identical bits.
    first = {kind: _fingerprint(FlowDensity(kind=kind, **FAST).fit(X), X) for kind in KINDS}
    for kind in KINDS:
        assert _fingerprint(FlowDensity(kind=kind, **FAST).fit(X), X) == first[kind], kind
    out = subprocess.run(
        [sys.executable, "-c", _IN_FRESH_PROCESS, json.dumps(FAST)],
        capture_output=True,
        text=True,
        # Same environment, hence the same BLAS thread count as this process:
        # numpy's BLAS sums in a thread-dependent order (whitening statistics).
        env=dict(os.environ),
        cwd=os.path.dirname(__file__),
        check=True,
        timeout=300,
    )
    assert json.loads(out.stdout) == first


def test_fits_in_threads_match_fits_alone_and_leave_the_global_rng_alone():
    # Threads share torch's global generators: fits running at once (joblib's
    # threading backend) must not draw each other's initial weights or
    # training noise, and must leave those generators as they were.
    from concurrent.futures import ThreadPoolExecutor

    # Integer codes (dequantized) and every kind of layer noise.
    data = np.c_[X, np.random.default_rng(0).integers(0, 4, len(X))]
    cases = [
        ("maf", {}),
        ("glow", {}),
        ("cnf", {"kind_options": {"training": "flow_matching", "augment_dims": 1}}),
        ("cnf", {"kind_options": {"training": "mle", "trace": "hutchinson"}, "max_iter": 2}),
    ]

    def fingerprint(case):
        kind, params = case
        return _fingerprint(FlowDensity(kind=kind, **{**FAST, **params}).fit(data), data)

    alone = [fingerprint(case) for case in cases]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(fingerprint, cases * 2))
    assert together == alone * 2
    assert torch.equal(torch.get_rng_state(), before)


def test_building_a_flow_leaves_other_threads_draws_alone():
    # Initial weights come from a generator of the fit's own: a thread
    # drawing from torch's global generator meanwhile neither changes them
    # nor sees its own stream rewound (numbers repeated).
    import threading

    alone = _fingerprint(FlowDensity(**{**FAST, "max_iter": 1}).fit(X), X)
    torch.manual_seed(123)
    expected = torch.rand(200_000, dtype=torch.float64)
    torch.manual_seed(123)
    draws, stop = [], threading.Event()

    def draw():
        while not stop.is_set():
            draws.append(torch.rand(1, dtype=torch.float64))

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        fits = [_fingerprint(FlowDensity(**{**FAST, "max_iter": 1}).fit(X), X) for _ in range(5)]
    finally:
        stop.set()
        thread.join()
    assert fits == [alone] * 5
    drawn = torch.cat(draws)[: expected.numel()]
    assert torch.equal(drawn, expected[: drawn.numel()])


def test_plain_torch_adds_no_python_dispatch_by_default():
    # A torch function mode (what a device context is) routes every torch
    # call through Python: small fits ran 1.6x slower under one.
    from skflow.engine.device import plain_torch

    with plain_torch(training=True):
        assert torch._C._len_torch_function_stack() == 0
    with torch.device("meta"), plain_torch():
        assert torch.empty(1).device.type == "cpu"


def test_plain_torch_reads_autocast_on_torch_before_2_4(monkeypatch):
    # torch < 2.4's is_autocast_enabled takes no argument (CUDA's state).
    from skflow.engine.device import _autocast_enabled

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with monkeypatch.context() as patch:
            patch.setattr(torch, "is_autocast_enabled", lambda: False)
            assert _autocast_enabled("cpu") and not _autocast_enabled("cuda")
    assert not _autocast_enabled("cpu")


def test_seeded_build_keeps_a_generator_the_call_passes():
    from skflow.engine.rng import seeded_build

    rate = torch.full((4,), 3.0)
    expected = torch.poisson(rate, torch.Generator().manual_seed(1))
    with seeded_build(0):
        by_position = torch.poisson(rate, torch.Generator().manual_seed(1))
        by_name = torch.rand(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(by_position, expected)
    assert torch.equal(by_name, torch.rand(4, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "settings",
    ["float64_default", "meta_default_device", "no_grad", "inference_mode", "autocast"],
)
def test_callers_torch_settings_do_not_change_fits(settings):
    # The caller's process-wide or thread-wide torch settings around a fit
    # (a float64 default, a default device, a no_grad block for a whole
    # script, bfloat16 autocast) must neither break it nor change its bits.
    from contextlib import ExitStack

    data = np.c_[X, np.random.default_rng(0).integers(0, 4, len(X))]
    kinds = [("maf", {}), ("cnf", {"kind_options": {"training": "flow_matching"}})]
    alone = [_fingerprint(FlowDensity(kind=k, **{**FAST, **p}).fit(data), data) for k, p in kinds]
    fitted = FlowDensity(**FAST).fit(data)
    with ExitStack() as stack:
        if settings == "float64_default":
            stack.callback(torch.set_default_dtype, torch.get_default_dtype())
            torch.set_default_dtype(torch.float64)
        elif settings == "meta_default_device":
            stack.enter_context(torch.device("meta"))
        elif settings == "no_grad":
            stack.enter_context(torch.no_grad())
        elif settings == "inference_mode":
            stack.enter_context(torch.inference_mode())
        else:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        inside = [
            _fingerprint(FlowDensity(kind=k, **{**FAST, **p}).fit(data), data) for k, p in kinds
        ]
        assert _fingerprint(fitted, data)[1:] == alone[0][1:]
    assert inside == alone


# ------------------------------------------------------------------------- load
def test_scoring_and_sampling_in_chunks_match_one_pass(fitted, monkeypatch):
    # Chunks bound the memory of huge inputs (benchmarks/memory.py measures
    # it); they must not change the numbers.
    import skflow.engine.device

    scores, samples = fitted.score_samples(X), fitted.sample(50, random_state=0)
    monkeypatch.setattr(skflow.engine.device, "eval_chunk", lambda device: 7)
    np.testing.assert_allclose(fitted.score_samples(X), scores, rtol=1e-6)
    np.testing.assert_allclose(fitted.sample(50, random_state=0), samples, rtol=1e-5, atol=1e-6)


def test_integers_beyond_2_53_warn_at_the_callers_line():
    big = np.int64(2**60) + np.random.RandomState(0).randint(0, 1000, (100, 2))
    with pytest.warns(UserWarning, match=r"integers beyond 2\*\*53 \(columns \[0, 1\]\)") as record:
        est = FlowDensity(**FAST).fit(big)
    assert any(w.filename == __file__ for w in record if "2**53" in str(w.message))
    with pytest.warns(UserWarning, match="beyond 2"):
        est.score_samples(big)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        est.score_samples(big - 2**60)
    # Python ints in lists (with floats beside them, or beyond int64): float64
    # conversion rounded them before any dtype could tell.
    for rows in ([[2**60 + i, 0.5 * i] for i in range(60)], [[2**70 + i, i] for i in range(60)]):
        with pytest.warns(UserWarning, match=r"integers beyond 2\*\*53 \(columns \[0\]\)"):
            est.score_samples(rows)


def test_columns_without_a_density_warn():
    # A duplicated (or derived) column, or a constant one left without
    # dequantization: scores there measure float precision (+4 nats per row
    # above a proper 2-D fit, and -63 for a row 0.1 off the duplicate).
    rng = np.random.RandomState(0)
    a, b = rng.randn(2, 300)
    with pytest.warns(UserWarning, match=r"Columns \[0, 1, 2\] of X are .* linearly dependent"):
        FlowDensity(**FAST).fit(np.c_[a, b, a + b])
    with pytest.warns(UserWarning, match=r"Column\(s\) \[1\] of X are constant and not dequant"):
        FlowDensity(dequantize=False, **FAST).fit(np.c_[a, np.full(300, 7.0)])
    # Discrete columns left without cells: their density grows with training
    # (breastw's codes: held-out score +36.5 undequantized, -7.2 with cells).
    codes = np.c_[a, rng.randint(0, 10, 300), 0.01 * rng.randint(0, 5, 300)]
    with pytest.warns(UserWarning, match=r"\[1, 2\] of X take .* \(steps of \[1.0, 0.01\]\)"):
        FlowDensity(dequantize=False, **FAST).fit(codes)
    with pytest.warns(UserWarning, match=r"Column\(s\) \[2\] of X take only a few distinct"):
        FlowDensity(dequantize=[0, 1, 0], **FAST).fit(codes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        FlowDensity(**FAST).fit(np.c_[a, np.full(300, 7.0), b + 1e-3 * a])  # cell, tilt
        FlowDensity(dequantize=[0, 1, 0.005], **FAST).fit(codes)  # (narrower cells: a choice)
        # A missing-value code shared by a few rows ties columns only there
        # (correlation 1 - 1e-20); the bulk must show the relation too.
        coded = rng.rand(2000, 3)
        coded[:4, :2] = -999999.0
        FlowDensity(**FAST).fit(coded)
    assert degenerate_columns(coded, np.zeros(3)) == ([], [])
    coded[:, 2] = coded[:, 0] - coded[:, 1]  # (but a relation in the bulk is)
    assert {0, 1} <= set(degenerate_columns(coded, np.zeros(3))[1])
    # Every row far out somewhere: no bulk to check against, the relation stands.
    spread = rng.normal(size=(600, 6))
    for j in range(6):
        spread[j * 100 : (j + 1) * 100, j] = 1e6 + np.arange(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tied = degenerate_columns(np.c_[spread, spread[:, 0] + spread[:, 1]], np.zeros(7))[1]
    assert tied == [0, 1, 6]


def test_fewer_rows_than_features_warns_at_the_callers_line():
    X = np.random.default_rng(0).normal(size=(8, 10))
    with pytest.warns(UserWarning, match="7 rows .* in 10 dimensions") as record:
        FlowDensity(n_layers=1, hidden_units=4, max_iter=2, random_state=0).fit(X)
    assert any(w.filename == __file__ for w in record if "dimensions" in str(w.message))
    assert any("smaller validation_fraction" in str(w.message) for w in record)
    # Without early stopping there is no validation split to blame.
    with pytest.warns(
        UserWarning, match=r"trains on 8 rows in 10 dimensions.*PCA in a Pipeline\)\.$"
    ):
        FlowDensity(n_layers=1, hidden_units=4, max_iter=2, early_stopping=False).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        FlowDensity(n_layers=1, hidden_units=4, max_iter=2, random_state=0).fit(X[:, :5])


def test_one_column_warns_for_kinds_that_cannot_shape_it():
    # Two modes in one column: an autoregressive or coupling layer has
    # nothing to condition on (an affine map), a spline is not so limited.
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(-3, 0.5, 300), rng.normal(3, 0.5, 300)][:, None]
    params = dict(gaussianize=False, max_iter=60, random_state=0)
    with pytest.warns(UserWarning, match="kind='maf' cannot shape a single column") as record:
        maf = FlowDensity("maf", **params).fit(X[::2])
    assert all(w.filename == __file__ for w in record if "single column" in str(w.message))
    # Through fit_transform or a Pipeline, fit's warnings still point here.
    with pytest.warns(UserWarning, match="single column") as record:
        FlowDensity("maf", **{**params, "max_iter": 2}).fit_transform(X[::2])
        make_pipeline(FlowDensity("maf", **{**params, "max_iter": 2})).fit(X[::2])
    assert {w.filename for w in record} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        nsf = FlowDensity("nsf", **params).fit(X[::2])
    assert nsf.score(X[1::2]) > maf.score(X[1::2]) + 0.5
