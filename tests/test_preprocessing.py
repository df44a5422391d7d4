"""Dequantization of discrete features and standardization inside the flow."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skflow import FlowDensity
from skflow._preprocessing import (
    Ranked,
    _coarse_bins,
    _inner_gap_ends,
    _quantile_knots,
    density_jumps,
    dequantization_widths,
    half_widths,
    lattice_width,
    noise_cells,
    snap_to_cells,
)
from tests.conftest import load_shared

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.mark.parametrize(
    "column, expected",
    [
        (np.repeat(np.arange(50), 10).astype(float), 1.0),  # integer codes
        (0.37 * np.repeat(np.arange(50), 10) - 4.1, 0.37),  # a standardized lattice
        (np.tile([0.0, 1.0, 2.5], 30), 1.0),  # few levels, off-lattice: smallest gap
        (np.full(40, 7.0), 1.0),  # constant
        (np.random.RandomState(0).randn(500), 0.0),  # continuous
        (np.round(np.random.RandomState(0).randn(500) * 1000), 0.0),  # lattice, no repeats
        (np.r_[np.zeros(400), np.random.RandomState(0).gamma(2.0, size=200)], None),  # spike
        # Glitch rows set the range, not what counts as one value: readings
        # stay distinct (a tolerance of 1e-9 of the range merged them all).
        (np.r_[np.random.RandomState(0).randn(500), [1e7] * 3], 0.0),
        (np.r_[20 + 5 * np.random.RandomState(0).randn(500), [1e12] * 2], 0.0),
        (np.r_[np.zeros(400), 1e-16, np.arange(1.0, 100.0)], 1.0),  # round-off "zeros" merge
    ],
)
def test_lattice_width(column, expected):
    if expected is None:  # a point mass in a continuous column: the finest gap
        expected = np.diff(np.unique(column)).min()
    assert lattice_width(column) == pytest.approx(expected, rel=1e-6)


def test_dequantize_argument_validation():
    X = np.zeros((10, 2))
    np.testing.assert_array_equal(dequantization_widths(X, False), [0.0, 0.0])
    np.testing.assert_array_equal(dequantization_widths(X, [0.5, 0.0]), [0.5, 0.0])
    with pytest.raises(ValueError, match=r"one width per feature.*shape \(1,\) for 2 features"):
        dequantization_widths(X, [1.0])
    rows = np.random.RandomState(0).randn(20, 2)
    for widths in ([-1.0, 0.0], [0.0, np.nan]):
        with pytest.raises(ValueError, match=r"non-negative finite .* feature\(s\) \[\d\] have"):
            FlowDensity(dequantize=widths, max_iter=2).fit(rows)
    # Noise the dtype cannot hold: named, not a NaN deep in the fit.
    with pytest.raises(ValueError, match=r"widths \[1e\+100\] .* in float32: at most 8.5"):
        FlowDensity(dequantize=[1e100, 0.0], max_iter=2).fit(rows)
    # A pandas Series' array is read-only: torch warned about it.
    pd = pytest.importorskip("pandas")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        FlowDensity(dequantize=pd.Series([1.0, 0.0]), max_iter=2, early_stopping=False).fit(
            np.c_[np.round(rows[:, 0]), rows[:, 1]]
        )


def test_noise_cells_reach_halfway_to_the_nearer_value():
    """A point mass (a "0 = not measured" code) gets a cell as wide as the
    gap around it, not the column's finest gap; values in a dense run keep
    the resolution; a continuous column's repeated value gets a cell and its
    other values none; widths given by the user are used as they are."""
    rng = np.random.RandomState(0)
    codes = np.where(np.arange(400) < 200, 0.0, 14.0 + np.arange(400) % 50)  # 0, then 14..63
    smooth = rng.randn(400)
    smooth[:40] = 1.5  # a point mass in a continuous column
    X = np.column_stack([codes, smooth])
    widths = dequantization_widths(X, "auto")
    assert widths[0] == 1.0 and widths[1] == 0.0
    cells = noise_cells(X, widths, auto=True)
    half = half_widths(X, cells)
    assert half[0, 0] == 7.0  # zero: halfway to 14
    assert np.all(half[200:, 0] == 0.5)  # 14..63: halfway to the next integer
    neighbours = np.sort(np.unique(smooth))
    k = np.searchsorted(neighbours, 1.5)
    expected = min(neighbours[k] - neighbours[k - 1], neighbours[k + 1] - neighbours[k]) / 2
    assert np.all(half[:40, 1] == expected) and np.all(half[40:, 1] == 0.0)
    # New values: the nearest training value's cell on a discrete feature (12
    # is nearest to 14), none on a continuous one unless they hit its point mass.
    new = np.array([[2.0, 1.5], [12.0, 1.49], [100.0, 0.3]])
    np.testing.assert_array_equal(half_widths(new, cells), [[7.0, expected], [0.5, 0], [0.5, 0]])
    user = noise_cells(X, np.array([2.0, 0.0]), auto=False)
    np.testing.assert_array_equal(half_widths(new, user), [[1.0, 0.0]] * 3)
    # Samples snap back: to the nearest training code (never to an unseen
    # 5 inside zero's wide cell), to the point mass inside its cell only.
    samples = np.array([[5.2, 1.5 + expected / 2], [9.0, 1.5 + 3 * expected], [70.0, 0.3]])
    snapped = snap_to_cells(samples, cells, X.min(axis=0))
    np.testing.assert_array_equal(snapped, [[0.0, 1.5], [14.0, samples[1, 1]], [63.0, 0.3]])


def test_point_mass_probabilities_sum_to_one():
    """Zero-inflated counts: exp(score) times the value's cell width is its
    probability, so over the training values it sums to about 1 and the
    point mass at zero gets its observed share."""
    rng = np.random.RandomState(0)
    X = np.where(rng.rand(3000) < 0.4, 0.0, rng.poisson(20.0, 3000))[:, None]
    est = FlowDensity(n_layers=3, hidden_units=16, random_state=0).fit(X)
    values = np.unique(X)[:, None]
    widths = est.cell_widths(values)[:, 0]
    assert widths[0] > 4  # zero's cell reaches halfway to the smallest count
    probs = np.exp(est.score_samples(values)) * widths
    assert probs.sum() == pytest.approx(1.0, abs=0.05)
    assert probs[0] == pytest.approx(np.mean(X == 0), abs=0.05)
    # Samples land on training values (no 3s from zero's wide cell), zero as often.
    draws = est.sample(2000, random_state=0)[:, 0]
    assert np.isin(draws, values).all()
    assert np.mean(draws == 0) == pytest.approx(np.mean(X == 0), abs=0.05)


def test_discrete_probabilities_sum_to_one():
    """For counts, exp(score) * width is the probability of each value: it must
    sum to about 1 over the support and follow the observed frequencies."""
    rng = np.random.RandomState(0)
    X = rng.poisson(3.0, size=(3000, 1)).astype(float)
    est = FlowDensity(n_layers=3, hidden_units=16, random_state=0).fit(X)
    assert est.dequantization_.tolist() == [1.0]
    support = np.arange(0, 30, dtype=float)[:, None]
    probs = np.exp(est.score_samples(support))
    assert probs.sum() == pytest.approx(1.0, abs=0.05)
    freq = np.bincount(X[:, 0].astype(int), minlength=30)[:30] / len(X)
    # A smooth flow blurs the step density a little between neighbours.
    assert np.abs(probs - freq).max() < 0.05
    draws = est.sample(5000, random_state=0)[:, 0]
    assert np.array_equal(draws, np.round(draws)) and draws.min() >= 0
    assert draws.mean() == pytest.approx(3.0, abs=0.15)


def test_integer_table_gives_finite_scores_and_no_spikes():
    """Without dequantization a flow on integer ratings chases spikes; with it
    the density stays bounded and held-out scores stay finite."""
    rng = np.random.RandomState(0)
    base = rng.randint(1, 11, size=(600, 1))
    X = np.clip(base + rng.randint(-1, 2, size=(600, 4)), 1, 10).astype(float)
    est = FlowDensity(random_state=0, max_iter=60).fit(X[:400])
    assert np.all(est.dequantization_ == 1.0)
    scores = est.score_samples(X[400:])
    assert np.isfinite(scores).all()
    # A probability mass function: log P(x) = score + log(width) <= 0 per row.
    assert scores.max() < 0.5


def test_constant_column_is_handled():
    rng = np.random.RandomState(0)
    X = np.column_stack([rng.randn(300), np.full(300, 5.0)])
    est = FlowDensity(random_state=0, max_iter=30).fit(X)
    assert est.dequantization_.tolist() == [0.0, 1.0]
    assert np.isfinite(est.score_samples(X)).all()
    assert np.all(est.sample(200, random_state=0)[:, 1] == 5.0)


def test_breastw_integer_table_finite():
    data = load_shared("adbench_4_breastw")
    X = data["X"][data["y"] == 0]
    est = FlowDensity(random_state=0, max_time=30).fit(X[:300])
    assert np.all(est.dequantization_ > 0)
    assert np.isfinite(est.score_samples(X[300:])).all()


def test_samples_land_exactly_on_a_decimal_lattice():
    """Widths like 0.1 are kept in float64, so float32 fits still sample the
    data's own values (0.1 steps), not values off by float32 rounding."""
    rng = np.random.RandomState(0)
    X = np.round(rng.randn(400, 2), 1)
    est = FlowDensity(max_iter=5, random_state=0).fit(X)
    assert est.dequantization_ == pytest.approx([0.1, 0.1], rel=1e-12)
    S = est.sample(300, random_state=0)
    np.testing.assert_allclose(S * 10, np.round(S * 10), atol=1e-9)


