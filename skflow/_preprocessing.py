"""Data statistics that the estimator bakes into the flow's fixed first layer.

Numpy and scipy (and scikit-learn's Ledoit-Wolf shrinkage), no torch.
Everything computed here ends up in buffers of the flow, so the reported
density stays exact in the user's units.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import ndtri
from sklearn.covariance import ledoit_wolf_shrinkage

# A column is treated as discrete when its values repeat: at most this
# fraction of the rows holds a distinct value (integer codes, ratings, counts,
# values rounded to a coarse resolution, point masses such as a zero for
# "absent"). Continuous measurements are nearly all distinct.
MAX_DISTINCT_FRACTION = 0.5
# A value that a continuous column repeats is a point mass to dequantize when
# it holds at least this share of the rows: a spike the flow would chase. A
# few coincidental repeats are not worth dequantization noise at every step
# (and its cost: the fixed layers then run at every step).
MIN_POINT_MASS = 0.01
# Values of a column closer than this fraction of its spread are one value
# written two ways (floating-point round-off: a pendigits column holds
# "zeros" 2e-16 apart), not a resolution to dequantize at.
SAME_VALUE_RTOL = 1e-9
# The marginal map's linear stretch beyond the data spans at most this many
# normal units (a 1e-3 standard deviation knot floor bounds it near this).
MAX_LINEAR_TAIL = 1e3
# Knots of the marginal map at least this fraction of their size apart:
# about 80 float32 steps, so that they stay distinct in the flow's float32;
# and at least this fraction of the column's scale (however tiny the
# dequantization cells a user sets: slopes across the gap stay finite).
FLOAT32_RGAP = 1e-5
MIN_KNOT_GAP = 1e-20
# engine.transforms.PiecewiseLinear.LINEAR_TAIL, which _log_marginal mirrors
# (tests pin the two equal).
LINEAR_TAIL = 50.0


def _spread(column: np.ndarray) -> float:
    """A scale of ``column`` that a few extreme values do not set: its
    interquartile range, or for a column mostly at one value its mean
    absolute deviation from the median (0 only for a constant column)."""
    low, median, high = np.percentile(column, [25, 50, 75])
    return float(high - low) if high > low else float(np.mean(np.abs(column - median)))


def _distinct(column: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Sorted distinct values of ``column`` (near-equal ones merged, the
    smallest kept), their counts, and the merging tolerance. (The tolerance
    follows the column's spread, not its range: two glitch rows at 1e12
    would otherwise merge every ordinary reading into one value.)"""
    values, counts = np.unique(column, return_counts=True)
    tol = SAME_VALUE_RTOL * _spread(column) if values.size > 1 else 0.0
    if values.size > 1:
        first = np.r_[True, np.diff(values) > tol]
        counts = np.bincount(np.cumsum(first) - 1, weights=counts).astype(int)
        values = values[first]
    return values, counts, tol


def lattice_width(column: np.ndarray) -> float:
    """Dequantization width of one column: 0 for a continuous column, the
    smallest gap between distinct values (the data's resolution) for a
    discrete one, and 1 for a constant column (it then contributes exactly 0
    to the log-density)."""
    values = _distinct(column)[0]
    if values.size == 1:
        return 1.0
    if values.size > column.size * MAX_DISTINCT_FRACTION:
        return 0.0
    return float(np.diff(values).min())


def dequantization_widths(X: np.ndarray, dequantize) -> np.ndarray:
    """Per-feature uniform-noise widths for ``dequantize`` = "auto", False or
    an array of widths."""
    n_features = X.shape[1]
    if dequantize is False:
        return np.zeros(n_features)
    if isinstance(dequantize, str):  # "auto"
        return np.array([lattice_width(col) for col in X.T])
    # (A copy: a pandas Series' array is read-only, which torch warns about.)
    widths = np.array(dequantize, dtype=np.float64)
    if widths.shape != (n_features,):
        raise ValueError(
            "dequantize must be 'auto', False, or an array of one width per feature (0 for a "
            f"continuous feature); got shape {widths.shape} for {n_features} features."
        )
    bad = np.flatnonzero(~((widths >= 0) & (widths < np.inf)))
    if bad.size:
        raise ValueError(
            "dequantize widths must be non-negative finite numbers (0 for a continuous "
            f"feature); feature(s) {bad.tolist()} have {widths[bad].tolist()}."
        )
    return widths


# Per feature, how wide the dequantization noise is around each value: a
# constant half-width, or a lookup table (values, half-widths, reach) from the
# training rows: every value takes the nearest one's cell (reach None), or
# only values within ``reach`` of one (a continuous feature's point masses).
NoiseCells = list[float | tuple[np.ndarray, np.ndarray, float | None]]


