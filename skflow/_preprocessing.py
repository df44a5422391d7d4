"""Data statistics that the estimator bakes into the flow's fixed first layer.

Numpy only. Everything computed here ends up in buffers of the flow, so the
reported density stays exact in the user's units.
"""

from __future__ import annotations

import numpy as np

# A column is treated as discrete when its values sit on a lattice (every gap
# between sorted distinct values a multiple of the smallest one) and repeat:
# at most this fraction of the rows holds a distinct value.
MAX_DISTINCT_FRACTION = 0.5
# Low-cardinality columns are discrete even off a lattice ({0, 1, 2.5}).
MAX_LEVELS = 20
_LATTICE_RTOL = 1e-4


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
    on_lattice = np.all(np.abs(ratio - np.round(ratio)) <= _LATTICE_RTOL * np.maximum(ratio, 1))
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


def standardization(X: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale of the dequantized data (uniform noise of width w adds
    variance w^2 / 12), so standardized features have unit variance."""
    loc = X.mean(axis=0)
    scale = np.sqrt(X.var(axis=0) + widths**2 / 12.0)
    # A constant continuous column (only with dequantize=False) has no spread.
    return loc, np.where(scale > 0, scale, 1.0)