def test_snapping_large_draws_needs_no_whole_array_copies():
    """sample() snaps discrete features back onto their values in place, one
    feature at a time: whole-array copies tripled the peak memory of a large
    draw. The snapped values are those of the whole-array rounding."""
    import tracemalloc

    rng = np.random.RandomState(0)
    X = np.c_[rng.poisson(3, 400), rng.randn(400, 9)]  # one discrete feature
    est = FlowDensity(max_iter=2, random_state=0).fit(X)
    draws = np.random.RandomState(1).randn(200_000, 10) * X.std(0) + X.mean(0)
    low, high = est.lattice_range_
    snapped = snap_to_cells(draws, est.dequantization_cells_, low)
    expected = np.where(snapped != draws, np.clip(snapped, low, high), draws)
    tracemalloc.start()
    got = est._snap_to_lattice(draws)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got is draws
    np.testing.assert_array_equal(got, expected)
    # A few column-sized temporaries (10 features: 0.4x the array), where
    # the whole-array version held three copies (3x).
    assert peak < draws.nbytes / 2, (peak, draws.nbytes)


def _untrained(X, **params):
    """The fixed layers alone (no epoch beats them at a tiny learning rate)."""
    params = {"max_iter": 1, "learning_rate": 1e-12, "random_state": 0, **params}
    return FlowDensity(**params).fit(X)


