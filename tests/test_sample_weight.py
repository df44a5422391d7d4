"""``fit(X, sample_weight=...)``: the flow fits the weighted distribution."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skflow import FlowDensity
from skflow._preprocessing import (
    effective_rows,
    standardization,
    weighted_lower_median,
    weighted_quantile,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
FAST = dict(n_layers=2, hidden_units=16, max_iter=15, random_state=0)


@pytest.fixture(scope="module")
def clusters():
    """Two equal clusters; the left one weighs 9 times as much."""
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(-3, 1, (400, 2)), rng.normal(3, 1, (400, 2))]
    return X, np.r_[np.full(400, 9.0), np.ones(400)]


@pytest.mark.parametrize(
    "kind, options",
    [
        ("maf", None),
        ("realnvp", None),
        # Flow matching pairs noise and data rows within each minibatch: the
        # weights must not skew which noise is paired (rows are resampled).
        ("cnf", {"training": "flow_matching"}),
    ],
)
def test_weighted_fit_puts_the_weighted_mass(clusters, kind, options):
    X, w = clusters
    est = FlowDensity(kind, n_layers=3, max_iter=60, kind_options=options, random_state=0)
    est.fit(X, sample_weight=w)
    left = (est.sample(4000, random_state=0)[:, 0] < 0).mean()
    assert left == pytest.approx(0.9, abs=0.03)
    # The density itself, integrated on a grid, holds the same share.
    g = np.linspace(-9, 9, 181)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    p = np.exp(est.score_samples(grid)) * (g[1] - g[0]) ** 2
    assert p.sum() == pytest.approx(1.0, abs=0.03)
    assert p[grid[:, 0] < 0].sum() / p.sum() == pytest.approx(0.9, abs=0.03)
    # Unweighted, the same data split evenly.
    even = FlowDensity(kind, n_layers=3, max_iter=60, kind_options=options, random_state=0)
    assert (even.fit(X).sample(4000, random_state=0)[:, 0] < 0).mean() == pytest.approx(
        0.5, abs=0.05
    )


def test_reweighting_a_real_table():
    """breast_cancer with malignant rows weighted 5x: held-out malignant rows
    score higher, benign ones lower, than under the unweighted fit."""
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    w = np.where(y_train == 0, 5.0, 1.0)
    plain = FlowDensity(random_state=0).fit(X_train).score_samples(X_test)
    weighted = FlowDensity(random_state=0).fit(X_train, sample_weight=w).score_samples(X_test)
    assert weighted[y_test == 0].mean() > plain[y_test == 0].mean() + 0.5
    assert weighted[y_test == 1].mean() < plain[y_test == 1].mean() - 2.0


def test_zero_weights_are_removed_rows(clusters):
    X, w = clusters
    w = w * (np.arange(len(w)) % 3 > 0)
    est = FlowDensity(**FAST).fit(X, sample_weight=w)
    kept = FlowDensity(**FAST).fit(X[w > 0], sample_weight=w[w > 0])
    np.testing.assert_array_equal(est.score_samples(X), kept.score_samples(X))
    assert est.offset_ == kept.offset_
    # Zeros and ones: the plain fit of the kept rows.
    ones = FlowDensity(**FAST).fit(X, sample_weight=(w > 0).astype(float))
    plain = FlowDensity(**FAST).fit(X[w > 0])
    np.testing.assert_array_equal(ones.score_samples(X), plain.score_samples(X))


def test_equal_and_scaled_weights(clusters):
    X, w = clusters
    plain = FlowDensity(**FAST).fit(X).score_samples(X)
    ones = FlowDensity(**FAST).fit(X, sample_weight=np.full(len(X), 3.0)).score_samples(X)
    np.testing.assert_array_equal(plain, ones)
    a = FlowDensity(**FAST).fit(X, sample_weight=w).score_samples(X)
    b = FlowDensity(**FAST).fit(X, sample_weight=list(w * 1e-3)).score_samples(X)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, plain, atol=0.1)


def test_contamination_is_a_share_of_the_weight(clusters):
    X, w = clusters
    est = FlowDensity(contamination=0.2, **FAST).fit(X, sample_weight=w)
    flagged = est.predict(X) == -1
    assert w[flagged].sum() / w.sum() == pytest.approx(0.2, abs=0.01)
    assert flagged.mean() > 0.4  # the light cluster holds most flagged rows
    np.testing.assert_array_equal(
        FlowDensity(contamination=0.2, **FAST).fit_predict(X, sample_weight=w), est.predict(X)
    )
    # A lowest-scoring row holding 20% of the weight is not that 1%.
    X_far = np.vstack([np.full((1, X.shape[1]), 4.0), X[:199]])
    w_far = np.r_[50.0, np.ones(199)]
    est = FlowDensity(contamination=0.01, **FAST).fit(X_far, sample_weight=w_far)
    assert est.score_samples(X_far).argmin() == 0
    flagged = est.predict(X_far) == -1
    assert not flagged[0] and w_far[flagged].sum() / w_far.sum() <= 0.01


def test_weights_reach_the_flow_through_pipeline_and_search(clusters):
    X, w = clusters
    pipe = make_pipeline(StandardScaler(), FlowDensity(**FAST))
    pipe.fit(X, flowdensity__sample_weight=w)
    scaled = StandardScaler().fit_transform(X)
    alone = FlowDensity(**FAST).fit(scaled, sample_weight=w)
    np.testing.assert_array_equal(pipe.score_samples(X), alone.score_samples(scaled))
    # The search fits and scores each fold with its weights (score takes
    # them, so scikit-learn does not warn of an unweighted score).
    cv = KFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(FlowDensity(**FAST), {"n_layers": [1, 2]}, cv=cv)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*does not support sample_weight")
        search.fit(X, sample_weight=w)
    # The first fold's score is the weighted score of the weighted fit.
    train, test = next(cv.split(X))
    fold = FlowDensity(**{**FAST, "n_layers": 1}).fit(X[train], sample_weight=w[train])
    expected = fold.score(X[test], sample_weight=w[test])
    assert search.cv_results_["split0_test_score"][0] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(fold.score(X[test]), rel=1e-3)


def test_weighted_score(clusters):
    X, w = clusters
    est = FlowDensity(**FAST).fit(X)
    s = est.score_samples(X)
    assert est.score(X, sample_weight=w) == pytest.approx(np.average(s, weights=w))
    assert est.score(X, sample_weight=np.ones(len(X))) == pytest.approx(est.score(X))
    # A row of weight 0 does not count, even at log-density -inf.
    far = np.r_[X, [[1e300, 0.0]]]
    assert est.score(far, sample_weight=np.r_[w, 0.0]) == pytest.approx(
        est.score(X, sample_weight=w)
    )
    with pytest.raises(ValueError, match="Negative"):
        est.score(X, sample_weight=-w)


@pytest.mark.parametrize(
    "weights, match",
    [
        (-np.ones(50), "Negative"),
        (np.r_[np.nan, np.ones(49)], "NaN"),
        (np.ones(49), "inconsistent|shape"),
        (np.ones((50, 2)), "1D|shape"),
        (np.zeros(50), "zero"),
        (np.r_[1.0, np.zeros(49)], "at least 2 rows of positive weight"),
        # All but 1e-298 of the weight on one row: no spread left to fit.
        (np.r_[1e300, np.ones(49)], "nearly all the weight on one row"),
    ],
)
def test_bad_weights_fail_fast_and_keep_the_model(weights, match):
    X = np.random.RandomState(0).normal(size=(50, 2))
    est = FlowDensity(**FAST).fit(X)
    offset = est.offset_
    with pytest.raises(ValueError, match=match):
        est.fit(X, sample_weight=weights)
    assert est.offset_ == offset and est.score_samples(X).shape == (50,)


def test_weighted_statistics_equal_those_of_repeated_rows():
    rng = np.random.RandomState(0)
    X = rng.gamma(2.0, size=(40, 3))
    counts = rng.randint(1, 5, size=40)
    repeated = np.repeat(X, counts, axis=0)
    for j in range(3):
        assert (
            weighted_lower_median(X[:, j], counts.astype(float))
            == np.sort(repeated[:, j])[(len(repeated) - 1) // 2]
        )
    noise = np.full(3, 0.01)
    loc_w, scale_w = standardization(X, noise, False, counts.astype(float))
    loc_r, scale_r = standardization(repeated, noise, False)
    np.testing.assert_allclose(loc_w, loc_r)
    np.testing.assert_allclose(scale_w, scale_r)
    # Equal weights give numpy's quantiles; a heavier value pulls them.
    q = np.linspace(0, 1, 11)
    values = rng.normal(size=40)
    np.testing.assert_allclose(
        weighted_quantile(values, q, np.full(40, 0.3)), np.quantile(values, q)
    )
    heavy = np.ones(40)
    heavy[np.argmax(values)] = 100.0
    assert weighted_quantile(values, 0.5, heavy) > np.quantile(values, 0.9)
    # A heavy lowest value is the low quantiles (as its copies would be),
    # not a point below them; integer weights come close to repeated rows.
    ten = np.arange(10.0)
    assert weighted_quantile(ten, 0.01, np.r_[10.0, np.ones(9)]) == 0.0
    counts = rng.randint(1, 4, size=40)
    q_mid = np.linspace(0.1, 0.9, 9)
    gap = weighted_quantile(values, q_mid, counts.astype(float)) - np.quantile(
        np.repeat(values, counts), q_mid
    )
    assert np.abs(gap).max() < 0.1 * values.std()


def test_tiny_and_huge_weights():
    """Weights far below or above 1 (importance weights exp(log-ratio)) fit:
    sums neither underflow nor overflow, in float32 or float64."""
    X = np.random.RandomState(0).normal(size=(50, 2))
    for dtype, w in [
        ("float32", np.r_[np.ones(2), np.full(48, 1e-50)]),
        ("float64", np.r_[np.full(2, 1e300), np.full(48, 1e-300)]),
        ("float32", np.r_[np.full(25, 1e-200), np.full(25, 3e-200)]),
    ]:
        est = FlowDensity(dtype=dtype, **FAST).fit(X, sample_weight=w)
        assert np.isfinite(est.score_samples(X)).all() and np.isfinite(est.offset_)
    # The two heavy rows in the validation split, the rest (1e-50 of them)
    # in training: training resamples its own rows by their relative weights.
    rng = np.random.RandomState(0)  # fit's draws for random_state=0: a seed, the split
    rng.randint(np.iinfo(np.int32).max)
    order = rng.permutation(50)
    w = np.full(50, 1e-50)
    w[order[:5]] = 1.0
    est = FlowDensity(**FAST).fit(X, sample_weight=w)
    assert np.isfinite(est.loss_curve_).all() and np.isfinite(est.validation_scores_).all()


def test_weighted_draws_are_a_permutation_for_equal_weights():
    """Systematic resampling: each row is drawn n w / sum(w) times, rounded."""
    import torch

    from skflow.engine.training import _WeightedDraws

    gen = torch.Generator().manual_seed(0)
    rows = _WeightedDraws(torch.full((101,), 0.3)).epoch(gen)
    assert sorted(rows.tolist()) == list(range(101))
    w = torch.tensor([6.0, 3.0, 1.0, 0.0] * 25)
    counts = np.bincount(_WeightedDraws(w).epoch(gen).numpy(), minlength=100)
    expected = 100 * w.numpy() / w.sum().item()
    assert np.all(np.abs(counts - expected) < 1) and counts[3::4].sum() == 0
    with pytest.raises(ValueError, match="non-negative"):
        _WeightedDraws(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="all be zero"):
        _WeightedDraws(torch.zeros(3))


def test_score_does_not_depend_on_the_weights_scale(clusters):
    X, w = clusters
    est = FlowDensity(**FAST).fit(X)
    expected = est.score(X, sample_weight=w)
    for scale in (1e305, 1e-320):
        assert est.score(X, sample_weight=w * scale) == pytest.approx(expected, rel=1e-12)
    tiny = np.full(len(X), 5e-324)
    assert est.score(X, sample_weight=tiny) == pytest.approx(est.score(X), rel=1e-12)


def test_few_effective_rows_warn():
    """Weight concentrated on a few rows collapses the density as few rows
    do: fit says so."""
    X = np.random.RandomState(0).normal(size=(500, 3))
    w = np.r_[np.ones(3), np.full(497, 1e-12)]
    with pytest.warns(UserWarning, match=r"as many as \d+\.\d equally weighted ones,"):
        FlowDensity(**FAST).fit(X, sample_weight=w)


def test_tiny_weights_count_as_rows_not_as_nan():
    # Squares of 1e-200 underflow: the effective number of such rows must
    # come from scaled weights (it is 0/0 otherwise, and the marginal map NaN).
    assert effective_rows(98, np.full(98, 1e-200)) == pytest.approx(98.0)
    X = np.random.RandomState(0).normal(size=(100, 3))
    w = np.r_[1.0, 1.0, np.full(98, 1e-200)]
    assert np.isfinite(FlowDensity(**FAST).fit(X, sample_weight=w).score_samples(X)).all()


def test_metadata_routing():
    """With scikit-learn's metadata routing, request the weights for fit
    and score; the search then weighs both."""
    import sklearn

    X = np.random.RandomState(0).normal(size=(200, 2))
    w = np.r_[np.full(100, 3.0), np.ones(100)]
    with sklearn.config_context(enable_metadata_routing=True):
        est = FlowDensity(**FAST).set_fit_request(sample_weight=True)
        est.set_score_request(sample_weight=True)
        cv = KFold(2, shuffle=True, random_state=0)
        search = GridSearchCV(est, {"n_layers": [1, 2]}, cv=cv).fit(X, sample_weight=w)
        train, test = next(cv.split(X))
        fold = clone(est).set_params(n_layers=1).fit(X[train], sample_weight=w[train])
        expected = fold.score(X[test], sample_weight=w[test])
        assert search.cv_results_["split0_test_score"][0] == pytest.approx(expected, rel=1e-6)
        scaler = StandardScaler().set_fit_request(sample_weight=False)
        pipe = make_pipeline(scaler, clone(est)).fit(X, sample_weight=w)
    assert search.best_estimator_.n_features_in_ == 2
    scaled = StandardScaler().fit_transform(X)
    np.testing.assert_array_equal(
        pipe.score_samples(X),
        FlowDensity(**FAST).fit(scaled, sample_weight=w).score_samples(scaled),
    )
