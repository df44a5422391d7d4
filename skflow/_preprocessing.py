"""Data statistics that the estimator bakes into the flow's fixed first layer.

Numpy only. Everything computed here ends up in buffers of the flow, so the
reported density stays exact in the user's units.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import ledoit_wolf_shrinkage

# A column is treated as discrete when its values repeat: at most this
# fraction of the rows holds a distinct value (integer codes, ratings, counts,
# values rounded to a coarse resolution, point masses such as a zero for
# "absent"). Continuous measurements are nearly all distinct.
MAX_DISTINCT_FRACTION = 0.5


def lattice_width(column: np.ndarray) -> float:
    """Dequantization width of one column: 0 for a continuous column, the
    smallest gap between distinct values (the data's resolution) for a
    discrete one, and 1 for a constant column (it then contributes exactly 0
    to the log-density)."""
    values = np.unique(column)
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
    widths = np.asarray(dequantize, dtype=np.float64)
    if widths.shape != (n_features,) or not np.all(np.isfinite(widths)) or np.any(widths < 0):
        raise ValueError(
            "dequantize must be 'auto', False, or an array of n_features non-negative finite "
            f"widths (0 for a continuous feature); got shape {widths.shape} for "
            f"{n_features} features."
        )
    return widths


def standardization(
    X: np.ndarray, widths: np.ndarray, whiten: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Location and lower-triangular scale ``L`` of the dequantized data
    (uniform noise of width w adds variance w^2 / 12).

    Without ``whiten``, ``L`` is diagonal (per-feature standard deviations).
    With it, ``L L^T`` is a Ledoit-Wolf-shrunk covariance: the flow then starts
    as the best single Gaussian and its layers only have to learn what is not
    Gaussian, which matters most on small tables.
    """
    loc = X.mean(axis=0)
    var = X.var(axis=0) + widths**2 / 12.0
    # A constant continuous column (only with dequantize=False) has no spread.
    std = np.sqrt(np.where(var > 0, var, 1.0))
    if not whiten or X.shape[1] == 1:
        return loc, np.diag(std)
    Z = (X - loc) / std
    alpha = ledoit_wolf_shrinkage(Z, assume_centered=True)
    corr = Z.T @ Z / len(Z) + np.diag(widths**2 / 12.0 / std**2)
    corr = (1 - alpha) * corr + alpha * np.eye(len(corr)) * np.trace(corr) / len(corr)
    # Shrinkage keeps corr positive definite; the jitter guards exact collinearity.
    chol = np.linalg.cholesky(corr + 1e-6 * np.eye(len(corr)))
    return loc, std[:, None] * chol


N_KNOTS = 128
# Weight of plain standardization in the marginal map: SHRINK_ROWS / (SHRINK_ROWS + n)
# (measured on small real tables: 0 overfits ~100-row tables, 300 underfits ~400-row ones).
SHRINK_ROWS = 100.0
# Pooled draws of dequantization noise (bounded in total size) so that the
# quantiles of a discrete feature trace its dequantized, piecewise-uniform CDF.
_MAX_POOLED = 400_000


def gaussianizing_knots(
    X: np.ndarray, widths: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(x, z)`` of shape ``(n_features, N_KNOTS)`` of a monotone
    piecewise-linear map from each feature's quantiles to normal quantiles.

    The empirical CDF is smoothed: about ``2 n^(1/3)`` equal-frequency bins
    (more data, finer bins), each with a constant density, and the map is
    blended with plain standardization with weight ``100 / (100 + n)``. Beyond the data the
    map continues linearly with the mean slope of the outer 10% of the mass,
    so the tails stay Gaussian-like and every real input maps somewhere finite.
    """
    from scipy.special import ndtri

    n, n_features = X.shape
    rng = np.random.RandomState(seed)
    draws = max(1, min(8, _MAX_POOLED // max(n, 1)))
    pooled = np.concatenate(
        [X + (rng.uniform(size=X.shape) - 0.5) * widths for _ in range(draws)]
    )
    n_bins = int(np.clip(round(2 * n ** (1 / 3)), 4, N_KNOTS - 3))
    p_lo, p_hi = 0.5 / n, 1 - 0.5 / n
    p_coarse = np.linspace(p_lo, p_hi, n_bins + 1)
    p_fine = np.linspace(p_lo, p_hi, N_KNOTS - 2)
    z_fine = ndtri(p_fine)
    tail = max(1, int(0.1 * (N_KNOTS - 2)))
    shrink = SHRINK_ROWS / (SHRINK_ROWS + n)
    x_knots = np.empty((n_features, N_KNOTS))
    z_knots = np.empty((n_features, N_KNOTS))
    for j in range(n_features):
        col = pooled[:, j]
        spread = col.std()
        spread = spread if spread > 0 else 1.0
        x_coarse = np.quantile(col, p_coarse)
        # Ties (a point mass off any lattice) would give an infinite slope:
        # keep knots at least 1e-3 standard deviations apart.
        step = 1e-3 * spread * np.arange(n_bins + 1)
        x_coarse = np.maximum.accumulate(x_coarse - step) + step
        x_fine = np.interp(p_fine, p_coarse, x_coarse)
        lo = (z_fine[tail] - z_fine[0]) / (x_fine[tail] - x_fine[0])
        hi = (z_fine[-1] - z_fine[-1 - tail]) / (x_fine[-1] - x_fine[-1 - tail])
        reach = 10 * spread
        x_knots[j] = np.concatenate([[x_fine[0] - reach], x_fine, [x_fine[-1] + reach]])
        z_knots[j] = np.concatenate([[z_fine[0] - reach * lo], z_fine, [z_fine[-1] + reach * hi]])
        # Few rows make a noisy histogram: shrink towards plain standardization.
        linear = (x_knots[j] - col.mean()) / spread
        z_knots[j] = (1 - shrink) * z_knots[j] + shrink * linear
    return x_knots, z_knots