def _quantile_mass(col, lo, hi):
    """Normal mass the pure quantile map of ``col`` gives to ``[lo, hi]``."""
    from scipy.stats import norm

    x_knots, z_knots, _ = _quantile_knots(col, col.size)
    return np.diff(norm.cdf(np.interp([lo, hi], x_knots, z_knots)))[0]


def test_gap_between_modes_keeps_almost_no_mass():
    """Two clusters 6 deviations apart: the quantile map puts knots at both
    ends of the empty middle, which keeps about one row's share (a coarse
    bin across it spread 3.4% there; a default fit sampled 3.7% of its draws
    there, 1.5% now, the rest from the blend with standardization)."""
    rng = np.random.RandomState(0)
    col = np.where(rng.rand(2000) < 0.5, -3.0, 3.0) + 0.5 * rng.randn(2000)
    assert _quantile_mass(col, -1.0, 1.0) < 2 / col.size
    est = FlowDensity(random_state=0).fit(np.c_[col, rng.randn(2000)])
    assert np.mean(np.abs(est.sample(50_000, random_state=0)[:, 0]) < 1) < 0.025


def test_heavy_tails_follow_the_data():
    """Levels halving towards the ends (while 10 rows lie beyond) follow a
    heavy tail: a t(2) column's sampled 1% and 99% quantiles were twice the
    data's (the outer coarse bin spread its share evenly out to the extreme
    row)."""
    from scipy.stats import t

    rng = np.random.RandomState(0)
    X = np.c_[t(2).rvs(2000, random_state=rng), rng.randn(2000)]
    sampled = FlowDensity(random_state=0).fit(X).sample(100_000, random_state=0)[:, 0]
    np.testing.assert_allclose(
        np.quantile(sampled, [0.01, 0.99]), np.quantile(X[:, 0], [0.01, 0.99]), rtol=0.15
    )