def _local_half_gaps(values: np.ndarray) -> np.ndarray:
    """Half the gap from each sorted distinct value to its nearer neighbour
    (the end values have one neighbour): centred cells that never overlap."""
    gaps = np.diff(values)
    return np.minimum(np.r_[gaps[0], gaps], np.r_[gaps, gaps[-1]]) / 2


def noise_cells(X: np.ndarray, widths: np.ndarray, auto: bool) -> NoiseCells:
    """The dequantization cells of each feature, from the training rows.

    With widths given by the user (``auto=False``) every value of a feature
    gets the same cell, ``widths[j]`` wide. Under ``dequantize="auto"`` a
    value's cell reaches halfway to its nearer neighbouring value, so its
    density is its probability spread over the resolution *around it*: a
    point mass such as a "0 = not measured" code, an isolated level or a
    repeated value in an otherwise continuous column no longer earns a
    density bonus of log(gap around it / column's finest gap), which would
    rank rows by how many such spikes they hit. A discrete feature's values
    all get cells (new values take the nearest training value's); in a
    continuous feature only point masses (values that at least
    ``MIN_POINT_MASS`` of the rows, and two or more, hold) get one.
    """
    cells: NoiseCells = []
    for j, column in enumerate(X.T):
        if not auto:
            cells.append(widths[j] / 2)
            continue
        values, counts, tol = _distinct(column)
        if widths[j] > 0:  # discrete (a constant column keeps its width 1)
            half = _local_half_gaps(values) if values.size > 1 else np.array([widths[j] / 2])
            cells.append((values, half, None))
        elif values.size > 1 and counts.max() >= max(2, MIN_POINT_MASS * column.size):
            # Continuous with point masses: only these are kept (the model stores them).
            masses = counts >= max(2, MIN_POINT_MASS * column.size)
            cells.append((values[masses], _local_half_gaps(values)[masses], tol))
        else:
            cells.append(0.0)
    return cells


