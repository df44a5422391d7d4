"""Data statistics that the estimator bakes into the flow's fixed first layer.

Numpy only. Everything computed here ends up in buffers of the flow, so the
reported density stays exact in the user's units.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import ledoit_wolf_shrinkage

# A column is treated as discrete when its values sit on a lattice (every gap
# between sorted distinct values a multiple of the smallest one) and repeat:
# at most this fraction of the rows holds a distinct value.
MAX_DISTINCT_FRACTION = 0.5
# Low-cardinality columns are discrete even off a lattice ({0, 1, 2.5}).
MAX_LEVELS = 20
# Gaps may miss a multiple of the step by this fraction of the step: tables
# are often stored rounded to a few significant digits.
_LATTICE_TOL = 0.02


def lattice_width(column: np.ndarray) -> float:
    """Dequantization width of one column: 0 for a continuous column, the
    smallest gap between distinct values for a discrete one, and 1 for a
    constant column (it then contributes exactly 0 to the log-density)."""
    values = np.unique(column)
    if values.size == 1:
        return 1.0
    gaps = np.diff(values)
    step = gaps.min()
    if values.size <= min(MAX_LEVELS, column.size * MAX_DISTINCT_FRACTION):
        return float(step)
    if values.size > column.size * MAX_DISTINCT_FRACTION:
        return 0.0
    ratio = gaps / step
    on_lattice = np.all(np.abs(ratio - np.round(ratio)) <= _LATTICE_TOL)
    return float(step) if on_lattice else 0.0


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