@pytest.mark.parametrize("dist", ["normal", "lognormal", "standard_t", "exponential", "uniform"])
def test_smooth_columns_have_no_gaps_between_modes(dist):
    """A spacing 20 times its neighbours' mean is rare in a smooth density,
    heavy tails included (the wider side's spacings count), also among the
    pooled copies of a column with ties (spacings of distinct values)."""
    rng = np.random.RandomState(0)
    args = (1.5,) if dist == "standard_t" else ()
    for copies in (1, 8):  # (fit pools 8 copies of a column with noise on any row)
        found = sum(
            _inner_gap_ends(
                Ranked.of(np.tile(getattr(rng, dist)(*args, size=n), copies)), _coarse_bins(n)
            ).size
            > 0
            for n in (300, 3000, 30000)
            for _ in range(10)
        )
        assert found <= 1, copies


def test_heavy_tailed_column_keeps_its_bulk():
    """The marginal map's knot floor follows the bulk's scale, not a
    standard deviation that a heavy tail inflates: an all-positive
    log-normal column gets almost no mass below zero (with a floor of 1e-3
    standard deviations: 22% at sigma 4)."""
    rng = np.random.RandomState(0)
    X = np.c_[rng.lognormal(0.0, 4.0, 2000), rng.normal(size=2000)]
    samples = _untrained(X).sample(20000, random_state=0)
    assert (samples[:, 0] < 0).mean() < 0.01


def test_point_mass_inside_a_column_keeps_its_share():
    """A value imputed into 20% of a continuous column keeps most of its
    share on its narrow cell: the marginal map's knots may sit as close as
    the cell needs, and tied ones spread around the value, not all to its
    right."""
    rng = np.random.RandomState(0)
    x = rng.normal(size=2000)
    y = x + rng.normal(0, 0.5, 2000)
    missing = rng.rand(2000) < 0.2
    x[missing] = x[~missing].mean()  # its neighbours 3e-4 away
    est = _untrained(np.c_[x, y])
    assert est.cell_widths([[x[missing][0], 0.0]])[0, 0] < 1e-3
    samples = est.sample(20000, random_state=0)
    assert (samples[:, 0] == x[missing][0]).mean() > 0.1  # (a wider floor: 0.8%)


def test_glitch_rows_leave_the_readings_density():
    """Two glitch rows at 1e12 in an N(20, 5) column: readings still score
    near their density (flat at -11.75 when the floor and tails followed the
    glitch-inflated standard deviation), never NaN."""
    rng = np.random.RandomState(0)
    x = rng.normal(20, 5, 2000)
    x[:2] = 1e12
    est = _untrained(np.c_[x, rng.normal(size=2000)])
    scores = est.score_samples([[15.0, 0.0], [20.0, 0.0], [25.0, 0.0]])
    reference = -0.5 * np.log(2 * np.pi * 25) - 0.5 * np.log(2 * np.pi) - 0.5 * np.array([1, 0, 1])
    assert np.all(np.abs(scores - reference) < 1.5), scores