def _nearest(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the sorted ``values`` nearest to each ``x``."""
    if values.size == 1:
        return np.zeros(x.shape, dtype=int)
    right = np.clip(np.searchsorted(values, x), 1, values.size - 1)
    return np.where(x - values[right - 1] <= values[right] - x, right - 1, right)


def half_widths(X: np.ndarray, cells: NoiseCells) -> np.ndarray:
    """Half-width of the uniform dequantization noise of each entry of ``X``."""
    out = np.zeros(X.shape)
    for j, cell in enumerate(cells):
        if not isinstance(cell, tuple):
            out[:, j] = cell
            continue
        values, half, reach = cell
        k = _nearest(values, X[:, j])
        hit = True if reach is None else np.abs(X[:, j] - values[k]) <= reach
        out[:, j] = np.where(hit, half[k], 0.0)
    return out


def snap_to_cells(samples: np.ndarray, cells: NoiseCells, low: np.ndarray) -> np.ndarray:
    """Round dequantized samples back onto the values they stand for: a
    discrete feature's nearest training value; a continuous feature's point
    mass where a sample falls in its cell; under one width ``w`` per feature
    (given by the user), the lattice ``low + k w``."""
    out = samples.copy()
    for j, cell in enumerate(cells):
        y = samples[:, j]
        if not isinstance(cell, tuple):
            if cell > 0:
                out[:, j] = low[j] + 2 * cell * np.round((y - low[j]) / (2 * cell))
            continue
        values, half, reach = cell
        k = _nearest(values, y)
        inside = True if reach is None else np.abs(y - values[k]) <= np.maximum(half[k], reach)
        out[:, j] = np.where(inside, values[k], y)
    return out


def weighted_quantile(values: np.ndarray, q, weights: np.ndarray | None = None):
    """Quantiles ``q`` (in [0, 1]) of ``values``: :func:`numpy.quantile`
    without ``weights``; with them, numpy's (linear) method applied as if
    each value were repeated in proportion to its weight: with the weights
    scaled to a mean of 1, a value of weight ``w >= 1`` spans ``w - 1`` of
    the ``n - 1`` positions between the smallest and the largest, as ``w``
    copies of it would. So equal weights give numpy's quantiles, and a value
    holding a share ``s`` of the weight is every quantile within about ``s``
    of its own, the extremes included (a heavy lowest value is the low
    quantiles rather than a point below them)."""
    if weights is None:
        return np.quantile(values, q)
    return Ranked.of(values, weights).quantile(q)


class Ranked(NamedTuple):
    """One column sorted once, for its quantiles, gaps and shares: the
    sorted ``values``, their ``weights`` (None: equal) and the first and
    last of the ``n - 1`` positions each value spans (see
    :func:`weighted_quantile`)."""

    values: np.ndarray
    weights: np.ndarray | None
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def of(cls, col: np.ndarray, w: np.ndarray | None = None) -> Ranked:
        if w is None:
            values = np.sort(col)
            at = np.arange(values.size, dtype=float)
            return cls(values, None, at, at)
        order = np.argsort(col, kind="stable")
        return cls(col[order], w[order], *_positions(w[order]))

    def quantile(self, q) -> np.ndarray:
        x = np.asarray(q) * (self.values.size - 1)
        if self.weights is None:  # (numpy's linear method)
            return np.interp(x, self.lower, self.values)
        # (A value's two ends coincide when w <= 1; np.interp takes either, both
        # hold the same value. Beyond the first and last ends it clamps.)
        positions = np.column_stack([self.lower, self.upper]).ravel()
        return np.interp(x, positions, np.repeat(self.values, 2))

    def share_below(self, points: np.ndarray) -> np.ndarray:
        """The (weighted) share of the values below each of ``points``."""
        at = np.searchsorted(self.values, points)
        if self.weights is None:
            return at / self.values.size
        below = np.concatenate([[0.0], np.cumsum(self.weights)])
        return below[at] / below[-1]

    def gap_levels(self, at: np.ndarray) -> np.ndarray:
        """Quantile levels of both ends of the gaps after sorted values ``at``."""
        return np.unique(np.concatenate([self.upper[at], self.lower[at + 1]])) / max(
            self.values.size - 1, 1
        )


def _positions(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last of the ``n - 1`` positions that each of ``n`` sorted
    values spans under ``weights`` (see :func:`weighted_quantile`)."""
    w = weights * (weights.size / weights.sum())
    # Each value's span of positions, centred where its copies would be.
    centre = np.cumsum(w) - w / 2 - 0.5
    half = np.maximum(w - 1, 0) / 2
    return centre - half, centre + half


def weighted_lower_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest of ``values`` with at least half the weight at or below
    it (with equal weights, the lower median): always an observed value."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return values[order][np.searchsorted(cum, cum[-1] / 2)]


def effective_rows(n: int, weights: np.ndarray | None) -> float:
    """Kish's effective sample size of ``n`` weighted rows (``n`` unweighted):
    how many equally weighted rows carry as much information."""
    if weights is None:
        return float(n)
    top = weights.max(initial=0.0)
    if not top > 0:
        return 0.0
    # Scaled by the largest first: squares of tiny weights (1e-200) underflow.
    w = weights / top
    return float(w.sum() ** 2 / np.square(w).sum())


# Columns whose correlation matrix has an eigenvalue below this (relative to
# the largest) lie on a lower-dimensional set: duplicated or derived columns.
DEPENDENT_RTOL = 1e-10


def _variances(X: np.ndarray, noise_var: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Each column's (weighted) variance with its dequantization noise's."""
    return np.average(np.square(X - np.average(X, axis=0, weights=weights)), 0, weights) + noise_var


def _tied_columns(X: np.ndarray, noise_var: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Columns of ``X`` (varying ones only) that an (almost) exact linear
    relation ties together: those weighing in the correlation matrix's
    smallest eigenvector, when that eigenvalue is ``DEPENDENT_RTOL`` of the
    largest or less."""
    var = _variances(X, noise_var, weights)
    varies = np.flatnonzero(var > 0)
    if varies.size < 2 or X.shape[0] <= varies.size:  # (fewer rows: fit warns of that)
        return np.empty(0, dtype=int)
    Z = (X[:, varies] - np.average(X[:, varies], axis=0, weights=weights)) / np.sqrt(var[varies])
    w = np.full(len(Z), 1 / len(Z)) if weights is None else weights / weights.sum()
    corr = (Z * w[:, None]).T @ Z + np.diag(noise_var[varies] / var[varies])
    values, vectors = np.linalg.eigh(corr)
    if not values[0] < DEPENDENT_RTOL * values[-1]:
        return np.empty(0, dtype=int)
    weight = np.abs(vectors[:, 0])
    return varies[weight > 0.1 * weight.max()]


def degenerate_columns(
    X: np.ndarray, noise_var: np.ndarray, weights: np.ndarray | None = None
) -> tuple[list[int], list[int]]:
    """Columns of ``X`` (with dequantization noise of variance ``noise_var``)
    on which no density exists: constant ones, and those that an (almost)
    exact linear relation ties together (the ones weighing in it)."""
    var = _variances(X, noise_var, weights)
    constant = np.flatnonzero(~(var > 0)).tolist()
    tied = _tied_columns(X, noise_var, weights)
    if tied.size:
        # A few rows sharing a far-out sentinel in several columns tie them
        # too (their correlation 1 - 1e-20): the relation must hold in the
        # bulk, the rows within GAP_RATIO spreads of each quartile.
        q1, q3 = np.quantile(X, [0.25, 0.75], axis=0)
        reach = GAP_RATIO * np.where(q3 > q1, q3 - q1, np.sqrt(var))
        bulk = np.all((X >= q1 - reach) & (X <= q3 + reach), axis=1)
        # (Too few bulk rows to tell: the whole data's answer stands.)
        if (
            not bulk.all()
            and bulk.sum() > X.shape[1]
            and (weights is None or weights[bulk].sum() > 0)
        ):
            tied = np.intersect1d(
                tied, _tied_columns(X[bulk], noise_var, None if weights is None else weights[bulk])
            )
    return constant, tied.tolist()


def standardization(
    X: np.ndarray, noise_var: np.ndarray, whiten: bool, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Location and lower-triangular scale ``L`` of the dequantized data
    (``noise_var``: the variance the dequantization noise adds to each
    feature; uniform noise of half-width h adds h^2 / 3), each row counting
    with its ``weights`` (by default equally).

    Without ``whiten``, ``L`` is diagonal (per-feature standard deviations).
    With it, ``L L^T`` is a Ledoit-Wolf-shrunk covariance: the flow then starts
    as the best single Gaussian and its layers only have to learn what is not
    Gaussian, which matters most on small tables.
    """
    if weights is None:
        loc, var = X.mean(axis=0), X.var(axis=0) + noise_var
    else:
        w = weights / weights.sum()
        loc = w @ X
        var = w @ np.square(X - loc) + noise_var
    # A constant column without dequantization (dequantize=False or a zero
    # width for it) has no spread.
    std = np.sqrt(np.where(var > 0, var, 1.0))
    if not whiten or X.shape[1] == 1 or X.shape[0] < 2:  # no covariance to estimate
        return loc, np.diag(std)
    Z = (X - loc) / std
    # Rows scaled by the square root of their weight have the weighted
    # covariance as their plain one (the shrinkage is estimated on them).
    if weights is not None:
        Z = Z * np.sqrt(w * len(X))[:, None]
    alpha = ledoit_wolf_shrinkage(Z, assume_centered=True)
    corr = Z.T @ Z / len(Z) + np.diag(noise_var / std**2)
    corr = (1 - alpha) * corr + alpha * np.eye(len(corr)) * np.trace(corr) / len(corr)
    # Shrinkage keeps corr positive definite; the jitter guards exact collinearity.
    chol = np.linalg.cholesky(corr + 1e-6 * np.eye(len(corr)))
    return loc, std[:, None] * chol


N_KNOTS = 128
# An empty stretch of a column wider than this many times its distance from
# the median (and its scale) separates a few far-off rows (a sentinel such as
# 9999, a glitch) from the bulk: the map gets knots at both of its ends.
GAP_RATIO = 10.0
MAX_GAPS_PER_SIDE = 2
# Likewise the edge between two touching dequantization cells whose densities
# differ this many times, the sparser holding under half a coarse bin's share
# (a value held by a few rows beside one held by most): a coarse bin across it
# spread the common value's mass over the rare cell. (Only such extremes: an
# exact empirical share is unsmoothed, and 10-fold jumps cost held-out
# likelihood on digits-like columns, 0.8 nats per row.)
JUMP_RATIO = 100.0
MAX_JUMPS = 4
# And between modes: an empty stretch far wider than the spacing of the values
# on either side (two clusters 6 deviations apart put 3.7% of the samples of
# a default fit in the empty middle; 1.5% with these knots).
INNER_GAP_RATIO = 20.0
MAX_INNER_GAPS = 4
# Heavy tails: the outer coarse bin spread its share evenly out to the extreme
# row (a t(2) column's sampled 1% quantile lay twice as far out as the data's).
# Levels halving towards each end follow the tail while this many rows lie beyond.
MIN_TAIL_ROWS = 10.0
TAIL_FLOORS = 10.0
# Weight of plain standardization in the quantile map: SHRINK_ROWS / (SHRINK_ROWS + n)
# (measured on small real tables: 0 overfits ~100-row tables, 300 underfits ~400-row ones).
SHRINK_ROWS = 100.0
# Pooled draws of dequantization noise (bounded in total size) so that the
# quantiles of a discrete feature trace its dequantized, piecewise-uniform CDF.
_MAX_POOLED = 400_000
MIN_QUANTILE_ROWS = 20
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def _mean_std(col: np.ndarray, w: np.ndarray | None) -> tuple[float, float]:
    if w is None:
        return col.mean(), col.std()
    mean = np.average(col, weights=w)
    return mean, np.sqrt(np.average(np.square(col - mean), weights=w))


def _quantile_knots(
    col: np.ndarray,
    n: float,
    w: np.ndarray | None = None,
    cell: float = np.inf,
    jumps: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Knots of the map of one feature (``col``: its pooled values from ``n``
    rows, or effective rows under weights ``w``; ``cell`` its narrowest
    dequantization cell; ``jumps`` the edges of cells where its density
    jumps, see :func:`density_jumps`) from smoothed quantiles to normal
    quantiles: ``x`` knots, their normal quantiles, and their plain
    standardization (the two ``z`` knot sets that :func:`_quantile_map`
    blends)."""
    n_bins = _coarse_bins(n)
    p_lo, p_hi = 0.5 / n, 1 - 0.5 / n
    p_coarse = np.linspace(p_lo, p_hi, n_bins + 1)
    ranked = Ranked.of(col, w)
    mean, spread = _mean_std(col, w)
    spread = spread if spread > 0 else 1.0
    # The column's scale: its standard deviation, or the interquartile
    # range's normal equivalent where a heavy tail or a few far-out rows
    # inflate that (a log-normal column's bulk lies within a sliver of it).
    quartiles = ranked.quantile([0.25, 0.75])
    robust = float(quartiles[1] - quartiles[0]) / 1.349
    scale = robust if 0 < robust < spread / 4 else spread
    # Ties (a point mass off any lattice) would give an infinite slope:
    # knots stay at least 1e-3 of the scale apart, or closer where a narrow
    # cell must hold the knots of its value's share (a value imputed into
    # 20% of the rows lost most of its cell's mass to a wider floor).
    floor = max(min(1e-3 * scale, cell / n_bins), MIN_KNOT_GAP * scale)
    # Finer levels where a coarse bin would spread its share evenly over a
    # stretch the data do not fill evenly: both ends of wide empty gaps (0.2%
    # of rows at 9999 in an N(20, 5) column cost rows beyond 2 deviations 3
    # nats each) and of gaps between modes, the tails, and density jumps.
    ends = np.concatenate(
        [
            _gap_ends(ranked, quartiles, scale),
            _inner_gap_ends(ranked, n_bins),
            _tail_levels(ranked, n, p_coarse[1], p_lo, floor),
            np.empty(0) if jumps is None else ranked.share_below(jumps),
        ]
    )
    ends = np.unique(ends[(ends > p_lo) & (ends < p_hi)])
    p_coarse = np.union1d(p_coarse, ends)
    p_fine = _with_points(np.linspace(p_lo, p_hi, N_KNOTS - 2), ends)
    z_fine = ndtri(p_fine)
    x_coarse = ranked.quantile(p_coarse)
    step = floor * np.arange(p_coarse.size)
    if _float32_distinct(x_coarse, step[1]):  # (the same knots up to round-off)
        x_coarse = np.maximum.accumulate(x_coarse - step) + step
    else:
        x_coarse = _spread_ties(x_coarse, step[1])
    x_fine = np.interp(p_fine, p_coarse, x_coarse)
    # Beyond the data, continue with the mean slope of the outer 10% of the mass.
    tail = max(1, int(0.1 * (N_KNOTS - 2)))
    lo = (z_fine[tail] - z_fine[0]) / (x_fine[tail] - x_fine[0])
    hi = (z_fine[-1] - z_fine[-1 - tail]) / (x_fine[-1] - x_fine[-1 - tail])
    # One standard deviation of linear tail, then the map's own tails
    # (PiecewiseLinear's); but at most MAX_LINEAR_TAIL normal units (a steep end segment
    # over a heavy tail's deviation put the end knot a billion units out,
    # where float32 interpolation cancels) and float32-distinct.
    reach_lo = max(min(spread, MAX_LINEAR_TAIL / lo), FLOAT32_RGAP * abs(x_fine[0]))
    reach_hi = max(min(spread, MAX_LINEAR_TAIL / hi), FLOAT32_RGAP * abs(x_fine[-1]))
    x_knots = np.concatenate([[x_fine[0] - reach_lo], x_fine, [x_fine[-1] + reach_hi]])
    z_knots = np.concatenate([[z_fine[0] - reach_lo * lo], z_fine, [z_fine[-1] + reach_hi * hi]])
    # Plain standardization of those knots: a gap of the robust scale can
    # vanish in float32 once divided by a heavy tail's deviation.
    linear = (x_knots - mean) / spread
    if not _float32_distinct(linear, 1e-6):
        linear = _spread_ties(linear, 1e-6)
    return x_knots, z_knots, linear


def _gap_ends(ranked: Ranked, quartiles: np.ndarray, scale: float) -> np.ndarray:
    """Quantile levels of both ends of the innermost ``MAX_GAPS_PER_SIDE``
    empty gaps of a column beyond each quartile that are ``GAP_RATIO`` times
    wider than their distance from the quartiles' midpoint and than
    ``scale``."""
    values = ranked.values
    reach = GAP_RATIO * scale
    if values[-1] - quartiles[1] <= reach and quartiles[0] - values[0] <= reach:
        return np.empty(0)
    mid = float(np.mean(quartiles))
    gaps = np.diff(values)
    near = np.maximum(np.maximum(values[:-1] - mid, mid - values[1:]), scale)
    wide = gaps > GAP_RATIO * near
    above = np.flatnonzero(wide & (values[:-1] >= quartiles[1]))[:MAX_GAPS_PER_SIDE]
    below = np.flatnonzero(wide & (values[1:] <= quartiles[0]))[::-1][:MAX_GAPS_PER_SIDE]
    return ranked.gap_levels(np.concatenate([above, below]))


def _inner_gap_ends(ranked: Ranked, n_bins: int) -> np.ndarray:
    """Quantile levels of both ends of the ``MAX_INNER_GAPS`` empty stretches
    between a column's distinct values that are widest relative to those on
    either side: wider than ``INNER_GAP_RATIO`` times the mean spacing of the
    half coarse bin's worth of distinct values on each side (a gap between
    modes). Distinct values, because the pooled copies of rows without
    dequantization noise (ties) would shrink that spacing eightfold."""
    # (The values are sorted: each distinct one's first copy, without a sort.)
    first = np.flatnonzero(np.r_[True, ranked.values[1:] != ranked.values[:-1]])
    values = ranked.values[first]
    k = max(2, values.size // (2 * n_bins))
    if values.size < 4 * k:
        return np.empty(0)
    at = np.arange(k, values.size - 1 - k)
    gaps = values[at + 1] - values[at]
    # (A spacing in a smooth density exceeds 20 times its neighbours' mean
    # with odds of about e^-20; the wider side keeps a tail's growing spacings
    # from counting.)
    local = np.maximum(values[at] - values[at - k], values[at + 1 + k] - values[at + 1]) / k
    ratio = gaps / np.maximum(local, np.finfo(float).tiny)
    wide = np.flatnonzero(ratio > INNER_GAP_RATIO)
    wide = wide[np.argsort(-ratio[wide], kind="stable")][:MAX_INNER_GAPS]
    # (The last sorted copy of the value before each gap.)
    return ranked.gap_levels(first[at[wide] + 1] - 1)


def _tail_levels(ranked: Ranked, n: float, p_first: float, p_lo: float, floor: float) -> np.ndarray:
    """Quantile levels halving from the first coarse one towards each end
    while ``MIN_TAIL_ROWS`` of ``n`` rows lie beyond and each level's value
    lies at least ``TAIL_FLOORS`` knot floors (``floor``) from the one
    before it: a tail bunched against a bound (a log-normal's towards zero)
    gets no levels, which the floor would only push apart."""
    halving = p_first / 2.0 ** np.arange(64)
    halving = halving[(halving - p_lo) * n >= MIN_TAIL_ROWS]
    levels = []
    for side in (halving, 1 - halving):
        apart = np.abs(np.diff(ranked.quantile(side))) >= TAIL_FLOORS * floor
        levels.append(side[1:][np.cumprod(apart).astype(bool)])
    return np.concatenate(levels)


def _coarse_bins(n: float) -> int:
    """How many equal-frequency bins the quantile map of ``n`` rows has."""
    return int(np.clip(round(2 * n ** (1 / 3)), 4, N_KNOTS - 3))


def density_jumps(x: np.ndarray, half: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Edges between touching dequantization cells of one feature (values
    ``x``, half-widths ``half``, row weights ``w``) whose densities differ
    more than ``JUMP_RATIO`` times, the sparser cell holding under half a
    coarse bin's share: the ``MAX_JUMPS`` steepest. Only for a feature
    dequantized on every row (a discrete one)."""
    if x.size == 0 or not (half > 0).all():
        return np.empty(0)
    values, first, inverse = np.unique(x, return_index=True, return_inverse=True)
    share = np.bincount(inverse, weights=w, minlength=values.size)
    share = share / share.sum()
    widths = 2 * half[first]
    lower, upper = values - widths / 2, values + widths / 2
    density = share / widths
    touching = np.isclose(upper[:-1], lower[1:], rtol=0, atol=1e-9 * np.diff(values))
    high = np.maximum(density[:-1], density[1:])
    low = np.minimum(density[:-1], density[1:])
    sparse = np.where(density[:-1] < density[1:], share[:-1], share[1:])
    few = sparse < 0.5 / _coarse_bins(effective_rows(x.size, w))
    steep = np.flatnonzero(touching & few & (low > 0) & (high > JUMP_RATIO * low))
    steep = steep[np.argsort(-(high[steep] / np.maximum(low[steep], 1e-300)))][:MAX_JUMPS]
    return np.sort(upper[steep])


def _with_points(grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sorted ``grid`` with each of ``points`` in place of its nearest
    interior node not already replaced (so the count stays the same)."""
    grid = grid.copy()
    free = np.ones(grid.size, dtype=bool)
    free[[0, -1]] = False
    for point in points:
        i = np.flatnonzero(free)[np.argmin(np.abs(grid[free] - point))]
        grid[i], free[i] = point, False
    return np.sort(grid)


def _float32_distinct(knots: np.ndarray, gap: float) -> bool:
    return bool(np.all(np.diff(knots) >= np.maximum(gap, FLOAT32_RGAP * np.abs(knots[:-1]))))


def _spread_ties(knots: np.ndarray, gap: float) -> np.ndarray:
    """Sorted ``knots`` moved apart to at least ``gap`` (and ``FLOAT32_RGAP``
    of their size, so that float32 tells them apart). A run of tied knots
    inside the data spreads evenly around its value rather than all to its
    right (which moved a point mass's share off its value); a run at the
    smallest (largest) value spreads inwards, where the data are."""

    def gap_at(v: float) -> float:
        return max(gap, FLOAT32_RGAP * abs(v))

    def pushed_up(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        for i in range(1, len(x)):
            x[i] = max(x[i], x[i - 1] + gap_at(x[i - 1]))
        return x

    up = pushed_up(knots)
    down = -pushed_up(-knots[::-1])[::-1]
    middle = (up + down) / 2
    middle[knots == knots[0]] = up[knots == knots[0]]
    middle[knots == knots[-1]] = down[knots == knots[-1]]
    # (The extreme runs' ends next to the middle ones may sit too close.)
    return pushed_up(middle)


def _quantile_map(
    col: np.ndarray,
    n: float,
    shrink: float,
    w: np.ndarray | None,
    cell: float = np.inf,
    jumps: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the quantile map of one feature blended with plain
    standardization with weight ``shrink`` (1 = standardization only)."""
    x_knots, z_knots, linear = _quantile_knots(col, n, w, cell, jumps)
    return x_knots, (1 - shrink) * z_knots + shrink * linear


def _segments(x: np.ndarray, x_knots: np.ndarray) -> np.ndarray:
    """Index of the knot ending the segment each ``x`` falls in."""
    return np.clip(np.searchsorted(x_knots, x), 1, len(x_knots) - 1)


def _log_marginal(
    x: np.ndarray, x_knots: np.ndarray, z_knots: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """Log-density of ``x`` (in segments ``idx``) under "map through the
    knots, then standard normal"."""
    slope = (z_knots[idx] - z_knots[idx - 1]) / (x_knots[idx] - x_knots[idx - 1])
    z = z_knots[idx - 1] + (x - x_knots[idx - 1]) * slope
    # The tails of engine.transforms.PiecewiseLinear: linear for
    # LINEAR_TAIL units past an end knot, then logarithmic.
    under = np.clip(x_knots[0] - x, 0, None) * slope
    over = np.clip(x - x_knots[-1], 0, None) * slope
    log_past = np.log1p(
        np.clip(under - LINEAR_TAIL, 0, None) + np.clip(over - LINEAR_TAIL, 0, None)
    )
    tail = np.minimum(under + over, LINEAR_TAIL) + log_past
    z = np.where(under > 0, z_knots[0] - tail, np.where(over > 0, z_knots[-1] + tail, z))
    return -0.5 * z**2 - _LOG_SQRT_2PI + np.log(slope) - log_past


def fixed_noise(half: np.ndarray, draws: int = 1) -> tuple[np.ndarray, np.random.RandomState]:
    """``draws`` copies of dequantization noise, uniform on ``[-half, half]``
    entry by entry, and the generator they came from (for further draws).
    The seed is fixed, not fit's ``random_state``: the fixed layers (and so
    the reported density) depend on the data alone, as a GMM's or KDE's
    would."""
    rng = np.random.RandomState(0)
    return (rng.uniform(size=(draws, *half.shape)) - 0.5) * 2 * half, rng


def gaussianizing_knots(
    X: np.ndarray, half: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(x, z)`` of shape ``(n_features, N_KNOTS)`` of a monotone
    piecewise-linear map of each feature towards a standard normal.

    Candidates per feature: its smoothed quantile map (about ``2 n^(1/3)``
    equal-frequency bins of constant density, blended with standardization
    with weight ``100 / (100 + n)``), an even blend, and plain
    standardization. The one with the best 2-fold cross-validated marginal
    likelihood wins, so a near-Gaussian feature keeps its smooth Gaussian
    shape while a skewed, multimodal or spiky one is Gaussianized. Beyond the
    data the map continues linearly for one standard deviation and another
    ``LINEAR_TAIL`` normal units, then logarithmically, so far-out inputs
    map somewhere moderate. ``half``
    holds the half-width of each entry's dequantization noise. Rows count
    with their ``weights`` (by default equally), and ``n`` is then their
    effective number (:func:`effective_rows`).
    """
    n_rows, n_features = X.shape
    n = effective_rows(n_rows, weights)
    draws = max(1, min(8, _MAX_POOLED // max(n_rows, 1)))
    noise, rng = fixed_noise(half, draws)
    # A feature without noise has nothing to pool: one copy, whose
    # quantiles and held-out means equal those of the identical copies.
    pooled = [
        X[None, :, j] + noise[:, :, j] if half[:, j].any() else X[None, :, j]
        for j in range(n_features)
    ]

    def weights_of(values: np.ndarray, rows: np.ndarray | slice = slice(None)):
        """The weights of pooled ``values`` (copies of ``rows``), flattened."""
        return None if weights is None else np.broadcast_to(weights[rows], values.shape).ravel()

    if n < MIN_QUANTILE_ROWS:
        # Too few rows to see a shape (and to place quantile knots): standardize.
        mean, spread = np.array([_mean_std(p.ravel(), weights_of(p)) for p in pooled]).T
        spread = np.where(spread > 0, spread, 1.0)
        z_knots = np.broadcast_to(np.linspace(-10.0, 10.0, N_KNOTS), (n_features, N_KNOTS))
        return mean[:, None] + spread[:, None] * z_knots, z_knots.copy()
    folds = rng.permutation(n_rows) % 2
    n_fold = [
        effective_rows(int((folds == k).sum()), None if weights is None else weights[folds == k])
        for k in (0, 1)
    ]
    candidates = [SHRINK_ROWS / (SHRINK_ROWS + n / 2), 0.5, 1.0]
    x_knots = np.empty((n_features, N_KNOTS))
    z_knots = np.empty((n_features, N_KNOTS))
    for j in range(n_features):
        cells = 2 * half[:, j][half[:, j] > 0]
        cell = float(cells.min()) if cells.size else np.inf
        jumps = density_jumps(X[:, j], half[:, j], weights)
        halves = [pooled[j][:, folds == k] for k in (0, 1)]
        half_w = [weights_of(h, folds == k) for k, h in enumerate(halves)]
        scores = [0.0] * len(candidates)
        if min(h.shape[1] for h in halves) >= 2:
            for k in (0, 1):
                # The candidates share the x knots (and so the quantiles and
                # the segment of each held-out value); only the z knots differ.
                x_k, z_k, linear = _quantile_knots(
                    halves[k].ravel(), n_fold[k], half_w[k], cell, jumps
                )
                held = halves[1 - k].ravel()
                idx = _segments(held, x_k)
                for c, shrink in enumerate(candidates):
                    z_c = (1 - shrink) * z_k + shrink * linear
                    scores[c] += np.average(
                        _log_marginal(held, x_k, z_c, idx), weights=half_w[1 - k]
                    )
        best = int(np.argmax(scores))
        shrink = SHRINK_ROWS / (SHRINK_ROWS + n) if best == 0 else candidates[best]
        x_knots[j], z_knots[j] = _quantile_map(
            pooled[j].ravel(), n, shrink, weights_of(pooled[j]), cell, jumps
        )
    return x_knots, z_knots