@pytest.mark.parametrize("seed", range(4))
def test_standardized_knots_stay_float32_distinct_on_heavy_tails(seed):
    """A knot gap of the robust scale, divided by a heavy tail's standard
    deviation, must not tie the plain-standardization candidate's knots in
    float32 (fit raised for some seeds of this table)."""
    rng = np.random.RandomState(seed)
    X = np.c_[rng.choice([-1, 1], 200) * rng.lognormal(0, 8, 200), rng.normal(size=200)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # (no log(0) of a tied slope)
        est = _untrained(X)
    assert np.isfinite(est.score_samples(X)).all()


@pytest.mark.parametrize("width", [1e-40, 1e-300])
def test_tiny_user_widths_fit(width):
    """Dequantization widths far below float32's normal range still give
    knots that float32 tells apart and finite slopes."""
    X = np.c_[np.random.RandomState(0).poisson(3, 300), np.random.RandomState(1).normal(size=300)]
    est = _untrained(X, dequantize=np.array([width, 0.0]))
    assert np.isfinite(est.score_samples(X)).all()


def test_rare_value_beside_a_common_one_keeps_its_share():
    """A value held by a few rows next to one held by nearly all gets a knot
    at the edge between their cells: a coarse quantile bin across it gave the
    rare cell a bin's share (elevators' one row in 12,449 was sampled 2.4% of
    the time, cardio's 0.08% flag 3.8%)."""
    rng = np.random.RandomState(0)
    X = np.c_[rng.normal(size=(4000, 2)), np.zeros(4000)]
    X[:3, 2] = 1.0  # 0.075% of the rows
    est = _untrained(X)
    mass = np.exp(est.score_samples(np.c_[np.zeros((2, 2)), [0.0, 1.0]]))
    # Both columns' densities cancel in the ratio; the cells are both 1 wide.
    assert mass[1] / mass[0] == pytest.approx(3 / 3997, rel=0.5)
    draws = (
        FlowDensity(max_iter=1, learning_rate=1e-12, random_state=0)
        .fit(X)
        .sample(40000, random_state=0)
    )
    assert (draws[:, 2] == 1).mean() < 3 * 3 / 4000
    # A balanced binary column (no jump) keeps its map: its cells' edge is no knot.
    assert density_jumps(np.r_[np.zeros(50), np.ones(40)], np.full(90, 0.5)).size == 0
    assert density_jumps(np.r_[np.zeros(500), np.ones(4)], np.full(504, 0.5)) == pytest.approx(
        [0.5]
    )


@pytest.mark.parametrize("sentinel, count", [(9999.0, 4), (1e12, 1), (-999.0, 20)])
def test_sentinel_rows_leave_the_bulk_tails(sentinel, count):
    """A few rows at a sentinel far from an N(20, 5) column (a missing-value
    code, a glitch) get knots of their own at both ends of the empty gap:
    readings 1 to 2.5 deviations out keep their density on both sides (a
    coarse quantile bin across the gap spread its share of them over it:
    1.6, 3.2 and 13 nats lower on the sentinel's side)."""
    rng = np.random.RandomState(0)
    x = rng.normal(20, 5, 2000)
    x[:count] = sentinel
    est = _untrained(np.c_[x, rng.normal(size=2000)])
    z = np.r_[np.linspace(-2.5, -1, 16), np.linspace(1, 2.5, 16)]
    error = est.score_samples(np.c_[20 + 5 * z, np.zeros(32)]) - (
        -np.log(2 * np.pi * 5) - 0.5 * z**2
    )
    assert abs(error[:16].mean()) < 0.4 and abs(error[16:].mean()) < 0.4, error
