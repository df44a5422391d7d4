"""The scikit-learn layer: parameters, validation, numpy in and out, outlier API.

The engine (``skflow.engine``) never imports scikit-learn; this module and
the other ``skflow/_*.py`` helpers do. It turns arrays into tensors, builds
the torch flow late (in ``fit``), hands it to the engine's training loop, and
keeps the fitted flow so that it pickles anywhere.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable
from numbers import Integral, Real
from typing import cast

import numpy as np
import torch
from sklearn import config_context
from sklearn.base import BaseEstimator, OutlierMixin, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
)
from sklearn.utils.validation import (
    _check_feature_names_in,
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from skflow import _persistence
from skflow._preprocessing import (
    N_KNOTS,
    SAME_VALUE_RTOL,
    _nearest,
    degenerate_columns,
    dequantization_widths,
    effective_rows,
    fixed_noise,
    gaussianizing_knots,
    half_widths,
    lattice_width,
    noise_cells,
    snap_to_cells,
    standardization,
    weighted_lower_median,
    weighted_quantile,
)
from skflow._progress import epoch_progress
from skflow.engine import KINDS, Flow, StandardNormal, build_transform, resolve_device, train_flow
from skflow.engine.device import in_chunks, plain_torch
from skflow.engine.diagnostics import round_trip_error
from skflow.engine.flows import SHAPE_OPTIONS
from skflow.engine.rng import drawing_from, seeded_build
from skflow.engine.transforms import (
    Affine,
    BatchNormFlow,
    Compose,
    LogTails,
    PiecewiseLinear,
    Transform,
    without_log_det,
)
from skflow.exceptions import InvertibilityWarning

# Under contamination="auto", the offset is this quantile of the scores of
# held-out (validation) rows.
AUTO_TAIL = 0.01

# Parameters whose constraints (Interval) would take a bool for 0 or 1.
_NUMBERS = frozenset(
    {
        "n_layers",
        "hidden_units",
        "max_iter",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "validation_fraction",
        "n_iter_no_change",
        "tol",
        "contamination",
        "max_time",
    }
)

# Fewest rows per minibatch for batch normalization's statistics (2 rows
# gave a training loss of -6.9 against a true -22.9 on wine).
BATCH_NORM_ROWS = 8

# Without validation rows, a last epoch's training loss this many nats per row
# above the best epoch's is training gone astray (epochs' losses differ by
# far less through minibatch and dequantization noise alone).
LOSS_RISE = 1.0

# Latent values beyond this many standard deviations are compressed
# logarithmically (a heavy-tailed latent): a standard normal exceeds it with
# probability 6e-7, so fits of in-distribution data do not see it.
TAIL_START = 5.0

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Rows to score or map stay float32 if they come so: chunks are shifted and
# cast as they go (exactly), not the whole input copied to float64 first.
_MAPPED_DTYPES = (np.float64, np.float32)
# Training columns must stay within [1/_SQUARE_SAFE, _SQUARE_SAFE] in size so
# that their float64 squares (variances) neither overflow nor underflow.
_SQUARE_SAFE = 1e150

# The invertibility check after fit round-trips at most this many training
# rows (inverses can be costly: D sequential steps for autoregressive flows,
# an ODE solve for continuous ones) and warns above this error, in standard
# deviations of each column: far above the round-off of a healthy flow (on wine:
# 6-8e-7 in float32, 2e-15 in float64), far below a broken inverse's error.
INVERTIBILITY_ROWS = 1000
INVERTIBILITY_TOL = {"float32": 1e-2, "float64": 1e-8}


def _is_cell_table(cell) -> bool:
    """A per-value cell description: (values, half-widths, reach or None)."""
    if not (isinstance(cell, tuple) and len(cell) == 3):
        return False
    values, half, reach = cell
    arrays = all(
        isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind == "f" for a in (values, half)
    )
    return arrays and values.shape == half.shape and (reach is None or isinstance(reach, Real))


def _marginal_tails(flow: torch.nn.Module) -> list[float]:
    """The ``linear_tail`` of each marginal map (PiecewiseLinear) of ``flow``."""
    return [
        float(getattr(m, "linear_tail", 0.0))
        for m in flow.modules()
        if isinstance(m, PiecewiseLinear)
    ]


def _is_numeric_dtype(name) -> bool:
    """A ``feature_dtypes_`` entry: a numeric numpy dtype's name, or None."""
    try:
        return name is None or (isinstance(name, str) and np.dtype(name).kind in "biuf")
    except TypeError:
        return False


def _check_fitted(fitted: dict, cls: type) -> None:
    """Raise ``ValueError`` for fitted attributes (read from a model file)
    that fit could not have set: names that are not fitted-attribute names
    or would shadow the class's own (methods, properties), or values of the
    wrong kind that would only fail later, deep in scoring or sampling.
    Other names load as they are (fitted attributes are saved generically)."""
    bad = sorted(
        k
        for k in fitted
        if not (isinstance(k, str) and k.endswith("_") and not k.startswith("_")) or hasattr(cls, k)
    )
    if bad:
        raise ValueError(f"invalid fitted attribute names {bad}")
    d = fitted.get("n_features_in_")
    # (cast: typeshed's numbers.Integral declares < and <= only.)
    if not (isinstance(d, Integral) and not isinstance(d, bool) and cast(int, d) >= 1):
        raise ValueError(f"n_features_in_={d!r} is not a positive int")
    shapes = {"dequantization_": (d,), "center_": (d,), "lattice_range_": (2, d)}
    for name, shape in shapes.items():
        value = fitted.get(name)
        if value is not None and not (
            isinstance(value, np.ndarray)
            and value.shape == shape
            and value.dtype.kind == "f"
            and np.isfinite(value).all()
        ):
            raise ValueError(f"{name} is not a finite float array of shape {shape}")
    for name in ("offset_", "reconstruction_error_"):
        if not isinstance(fitted.get(name), Real) or isinstance(fitted.get(name), bool):
            raise ValueError(f"{name}={fitted.get(name)!r} is not a number")
    if not np.isfinite(fitted["offset_"]):
        raise ValueError(f"offset_={fitted['offset_']!r} is not finite")
    names = fitted.get("feature_names_in_")
    if names is not None and not (
        isinstance(names, np.ndarray)
        and names.shape == (d,)
        and all(isinstance(n, str) for n in names)
    ):
        raise ValueError(f"feature_names_in_ is not {d} column names")
    dtypes = fitted.get("feature_dtypes_")
    if dtypes is not None and not (
        isinstance(dtypes, list) and len(dtypes) == d and all(map(_is_numeric_dtype, dtypes))
    ):
        raise ValueError(f"feature_dtypes_ is not {d} numeric dtype names (or None)")
    cells = fitted.get("dequantization_cells_")
    if cells is not None and not (
        isinstance(cells, list)
        and len(cells) == d
        and all(isinstance(c, Real) or _is_cell_table(c) for c in cells)
    ):
        raise ValueError("dequantization_cells_ is not one cell description per feature")


# Kinds whose layers reduce to one affine map of a single column: an
# autoregressive or coupling conditioner has nothing to condition on.
_AFFINE_IN_ONE_DIMENSION = ("maf", "iaf", "realnvp", "nice", "glow")


def _warn_few_rows(
    n_train: int, w_train: np.ndarray | None, n_features: int, validated: bool
) -> None:
    """Warn (at the caller of ``fit``) when the training rows, or the rows
    the weights sit on, are no more than the features (``validated``: after
    a validation split)."""
    n_effective = effective_rows(n_train, w_train)
    if n_effective > n_features:
        return
    # n points span at most n - 1 dimensions: a density in all of them can
    # only pile up near that subspace. Weights concentrated on a few rows do
    # the same.
    rows = f"{n_train} row{'s' * (n_train != 1)}"
    if w_train is not None:
        rows += f", as many as {n_effective:.1f} equally weighted ones,"
    split = " (after the validation split)" if validated else ""
    remedy = ", or a smaller validation_fraction" if validated else ""
    warnings.warn(
        f"FlowDensity trains on {rows}{split} "
        f"in {n_features} dimensions: with no more rows than features the density "
        "collapses towards the rows' subspace, so training rows score far above new "
        f"ones. Use more rows or fewer features (e.g. PCA in a Pipeline){remedy}.",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )


def _checked_split(split: object) -> tuple:
    """A validation split read from a model file: ``(RandomState state,
    rows, validation rows)``; ValueError for anything fit could not have
    written."""
    ok = (
        isinstance(split, tuple)
        and len(split) == 3
        and all(isinstance(v, Integral) and not isinstance(v, bool) for v in split[1:])
        and 0 <= split[2] < split[1]
        and isinstance(split[0], tuple)
        and len(split[0]) == 5
        and isinstance(split[0][1], np.ndarray)
        and split[0][1].shape == (624,)
        and split[0][1].dtype == np.uint32
    )
    if ok:
        try:
            np.random.RandomState().set_state(cast(tuple, split)[0])
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise ValueError("its validation split is not one fit could have written")
    return cast(tuple, split)  # (checked above)


def _center(X: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """A training value per column (the lower median) that the flow's input
    is shifted by, in float64, before it becomes a tensor: float32 then
    keeps the digits of a column far from zero (timestamps, a large
    constant). An observed value keeps integer codes integers, and a shift
    leaves the density unchanged."""
    if weights is None:
        return np.sort(X, axis=0)[(X.shape[0] - 1) // 2].copy()
    return np.array([weighted_lower_median(col, weights) for col in X.T])


# A draw more than one training range beyond the data whose forward map
# misses its latent by more than this (relative to 1 + |z|) is drawn again,
# up to REDRAW_ROUNDS times.
SAMPLE_LATENT_TOL = 1e-2
REDRAW_ROUNDS = 8
# The most draws that count as far out before "far" is widened tenfold.
FAR_SHARE = 0.01
# The methods that take sample_weight, which metadata routing can request.
_ROUTED_METHODS = ("fit", "score")
# Parameters that shape the flow: a warm start cannot change them.
_SHAPE_PARAMS = (
    "kind",
    "n_layers",
    "hidden_units",
    "dtype",
    "dequantize",
    "whiten",
    "gaussianize",
    "kind_options",
)


def _same_value(a, b) -> bool:
    """Parameter equality by value: numpy scalars like Python's, arrays,
    tuples and lists elementwise (``dequantize``, ``image_shape``), dicts key
    by key, and ``None`` like ``{}`` (``kind_options``)."""
    a, b = ({} if v is None else v for v in (a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_same_value(a[key], b[key]) for key in a)
        )
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if np.ndim(a) or np.ndim(b):
        return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))
    return bool(a == b)


def _weighted_rows(X: np.ndarray, sample_weight: object) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of ``X`` with a positive ``sample_weight`` and their weights
    divided by the largest, or None when all are equal (the unweighted fit).
    A weight too small to tell from 0 next to the largest counts as 0."""
    weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
    weights = weights / weights.max()  # (all zero is refused above)
    keep = weights > 0
    if keep.sum() < 2:
        raise ValueError(
            f"sample_weight gives a non-zero weight to {keep.sum()} row(s) (weights too "
            "small to tell from 0 next to the largest, below about 5e-324 of it, count as 0); "
            "a density needs at least 2 rows of positive weight."
        )
    X, weights = X[keep], weights[keep]
    # (The largest is 1: the others summed without it, so none is lost.)
    others = np.sort(weights)[:-1].sum()
    if others / (1 + others) < 1e-6:
        # One row holds all but a millionth of the weight: a point mass,
        # whose weighted spread underflows to 0 for ratios near 1e300.
        raise ValueError(
            f"sample_weight puts nearly all the weight on one row (the other {len(X) - 1} "
            f"rows share {others / (1 + others):.2g} of it): a density needs the weight "
            "spread over at least 2 rows."
        )
    return X, None if np.all(weights == weights[0]) else weights


def _check_size(est: FlowDensity, fitted: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse, before building anything, a model file whose parameters name
    a flow larger than the values it holds: a genuine file holds at least a
    location per feature and, for every kind with hidden layers, a bias per
    hidden unit of each layer. A forged one could otherwise make ``load``
    build a network that exhausts memory before its tensors are compared."""
    hidden = fitted["hidden_units_"]
    hidden = (hidden,) if isinstance(hidden, Integral) else tuple(hidden)
    needed = int(fitted["n_features_in_"])
    if est.kind != "planar":  # (planar layers have no hidden units)
        # Per layer: a bias per hidden unit, a weight per pair of units in
        # successive hidden layers (a convolution's kernel holds more).
        between = sum(int(a) * int(b) for a, b in zip(hidden[:-1], hidden[1:], strict=True))
        needed += int(est.n_layers) * (sum(map(int, hidden)) + between)
    held = sum(t.numel() for t in tensors.values())
    # Every layer holds at least one tensor of its own.
    if needed > held or int(est.n_layers) > len(tensors):
        raise ValueError(
            f"its parameters name a flow of at least {needed} values in {est.n_layers} "
            f"layers (n_features_in_={fitted['n_features_in_']}, hidden_units_={hidden}) but "
            f"it holds {held} in {len(tensors)} tensors"
        )


def _usable_device(wanted: str | torch.device, dtype: torch.dtype) -> torch.device:
    """``wanted`` if this machine has it, else the GPU ``"auto"`` picks for
    ``dtype`` (or the CPU) with a warning, so a model fitted on a GPU still
    loads (pickle or :meth:`FlowDensity.load`) on a machine without that one."""
    try:
        return resolve_device(wanted, dtype)
    except ValueError:
        device = resolve_device("auto", dtype)
        warnings.warn(
            f"This FlowDensity was fitted on {wanted}, which is not available here; "
            f"it will score and sample on {device}.",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )
        return device


def _column_dtypes(X):
    """A DataFrame's column dtypes (a Series of them), or None for anything
    else (arrays, lists, a pandas Series, which has one dtype)."""
    dtypes = getattr(X, "dtypes", None)
    return dtypes if hasattr(dtypes, "items") else None


def _warn_inexact_integers(X, dtypes) -> None:
    """Warn when integer columns hold values beyond 2**53, which the float64
    computation rounds (neighbouring values merge)."""
    if dtypes is not None:
        columns = [(name, X[name].to_numpy()) for name, t in dtypes.items() if t.kind in "iu"]
    elif isinstance(X, np.ndarray) and X.dtype.kind in "iu":
        columns = list(enumerate(X.T)) if X.ndim == 2 else []
    elif isinstance(X, np.ndarray) and X.dtype != object:
        return  # (floats: nothing to tell; no per-cell scan of large arrays)
    else:
        # Lists or object arrays: Python ints, which a float64 conversion
        # rounds before any dtype could tell.
        try:
            cells = np.asarray(X, dtype=object)
        except (TypeError, ValueError):
            return  # (validation says what is wrong)
        if cells.ndim != 2:
            return
        exact = np.vectorize(
            lambda v: not isinstance(v, Integral) or abs(int(v)) <= 2**53, otypes=[bool]
        )
        columns = [(int(j), np.array([2**54])) for j in np.flatnonzero(~exact(cells).all(axis=0))]
    # (-2**53 as an int: abs() of int64's minimum would overflow.)
    big = [name for name, c in columns if c.size and (c.max() > 2**53 or c.min() < -(2**53))]
    if big:
        warnings.warn(
            f"X holds integers beyond 2**53 (columns {big}), which FlowDensity's float64 "
            "arithmetic rounds: neighbouring values merge. Subtract a large offset first "
            "(e.g. each column's minimum).",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _user_stacklevel() -> int:
    """The ``stacklevel`` at which a ``warnings.warn`` in the calling
    function points at the first frame outside skflow, scikit-learn and
    joblib (which runs cross-validation's fits): the user's line, however
    deep the call chain."""
    import joblib
    import sklearn

    ours = tuple(
        os.path.dirname(path) + os.sep for path in (__file__, sklearn.__file__, joblib.__file__)
    )
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(ours):
        frame, level = frame.f_back, level + 1
    return level


def _numpy_dtypes(X) -> list[str | None] | None:
    """The numpy dtype of each numeric column of a DataFrame (None for other
    types, e.g. pandas' nullable "Int64"); None for anything else."""
    dtypes = _column_dtypes(X)
    if dtypes is None:
        return None
    return [
        str(t) if isinstance(t, np.dtype) and t.kind in "biuf" else None for _, t in dtypes.items()
    ]


def _plain_torch(training: bool = False):
    """Run the method under :func:`~skflow.engine.device.plain_torch`: the
    caller's default device, autocast or no_grad block does not reach in."""

    def wrap(method):
        @functools.wraps(method)
        def inner(*args, **kwargs):
            with plain_torch(training):
                return method(*args, **kwargs)

        return inner

    return wrap


class FlowDensity(OutlierMixin, TransformerMixin, BaseEstimator):
    """Normalizing-flow density estimator and outlier detector.

    A flow maps data through a stack of invertible layers to a standard
    normal; the change-of-variables formula gives the exact log-density of
    every row. The data are standardized inside the flow, so
    :meth:`score_samples` reports log-densities in the units of ``X``.

    Parameters
    ----------
    kind : str, default="maf"
        Flow family. ``"maf"`` (masked autoregressive flow: fast density,
        sampling solves one feature after the other) or ``"realnvp"`` (affine
        coupling: fast in both directions). ``"cnf"`` is a continuous
        normalizing flow (an ODE; trained by flow matching or, with
        ``kind_options={"training": "mle"}``, FFJORD maximum likelihood).
        ``"glow"``: ActNorm, learned invertible linear mixing and affine
        coupling; ``kind_options={"image_shape": (C, H, W)}`` (rows are
        flattened images) gives multi-scale image Glow with 1x1
        convolutions, ``"n_levels"`` scales. ``"nice"``: additive
        (volume-preserving) coupling, the simplest and slowest to learn.
        ``kind_options={"batch_norm": True}`` adds batch normalization
        after each layer of ``"maf"``, ``"realnvp"`` and ``"nice"``.
        ``"nsf"``: rational-quadratic neural spline flow, the most flexible
        per layer; ``kind_options`` ``"variant"`` (``"autoregressive"``,
        default, or ``"coupling"``: fast sampling, faster training),
        ``"n_bins"`` (8) and ``"tail_bound"`` (3.0; 5.0 for heavy tails; at most 100).
        ``"iaf"``: inverse autoregressive flow, fast sampling but density
        (and so training) solves one feature after the other. ``"planar"``: planar
        flow (rank-one layers, no network, ``hidden_units`` ignored); weak
        on tabular data, needs tens of ``n_layers``.
    n_layers : int, default=5
        Number of flow layers (transforms) stacked; for ``"cnf"``, the number
        of vector-field networks, each owning an equal slice of the ODE's time
        (one ODE solve each: 1 or 2 is usually enough); for image ``"glow"``,
        the number of steps per scale.
    hidden_units : "auto", int or tuple of int, default="auto"
        Hidden layer widths of each layer's conditioner network. An int ``h``
        means ``(h, h)``; ``()`` means no hidden layer (linear conditioners).
        ``"auto"`` sizes the network to the data, so small
        tables don't overfit: ``(32, 32)`` below 1,000 rows, ``(64, 64)``
        below 20,000, ``(128, 128)`` above (measured on the shared
        benchmark tables with ``benchmarks/density.py --params``; see the
        benchmarks page of the documentation).
    max_iter : int, default=500
        Maximum number of epochs (passes over the training data).
    batch_size : int or "auto", default="auto"
        Minibatch size; ``"auto"`` uses an eighth of the training rows,
        clipped to 64..256 (and at most all of them): several steps per epoch
        on small tables, full 256-row batches from 2,048 training rows up
        (2,276 rows with the default validation split).
    learning_rate : float, default=1e-3
        Adam (AdamW) learning rate.
    weight_decay : float, default=0.0
        Decoupled weight decay (AdamW); a small value helps on small tables.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows, stop when their mean
        log-likelihood stops improving and restore the best weights. When
        False, all rows are used for training and training stops when the
        training loss stops improving.
    validation_fraction : float, default=0.1
        Fraction of rows held out for early stopping (at least one row).
    n_iter_no_change : int, default=20
        Epochs without an improvement larger than ``tol`` before stopping.
    tol : float, default=1e-4
        Minimum improvement of the monitored mean log-likelihood, in nats.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Expected proportion of outliers, used to set ``offset_``. With a
        float, ``offset_`` is that quantile of the training scores, so that
        fraction of the training rows is flagged. With ``"auto"``,
        ``offset_`` is the 1% quantile of the scores of the held-out
        validation rows (of the training rows when ``early_stopping=False``):
        about 1% of new normal data is flagged, however much the flow
        overfits its training rows, once there are a few hundred validation
        rows; with fewer the share flagged varies widely from fit to fit
        (see the outlier guide).
    device : str or torch.device, default="auto"
        Where to train and score: ``"auto"`` picks CUDA, then MPS (with
        ``dtype="float32"``: MPS has no float64), then CPU; ``"cpu"``,
        ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``.
        Requesting a device this machine lacks raises ``ValueError``.
    dtype : {"float32", "float64"}, default="float32"
        Floating point precision of the flow; ``"float64"`` is slower but
        exact to more digits. Columns far from zero (Unix timestamps, a
        large constant) are fine in either: the flow sees each column
        shifted by one of its values (``center_``), in float64. ``fit``
        refuses columns whose spread the precision cannot hold (float32:
        beyond ~8.5e37, a quarter of its maximum; float64: beyond 1e150 or
        below 1e-150) with a
        ``ValueError``, rather than fit rounding noise.
    max_time : float or None, default=900
        Training time budget in seconds; training stops (keeping the best
        weights, with a ``ConvergenceWarning``) once it is spent, so a fit on
        millions of rows ends in bounded time. The clock starts with
        training, so ``compile=True``'s compilation counts. Tables up to
        ~100,000 rows normally converge well within 15 minutes on a CPU. A fit
        that stops on time is not bit-reproducible. None means no limit.
    compile : bool, default=False
        Run the training steps through ``torch.compile``: a one-off
        compilation (7-25 s on a CPU for the first fit in a process, 1-3 s
        when torch's on-disk cache already holds it), then steps 1.3x (maf)
        to 2x (nsf) faster on a CPU (``benchmarks/speed.py``). Worth it
        for fits that take minutes. Supported by every kind but ``"glow"`` and
        ``"cnf"`` with ``training="mle"``; for those, or if compiling fails on
        this machine (no C++ compiler, an unsupported operation), training
        continues without it, with a ``UserWarning``. Scoring and sampling
        are not compiled.
    dequantize : "auto", False or array-like of shape (n_features,), default="auto"
        Discrete features (integer codes, counts, ratings, a handful of
        levels) and point masses (a value shared by many rows of an
        otherwise continuous feature, such as a zero for "absent") would let a
        continuous density grow without bound on their values. They are
        dequantized: at every training step each such value gets uniform
        noise over its cell. ``"auto"`` detects discrete features (at most
        half the rows hold a distinct value) and the values that at least 1%
        of a continuous feature's rows share; a value's cell is centred on
        it and reaches halfway to the nearer neighbouring training value, so
        an isolated code gets a wide cell and a run of integers cells of
        width 1. ``False`` turns
        this off; an array gives each feature one noise width for all its
        values (0 = continuous). :meth:`score_samples` then reports the
        log-density of the dequantized variable ``X + U`` at ``X``; adding
        the log of :meth:`cell_widths` turns a discrete feature's density
        into the probability of its value.
    whiten : bool, default=True
        Start the flow with a fixed linear whitening layer fitted to the
        data (mean and Ledoit-Wolf-shrunk covariance), so that before
        training the model already is a (shrunk) single Gaussian and its
        layers learn only what is not Gaussian. Robust on small, correlated
        tables; on near-collinear ones the shrinkage puts the start below
        the maximum-likelihood Gaussian (4.5 nats per row on breast_cancer).
        With False, the fixed first layer only standardizes each feature.
        Either way the layer's log-determinant is part of the density.
    gaussianize : bool, default=True
        Start the flow with a fixed monotone piecewise-linear map of each
        feature from its smoothed empirical quantiles to normal quantiles
        (about ``2 n^(1/3)`` equal-frequency bins), blended with plain
        standardization as much as 2-fold cross-validation of each feature's
        marginal likelihood prefers, with linear, then logarithmic tails
        beyond the data.
        Skewed, multimodal and spiky features (a point mass at zero, say)
        then reach the learned layers already near-normal, Gaussian ones stay
        smooth, and far-out queries stay finite; with ``whiten`` the model
        starts as a Gaussian copula. The map's log-determinant is part of the
        density, which stays exact in the units of ``X``.
    kind_options : dict or None, default=None
        Extra keyword options for the chosen ``kind``'s constructor.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialization, the validation split and minibatch
        order. An int makes ``fit`` reproducible.
    verbose : int, default=0
        0 is silent. 1 shows a progress bar (in notebooks and terminals) with
        the epoch and the training and validation loss; 2 also writes one
        line per epoch.
    warm_start : bool, default=False
        With True, ``fit`` on a fitted estimator continues training its flow
        (on the new ``X``, for up to ``max_iter`` more epochs, with a fresh
        optimizer and the first fit's validation split when ``X`` has as many
        rows as then, else a new split) instead of starting
        anew: to go on
        after ``max_time`` or ``max_iter`` cut a fit short, or to fine-tune on
        new rows. The fixed layers (centre, quantile map, whitening,
        dequantization cells) stay those of the first fit, so the density
        remains exact; ``offset_`` and ``reconstruction_error_`` are
        recomputed on the new rows (``fit`` warns when they leave the first
        fit's range or discrete values); ``loss_curve_`` and ``validation_scores_``
        grow and ``n_iter_`` counts all epochs. Parameters that shape the
        flow (``kind``, ``n_layers``, ``hidden_units``, ``dtype``,
        ``dequantize``, ``whiten``, ``gaussianize``, ``kind_options``) and
        the features must stay as fitted; the training parameters may change.

    Attributes
    ----------
    flow_ : skflow.engine.Flow
        The fitted torch flow (standardization and the other fixed layers
        included), on ``device_``, for rows shifted by ``center_``: with
        ``t = torch.as_tensor(X - center_, dtype=torch.float32)`` (the
        ``dtype`` parameter) on ``device_``, ``flow_.log_prob(t)`` is
        ``score_samples(X)``, and under ``torch.no_grad()``,
        ``flow_.sample(n).cpu().numpy() + center_`` draws rows (``sample``
        also snaps discrete columns onto their values).
    device_ : torch.device
        Device the flow lives on.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``X`` was a DataFrame with string column names.
    feature_dtypes_ : list of str or None
        When ``X`` was a pandas DataFrame: each column's numpy dtype (``None``
        for other types, such as pandas' nullable ``"Int64"``), which
        ``sample(as_frame=True)`` restores (integer draws rounded, booleans
        as ``True``/``False``).
    loss_curve_ : list of float
        Mean training negative log-likelihood (nats per row) of each epoch.
        For ``"cnf"`` with ``training="mle"`` the regularization terms are
        included; with ``training="flow_matching"`` it is the flow-matching
        loss (the squared velocity error summed over the features, averaged
        over rows, in standardized units), not a likelihood.
    validation_scores_ : list of float or None
        Validation mean log-likelihood after each epoch (None without
        early stopping; once a fit of this model validated, ``warm_start``
        fits keep the list, with NaN for the epochs of fits without it).
        For ``"cnf"`` with ``training="flow_matching"`` it is minus the
        flow-matching loss on the validation rows (fixed random draws),
        which is far cheaper than an ODE solve per epoch; :meth:`score`
        gives their log-likelihood.
    best_validation_score_ : float or None
        Validation score of the weights kept (None without early stopping):
        the best epoch's, or the starting weights' when no epoch beat them.
    best_epoch_ : int
        Epoch whose weights were kept (the last one without early stopping);
        0 means no epoch improved on the starting point (the fixed
        preprocessing with an untrained flow, which fit warns about). Epochs
        are counted over all fits of a ``warm_start`` flow.
    n_iter_ : int
        Number of epochs run (over all fits of a ``warm_start`` flow).
    hidden_units_ : tuple of int
        The conditioner widths used (``hidden_units`` resolved; recorded but
        unused by ``"planar"``, which has no conditioner).
    nfe_ : dict
        Only for ``"cnf"``: vector-field evaluations. ``"fit_total"`` in
        training solves (0 under flow matching, which solves no ODE; with
        ``adjoint=True``, the backward solves too; all fits of a
        ``warm_start`` flow), ``"fit_per_solve"`` per training batch,
        ``"last_solve"`` for the scoring solve that sets ``offset_`` at the
        end of ``fit``.
    dequantization_ : ndarray of shape (n_features_in_,)
        Resolution of each discrete feature (its smallest gap between
        values; 0 for continuous features, 1 for a constant column).
    dequantization_cells_ : list
        Per feature, the dequantization cells: a constant half-width, or the
        training values with the half-width of each value's cell and their
        reach (None: every value takes the nearest one's cell; else only
        values that close to one, a continuous feature's point masses).
        :meth:`cell_widths` looks them up.
    center_ : ndarray of shape (n_features_in_,)
        A training value of each column (the lower median) that the rows are
        shifted by, in float64, before the flow sees them, so columns far
        from zero keep their digits in float32; a shift leaves the density
        unchanged.
    lattice_range_ : ndarray of shape (2, n_features_in_)
        Smallest and largest training value of each feature: :meth:`sample`
        rounds dequantized features onto their values (see
        ``dequantization_cells_``) within this range.
    offset_ : float
        Threshold on :meth:`score_samples`; ``decision_function`` is
        ``score_samples(X) - offset_``.
    reconstruction_error_ : float
        Largest round-trip error ``|x - T^{-1}(T(x))|`` over (up to 1000)
        training rows, in standard deviations of each column: round-off
        (~1e-6 in float32, ~1e-15 in float64) for a healthy flow. Above
        1e-2 (float32) or 1e-8 (float64), ``fit`` raises an
        :class:`~skflow.exceptions.InvertibilityWarning`.

    See Also
    --------
    sklearn.mixture.GaussianMixture : Mixture-of-Gaussians density.
    sklearn.neighbors.KernelDensity : Kernel density estimate.
    sklearn.ensemble.IsolationForest : Tree-based outlier detector.

    Examples
    --------
    >>> from sklearn.datasets import load_wine
    >>> from skflow import FlowDensity
    >>> X = load_wine().data
    >>> est = FlowDensity(kind="maf", max_iter=20, random_state=0).fit(X)
    >>> est.score_samples(X[:3]).shape
    (3,)
    >>> est.sample(5, random_state=0).shape
    (5, 13)
    >>> est.predict(X[:3]).tolist()  # +1 inlier, -1 outlier
    [1, 1, 1]
    """

    _parameter_constraints: dict = {
        "kind": [StrOptions(set(KINDS))],
        "n_layers": [Interval(Integral, 1, None, closed="left")],
        "hidden_units": [
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
            tuple,
            list,
        ],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "device": [str, torch.device],
        "dtype": [StrOptions(set(_DTYPES))],
        "max_time": [None, Interval(Real, 0, None, closed="neither")],
        "compile": ["boolean"],
        "dequantize": [StrOptions({"auto"}), Options(bool, {False}), "array-like"],
        "whiten": ["boolean"],
        "gaussianize": ["boolean"],
        "kind_options": [None, dict],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    def _validate_params(self) -> None:
        super()._validate_params()
        # Interval(Integral) and Interval(Real) admit bools (True == 1): a
        # flag passed where a number belongs is refused by name.
        for name, value in self.get_params(deep=False).items():
            if isinstance(value, bool) and name in _NUMBERS:
                raise InvalidParameterError(
                    f"The {name!r} parameter of FlowDensity must be a number, not a bool; "
                    f"got {value!r}."
                )

    def __init__(
        self,
        kind="maf",
        *,
        n_layers=5,
        hidden_units="auto",
        max_iter=500,
        batch_size="auto",
        learning_rate=1e-3,
        weight_decay=0.0,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        tol=1e-4,
        contamination="auto",
        device="auto",
        dtype="float32",
        max_time=900,
        compile=False,
        dequantize="auto",
        whiten=True,
        gaussianize=True,
        kind_options=None,
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
        self.kind = kind
        self.n_layers = n_layers
        self.hidden_units = hidden_units
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.contamination = contamination
        self.device = device
        self.dtype = dtype
        self.max_time = max_time
        self.compile = compile
        self.dequantize = dequantize
        self.whiten = whiten
        self.gaussianize = gaussianize
        self.kind_options = kind_options
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------ fit
    def _hidden_units(self, n_train: int) -> tuple[int, ...]:
        units = self.hidden_units
        if isinstance(units, str):  # "auto": small tables get small networks
            width = 32 if n_train < 1000 else 64 if n_train < 20000 else 128
            return (width, width)
        if isinstance(units, Integral) and not isinstance(units, bool):
            return (int(units), int(units))
        # (cast: typeshed's numbers.Integral declares < and <= only.)
        # (A bool too: _validate_params refuses it, unless validation is off.)
        if isinstance(units, bool) or not all(
            isinstance(h, Integral) and not isinstance(h, bool) and cast(int, h) >= 1 for h in units
        ):
            raise ValueError(
                f"hidden_units must be 'auto', a positive int or a tuple of positive ints "
                f"(possibly empty: linear conditioners), got {units!r}."
            )
        return tuple(int(h) for h in units)

    def _build_flow(self, n_features: int, hidden_units: tuple[int, ...]) -> Flow:
        """The flow's structure, which depends only on the parameters, the
        number of features and the (resolved) hidden units; everything fitted
        lives in its ``state_dict`` (weights and buffers), so a saved state
        restores it exactly."""
        # Fixed layers, fitted to the data in _fit_preprocessing.
        preprocess: list[Transform] = [Affine(torch.zeros(n_features), torch.ones(n_features))]
        if self.gaussianize:
            grid = torch.linspace(-1, 1, N_KNOTS).expand(n_features, N_KNOTS)
            preprocess.insert(0, PiecewiseLinear(grid, grid))
        body = build_transform(
            self.kind,
            n_features,
            n_layers=self.n_layers,
            hidden_units=hidden_units,
            **(self.kind_options or {}),
        )
        layers = [*preprocess, body]
        if not hasattr(body, "training_loss"):
            # Identity within TAIL_START of the latent's centre, logarithmic
            # beyond: a far-out query scores a large negative log-density
            # instead of the body's exponential blow-up squared. Continuous
            # flows (an objective of their own: flow matching, or FFJORD's
            # ODE likelihood) keep a plain Gaussian.
            layers.append(LogTails(TAIL_START))
        return Flow(Compose(*layers), StandardNormal(n_features))

    def _fit_preprocessing(
        self, flow: Flow, X: np.ndarray, center: np.ndarray, weights: np.ndarray | None
    ):
        """Set the fixed layers in front of the flow's body from the training
        rows (counted with their ``weights``, if any); return the
        dequantization widths (each feature's resolution), cells (see
        :func:`noise_cells`) and the half-widths of ``X``'s noise. The cells
        are in the units of ``X``; the layers see ``X - center``."""
        widths = dequantization_widths(X, self.dequantize)
        too_wide = np.flatnonzero(widths > self._largest_representable())
        if too_wide.size:
            raise ValueError(
                f"dequantize widths {widths[too_wide].tolist()} (feature(s) {too_wide.tolist()}) "
                f"cannot be represented accurately in {self.dtype}: at most "
                f"{self._largest_representable():.3g}."
            )
        if not isinstance(self.dequantize, str):
            self._warn_undequantized(X, widths)
        cells = noise_cells(X, widths, auto=isinstance(self.dequantize, str))
        half = half_widths(X, cells)
        X = X - center
        flow.dequantization.copy_(torch.as_tensor(widths).to(flow.dequantization.dtype))
        # (The layers _build_flow made: the checker sees only Modules.)
        layers = cast(Compose, flow.transform).transforms
        noise_var = np.average(half**2, axis=0, weights=weights) / 3.0
        self._warn_degenerate(X, noise_var, weights)
        if self.gaussianize:
            marginal = cast(PiecewiseLinear, layers[0])
            x_knots, z_knots = gaussianizing_knots(X, half, weights=weights)
            marginal.reset(torch.as_tensor(x_knots), torch.as_tensor(z_knots))
            # Whiten what the marginal layer outputs, noise included (the
            # first of gaussianizing_knots's draws).
            draws, _ = fixed_noise(half)
            jitter = draws[0]
            knots = marginal.x_knots  # already on the flow's device
            noisy = torch.as_tensor(X + jitter, dtype=knots.dtype, device=knots.device)
            with torch.no_grad():
                Z = marginal(noisy)[0]
            X, noise_var = Z.cpu().double().numpy(), np.zeros_like(noise_var)
        loc, scale = standardization(X, noise_var, self.whiten, weights)
        standardize = cast(Affine, layers[1 if self.gaussianize else 0])
        standardize.reset(torch.as_tensor(loc), torch.as_tensor(scale))
        # (widths in float64, as dequantization_: the buffer has the flow's
        # dtype.)
        return widths, cells, half

    def _validate_X(self, X, dtype=np.float64, **kwargs) -> np.ndarray:
        """``validate_data`` to ``dtype`` (float64), with an error naming
        non-numeric columns."""
        dtypes = _column_dtypes(X)  # a DataFrame names its columns
        times = (
            []
            if dtypes is None
            else [
                c
                for c, t in dtypes.items()
                if getattr(t, "kind", None) in ("m", "M") or str(t).startswith("period")
            ]
        )
        array_kind = getattr(getattr(X, "dtype", None), "kind", None)
        if dtypes is None and array_kind in ("m", "M"):
            # (numpy would hand over the integer count of the array's time
            # unit: densities per day or per second, whichever it holds.)
            raise ValueError(
                f"FlowDensity models numeric features, but X holds {X.dtype} values. Convert "
                "them to numbers first, e.g. seconds since the earliest value: "
                "(X - X.min()) / np.timedelta64(1, 's')."
            )
        if times:
            raise ValueError(
                f"FlowDensity models numeric features, but X has date/time columns {times}. "
                "Convert them to numbers first, e.g. seconds since the earliest value: "
                "(df[col] - df[col].min()).dt.total_seconds() (a Period column: "
                "df[col].dt.to_timestamp() first)."
            )
        categorical = (
            [] if dtypes is None else [c for c, t in dtypes.items() if str(t) == "category"]
        )
        if categorical:
            # Integer-coded categories would convert silently, as if their
            # codes had an order and a scale.
            raise ValueError(
                f"FlowDensity models numeric features only, but X has categorical columns "
                f"{categorical}. Encode them first (e.g. OneHotEncoder in a ColumnTransformer), "
                "drop them, or, if the categories are genuine numbers, convert them with "
                ".astype(float)."
            )
        _warn_inexact_integers(X, dtypes)
        try:
            return validate_data(self, X, dtype=dtype, **kwargs)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            # pandas' missing value in an object column: float(pd.NA) fails.
            if isinstance(exc, TypeError) and "NAType" in message:
                raise ValueError(
                    "X contains missing values (pd.NA); FlowDensity needs complete rows: drop "
                    "or impute them first (e.g. SimpleImputer in a Pipeline)."
                ) from None
            # Text, or objects float() refuses (pandas Intervals, say).
            if "could not convert" not in message and "float() argument" not in message:
                raise
            bad = [] if dtypes is None else [c for c, t in dtypes.items() if t.kind not in "biuf"]
            where = f" (non-numeric columns: {bad})" if bad else ""
            # (The same exception type, as scikit-learn's checks expect.)
            raise type(exc)(
                f"FlowDensity models numeric features only, but X holds non-numeric values"
                f"{where}: {exc}. Encode categorical columns first (e.g. OneHotEncoder or "
                "OrdinalEncoder in a ColumnTransformer) or drop them."
            ) from None

    def _largest_representable(self) -> float:
        """The largest magnitude a training value may have in ``dtype`` (see
        :meth:`_check_representable`)."""
        return min(_SQUARE_SAFE, float(np.finfo(self.dtype).max) / 4)

    def _check_representable(self, X: np.ndarray) -> None:
        """Refuse training columns whose numbers the arithmetic cannot hold,
        rather than fit a density to overflow or rounding noise."""
        magnitude = np.abs(X).max(axis=0)
        with np.errstate(over="ignore"):
            spread = X.max(axis=0) - X.min(axis=0)
        varies = spread > 0
        # X is centred on a value of each column (see _center), so an offset
        # costs no digits. Variances are computed in float64, where squares
        # of numbers beyond ~1e154 overflow and below ~1e-154 underflow;
        # float32 inputs must also survive the cast (no overflow, no flush
        # to zero).
        upper = self._largest_representable()
        # The marginal map's knots sit down to 1e-5 of a column's spread apart
        # and its slopes divide by those gaps: float32 spreads near its
        # smallest normal number (1e-38) gave subnormal gaps, infinite
        # slopes and -inf scores.
        lower = max(1 / upper, float(np.finfo(self.dtype).tiny) * 1e4)
        problems = {
            f"values beyond {upper:.3g} in absolute value": ~(magnitude <= upper)
            | ~np.isfinite(spread),
            f"a spread below {lower:.3g}": varies & (spread < lower),
        }
        found = [(what, np.flatnonzero(bad).tolist()) for what, bad in problems.items()]
        found = [(what, cols) for what, cols in found if cols]
        if found:
            details = "; ".join(f"column(s) {cols} have {what}" for what, cols in found)
            # float64 helps only where its own (squaring) limits hold.
            float64_holds = bool(
                np.all(magnitude <= _SQUARE_SAFE) and np.all(spread[varies] >= 1 / _SQUARE_SAFE)
            )
            hint = (
                "Try dtype='float64', or rescale"
                if self.dtype == "float32" and float64_holds
                else "Rescale"
            )
            raise ValueError(
                f"X cannot be represented accurately in {self.dtype}: {details}. {hint} these "
                "columns (e.g. StandardScaler in a Pipeline; densities are then per unit of "
                "the rescaled columns)."
            )

    @_fit_context(prefer_skip_nested_validation=True)
    @_plain_torch(training=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit the flow to ``X`` by maximum likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (numpy array or pandas DataFrame), at least 2 rows.
        y : Ignored
            Not used, present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each row (survey weights, counts of
            aggregated rows, importance weights); ``None`` weighs all rows
            equally. Training maximizes the weighted mean log-likelihood
            (each epoch resamples the rows in proportion to the weights), so
            the flow models the weighted distribution, and early stopping,
            the fixed preprocessing (centre, quantile map, whitening) and
            ``offset_`` (``contamination`` is a share of the total weight)
            use the weights too. Weights are relative: scaling all of them
            changes nothing, and rows of weight 0 are left out as if absent.
            Sizes chosen from the data (``hidden_units="auto"``,
            ``batch_size="auto"``) count rows. An integer weight is close to,
            but not the same fit as, repeating the row: the validation split
            and minibatches are drawn over rows.

        Returns
        -------
        self : FlowDensity
            The fitted estimator.

        Examples
        --------
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(X)
        >>> est.n_features_in_, est.n_iter_ == len(est.loss_curve_)
        (13, True)
        """
        # A fit that fails (bad input found late, an interrupt) leaves the
        # estimator as it was: validate_data and the fitted attributes are
        # set along the way, and half an update would pair a new flow with
        # an old offset_ or shape.
        before = dict(self.__dict__)
        try:
            return self._fit(X, sample_weight)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _shape_changes(self) -> dict:
        """The shape parameters that differ from the fitted flow's, with the
        fitted values (what a warm start cannot change)."""
        fitted = dict(getattr(self, "_fitted_params", {}))
        # Widths compare as built: "auto" (which a warm fit does not
        # re-resolve), an int or a tuple naming the fitted widths is no change.
        if self.hidden_units == "auto" or (
            not isinstance(self.hidden_units, str)
            and _same_value(self._hidden_units(0), self.hidden_units_)
        ):
            fitted.pop("hidden_units", None)
        return {
            name: fitted[name]
            for name in _SHAPE_PARAMS
            if name in fitted and not _same_value(fitted[name], getattr(self, name))
        }

    def _check_warm_start(self) -> None:
        """Refuse to continue a flow whose shape the parameters now change."""
        changed = self._shape_changes()
        if changed:
            was = ", ".join(f"{name}={value!r}" for name, value in changed.items())
            raise ValueError(
                f"warm_start=True continues the fitted flow, but {', '.join(changed)} "
                f"changed since it was fitted ({was}). Restore them, or set "
                "warm_start=False to fit a new flow."
            )

    def _warn_drift(self, X_train: np.ndarray) -> None:
        """Warn when a warm fit's rows leave what the first fit's fixed
        layers were fitted to: values far beyond its range, or values of a
        discrete column it never saw (sample() rounds onto its values)."""
        low, high = self.lattice_range_
        margin = 0.1 * np.where(high > low, high - low, 1.0)
        names = getattr(self, "feature_names_in_", [f"x{j}" for j in range(X_train.shape[1])])
        drifted = []
        for j, cell in enumerate(self.dequantization_cells_):
            column = X_train[:, j]
            off = (column < low[j] - margin[j]) | (column > high[j] + margin[j])
            if isinstance(cell, tuple) and cell[2] is None:  # discrete: its values
                values = cell[0]
                tol = SAME_VALUE_RTOL * max(float(values[-1] - values[0]), 1.0)
                off |= np.abs(column - values[_nearest(values, column)]) > tol
            if off.mean() > 0.01:
                drifted.append(str(names[j]))
        if drifted:
            warnings.warn(
                "warm_start keeps the first fit's fixed layers (centre, quantile map, "
                "whitening, dequantization cells), but over 1% of the new rows leave them in "
                f"columns {drifted}: values beyond the first fit's range, or values of a "
                "discrete column it never saw (sample() rounds onto the first fit's values). "
                "The density stays exact but may fit these rows poorly; fit with "
                "warm_start=False to fit the fixed layers to them.",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )

    def _warn_undequantized(self, X: np.ndarray, widths: np.ndarray) -> None:
        """Warn of discrete columns (those ``"auto"`` would dequantize) given
        width 0: their density grows with training. (Constant ones get
        :meth:`_warn_degenerate`'s warning.)"""
        steps = np.array(
            [
                lattice_width(col) if width == 0 and np.ptp(col) > 0 else 0.0
                for col, width in zip(X.T, widths, strict=True)
            ]
        )
        bare = np.flatnonzero(steps > 0)
        if bare.size:
            # (At most 10 named: an image table has hundreds.)
            more = f" and {bare.size - 10} more" if bare.size > 10 else ""
            shown = [float(f"{step:.3g}") for step in steps[bare[:10]]]
            warnings.warn(
                f"Column(s) {bare[:10].tolist()}{more} of X take only a few distinct values "
                f"(steps of {shown}) but are not dequantized (dequantize=False or a zero width): a "
                "continuous density on them grows without bound as training goes on, so "
                "their log-densities measure training length rather than the data. "
                "Leave dequantize='auto', or give each its step as width.",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )

    def _warn_degenerate(
        self, X: np.ndarray, noise_var: np.ndarray, weights: np.ndarray | None
    ) -> None:
        """Warn of columns on which the data have no density: the fit's
        log-densities there measure float precision, not the data."""
        constant, dependent = degenerate_columns(X, noise_var, weights)
        if constant:
            warnings.warn(
                f"Column(s) {constant} of X are constant and not dequantized (dequantize=False "
                "or a zero width): a density on them is infinite, so the fitted log-densities "
                "grow with training and any other value scores as an extreme outlier. Drop "
                "them, or leave dequantize='auto' to give them a unit cell.",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        if dependent:
            warnings.warn(
                f"Columns {dependent} of X are (almost) exactly linearly dependent (e.g. a "
                "duplicated column, or one the sum of others): the rows lie on a "
                "lower-dimensional set, where a density is infinite, so the fitted "
                "log-densities depend on float precision rather than on the data, and a row "
                "slightly off that set scores as an extreme outlier. Drop the redundant "
                "column(s).",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )

    def _seeded_flow(self, n_features: int, hidden_units: tuple[int, ...], seed: int) -> Flow:
        """A new flow, its initial weights drawn from ``seed``."""
        flow = self._built_flow(n_features, hidden_units, seed)
        # (Valid values by now; at fit only: a saved model holding such an
        # option still loads.)
        unused: Callable[[dict], dict[str, str]] = getattr(
            flow.own_objective, "unused_options", lambda given: {}
        )
        for name, reason in unused(self.kind_options or {}).items():
            raise ValueError(
                f"kind={self.kind!r} option {name} has no effect with {reason}: remove it, or "
                "change the option it depends on."
            )
        check_precision = getattr(flow.own_objective, "check_precision", None)
        if check_precision is not None:
            check_precision(_DTYPES[self.dtype])
        return flow

    def _built_flow(self, n_features: int, hidden_units: tuple[int, ...], seed: int) -> Flow:
        options = self.kind_options or {}
        for name in set(options) & set(SHAPE_OPTIONS):
            raise ValueError(
                f"{name} is a FlowDensity parameter, not a kind option: pass "
                f"FlowDensity(kind={self.kind!r}, {name}=...) instead of kind_options."
            )
        with seeded_build(seed):
            try:
                return self._build_flow(n_features, hidden_units)
            except (TypeError, ValueError) as exc:
                if not options:
                    raise
                # The engine names the kind's options (and what is wrong).
                raise type(exc)(
                    f"kind_options={self.kind_options!r} are not valid for "
                    f"kind={self.kind!r}: {str(exc).rstrip('.')} (see the kinds guide)."
                ) from None

    def _batch_size(self, n_train: int, flow: Flow) -> int:
        """Rows per minibatch for ``n_train`` training rows."""
        if self.batch_size == "auto":
            # Small tables need several steps per epoch for patience-based
            # early stopping to see progress: about 8 batches, 64 to 256 rows.
            batch_size = min(n_train, int(np.clip(n_train // 8, 64, 256)))
        else:
            batch_size = self.batch_size
        min_rows = getattr(flow.own_objective, "min_batch_rows", 1)
        if min(batch_size, n_train) < min_rows:
            # (Training caps a minibatch at the training rows.)
            remedy = (
                f"there are only {n_train} training rows (after the validation split): "
                "train on more rows, or lower n_layers"
                if n_train < min_rows
                else f"minibatches hold {batch_size} rows: raise batch_size, or lower n_layers"
            )
            raise ValueError(
                f"kind={self.kind!r} trained by flow matching gives each of its {min_rows} "
                f"blocks (n_layers) a share of every minibatch, but {remedy}."
            )
        if min(batch_size, n_train) < BATCH_NORM_ROWS and any(
            isinstance(m, BatchNormFlow) for m in flow.modules()
        ):
            raise ValueError(
                f"kind_options={{'batch_norm': True}} normalizes each minibatch by its own "
                f"mean and variance, which {min(batch_size, n_train)} rows do not estimate "
                f"(the training loss is then meaningless): use minibatches of at least "
                f"{BATCH_NORM_ROWS} rows (batch_size), or batch_norm=False."
            )
        return batch_size

    def _split_rows(
        self, n: int, rng: np.random.RandomState, warm: bool
    ) -> tuple[np.ndarray | None, np.ndarray, tuple]:
        """Validation and training row indices (None for the validation
        rows without early stopping), and the split that warm fits reuse:
        ``(RandomState state, rows, validation rows)``, the first fit's."""
        n_val = min(max(1, int(round(self.validation_fraction * n))), n - 1)
        split_rng, first_split = rng, getattr(self, "_split", None) if warm else None
        if first_split is not None and first_split[1] == n:
            # As many rows as the first fit (the same rows, presumably): its
            # split, even under random_state=None, so that no row validated
            # now was trained on before; its validation size too.
            split_rng = np.random.RandomState()
            split_rng.set_state(first_split[0])
            if self.early_stopping and not first_split[2]:
                warnings.warn(
                    "This warm fit holds out validation rows, but the first fit trained on "
                    "every row (early_stopping=False): the validation scores, early stopping "
                    "and offset_ are flattered by rows already trained on.",
                    UserWarning,
                    stacklevel=_user_stacklevel(),
                )
            n_val = first_split[2] or n_val
        split_state = split_rng.get_state()
        order = split_rng.permutation(n)
        if first_split is None:
            first_split = (split_state, n, n_val if self.early_stopping else 0)
        if self.early_stopping:
            return order[:n_val], order[n_val:], first_split
        return None, order, first_split

    def _fit(self, X, sample_weight):
        column_dtypes = _numpy_dtypes(X)
        warm = self.warm_start and hasattr(self, "flow_")
        if warm:
            self._check_warm_start()
        # A warm start needs the fitted features (names and number).
        X = self._validate_X(X, ensure_min_samples=2, reset=not warm)
        weights = None
        if sample_weight is not None:
            X, weights = _weighted_rows(X, sample_weight)
        center = self.center_ if warm else _center(X, weights)
        with np.errstate(over="ignore"):  # (overflow is what the check reports)
            self._check_representable(X - center)  # fails fast, before any torch work
        hidden_units = self.hidden_units_ if warm else self._hidden_units(len(X))
        dtype = _DTYPES[self.dtype]
        device = resolve_device(self.device, dtype)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        if warm:
            # New minibatch orders and noise each warm fit.
            seed = (seed + self.n_iter_) % np.iinfo(np.int32).max
        val_idx, train_idx, split = self._split_rows(X.shape[0], rng, warm)
        X_train = X[train_idx]
        # The training part scaled by its largest weight (train_flow scales
        # the validation part): sums of tiny weights neither underflow nor
        # lose precision.
        w_train = None if weights is None else weights[train_idx] / weights[train_idx].max()
        w_val = None if weights is None or val_idx is None else weights[val_idx]

        if warm:
            # A copy: a failed fit must leave the fitted flow as it was.
            flow = copy.deepcopy(self.flow_)
        else:
            flow = self._seeded_flow(X.shape[1], hidden_units, seed)
            if X.shape[1] == 1 and self.kind in _AFFINE_IN_ONE_DIMENSION:
                warnings.warn(
                    f"kind={self.kind!r} cannot shape a single column: its layers condition "
                    "each feature on the others, and there are none, so each layer is one "
                    "affine map and the flow is its fixed layers (the marginal map, "
                    "standardization) plus that map. For one column use kind='nsf', "
                    "'planar' or 'cnf'.",
                    UserWarning,
                    stacklevel=_user_stacklevel(),
                )
        _warn_few_rows(len(train_idx), w_train, X.shape[1], val_idx is not None)
        # Cast first: fitted buffers set in float32 and cast to float64 would
        # keep only float32 accuracy (the standardization would not invert).
        flow = flow.to(device=device, dtype=dtype)
        if warm:
            self._warn_drift(X_train)
            widths, cells = self.dequantization_, self.dequantization_cells_
            half_train = half_widths(X_train, cells)
        else:
            widths, cells, half_train = self._fit_preprocessing(flow, X_train, center, w_train)

        def as_tensor(a):
            return torch.tensor(a, dtype=dtype).to(device)

        def as_half_widths(half):
            # Continuous columns have none: one row of zeros, broadcast, not
            # a second copy of the data on the device for the whole fit.
            if half.any():
                return as_tensor(half)
            return torch.zeros((1, half.shape[1]), dtype=dtype, device=device).expand(half.shape)

        batch_size = self._batch_size(len(train_idx), flow)
        bias = getattr(flow.own_objective, "likelihood_bias", None)
        if bias:
            warnings.warn(
                f"kind={self.kind!r} trained by maximum likelihood with {bias}: the solver's "
                "error biases the log-densities and training exploits it, so the reported "
                "log-likelihoods come out too high and samples follow another distribution "
                "(a thin ring: +3.3 instead of -1.4 nats per held-out row with euler, "
                "n_steps=2). Use an adaptive solver at rtol, atol <= 1e-3 (the default is "
                "dopri5 at 1e-5), or training='flow_matching'.",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        desc = f"FlowDensity({self.kind!r})"
        with epoch_progress(self.verbose, self.max_iter, desc) as on_epoch:
            result = train_flow(
                flow,
                as_tensor(X_train - center),
                as_tensor(X[val_idx] - center) if val_idx is not None else None,
                noise=(
                    as_half_widths(half_train),
                    as_half_widths(half_widths(X[val_idx], cells)) if val_idx is not None else None,
                ),
                max_iter=self.max_iter,
                batch_size=batch_size,
                learning_rate=self.learning_rate,
                weight_decay=self.weight_decay,
                n_iter_no_change=self.n_iter_no_change,
                tol=self.tol,
                # Minibatch orders on the CPU; the noise drawn while training
                # (dequantization, the layers' own) on the device: no
                # transfers, and never torch's global generators.
                generator=torch.Generator().manual_seed(seed),
                noise_generator=torch.Generator(device=device).manual_seed(seed),
                max_time=self.max_time,
                on_epoch=on_epoch,
                compile=self.compile,
                weights=(
                    None
                    if weights is None
                    # (float64 on the CPU: train_flow draws rows there)
                    else (
                        torch.as_tensor(w_train),
                        None if w_val is None else torch.as_tensor(w_val),
                    )
                ),
            )
        previous = self.n_iter_ if warm else 0
        # (Without validation train_flow keeps the last epoch's weights,
        # unless training diverged: then the best training loss's.)
        kept = result.best_epoch
        if kept:
            kept += previous
        elif warm:
            kept = self.best_epoch_  # no epoch beat the warm-started weights
        # (Flow matching's loss is a regression loss, not nats: it swings.)
        nll = getattr(flow.own_objective, "training_method", "mle") == "mle"
        self._warn_training(result, warm, previous, kept, nll)

        if warm:
            # Earlier epochs carry on; the range belongs with the first fit's
            # fixed layers and cells (sample() snaps and clips with it).
            loss_curve = self.loss_curve_ + result.loss_curve
            # One score per epoch once any fit validated (NaN where none did).
            earlier = self.validation_scores_
            own = result.validation_scores if self.early_stopping else [math.nan] * result.n_iter
            validated = earlier is not None or self.early_stopping
            scores = (earlier or [math.nan] * previous) + own if validated else None
            lattice_range = self.lattice_range_
        else:
            loss_curve = result.loss_curve
            scores = result.validation_scores if self.early_stopping else None
            lattice_range = np.stack([X_train.min(axis=0), X_train.max(axis=0)])
        self.flow_ = flow
        self.device_ = device
        self.loss_curve_ = loss_curve
        self.validation_scores_ = scores
        self.best_validation_score_ = result.best_score if self.early_stopping else None
        self.best_epoch_ = kept
        self.n_iter_ = previous + result.n_iter
        self.hidden_units_ = hidden_units
        self.dequantization_ = widths
        self.dequantization_cells_ = cells
        self.lattice_range_ = lattice_range
        self.center_ = center
        # The first fit's split (RandomState state, rows, validation rows)
        # for warm fits (saved to files too).
        self._split = split
        self.offset_ = self._compute_offset(X, val_idx, weights)
        # ODE-based kinds count their vector-field evaluations (fit and the
        # scoring just done).
        nfe = getattr(flow.own_objective, "nfe", None)
        if nfe is not None:
            self.nfe_ = dict(nfe)
        else:
            self.__dict__.pop("nfe_", None)  # from an earlier fit of an ODE kind
        if warm and (column_dtypes is None or "feature_names_in_" not in self.__dict__):
            pass  # the first fit's columns: keep what it recorded
        elif column_dtypes is not None:
            self.feature_dtypes_ = column_dtypes
        else:
            self.__dict__.pop("feature_dtypes_", None)
        self.reconstruction_error_ = self._check_invertibility(X_train, rng, seed)
        # What save() writes: the parameters this flow was built with, even
        # if set_params changes them before the next fit.
        self._fitted_params = copy.deepcopy(self.get_params(deep=False))
        return self

    def _warn_training(self, result, warm: bool, previous: int, kept: int, nll: bool) -> None:
        """Warnings about how training ended; epochs are counted over all
        fits of a warm-started flow (``previous`` before this one)."""
        more = (
            "call fit again (warm_start=True) to continue"
            if warm
            else "refit with warm_start=True to continue from here"
        )
        start = (
            "the warm-started flow"
            if warm
            else "the starting point (the fixed preprocessing with an untrained flow)"
        )
        if result.compile_error is not None:
            warnings.warn(
                f"compile=True: {result.compile_error}; trained without compilation. "
                "Set compile=False to skip the attempt.",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        if result.stop_reason == "diverged":
            warnings.warn(
                f"Training of kind={self.kind!r} diverged (non-finite loss) at epoch "
                f"{previous + result.n_iter}; the weights of epoch {kept} were restored. "
                "Try a smaller learning_rate, fewer n_layers or dtype='float64'.",
                ConvergenceWarning,
                stacklevel=_user_stacklevel(),
            )
        elif result.stop_reason == "max_time":
            warnings.warn(
                f"FlowDensity stopped at its time budget max_time={self.max_time} s "
                f"after {result.n_iter} epochs, keeping the best weights so far; raise "
                f"max_time (None: no limit) to train to convergence, or {more}.",
                ConvergenceWarning,
                stacklevel=_user_stacklevel(),
            )
        elif result.stop_reason == "max_iter":
            kept_start = (
                f" No epoch has beaten {start} yet, so that was kept."
                if result.best_epoch == 0
                else ""
            )
            warnings.warn(
                f"FlowDensity reached max_iter={self.max_iter} epochs before the "
                f"monitored log-likelihood stopped improving; consider increasing max_iter "
                f"(or {more}).{kept_start}",
                ConvergenceWarning,
                stacklevel=_user_stacklevel(),
            )
        elif result.best_epoch == 0:
            cause = (
                "It had converged, or the learning_rate is too large"
                if warm
                else "A too large learning_rate is the usual cause; data that the "
                "preprocessing alone already fits (e.g. Gaussian) the other"
            )
            warnings.warn(
                f"None of the {result.n_iter} epochs improved the validation score of "
                f"{start}, so that was kept: the flow learned nothing. {cause} "
                f"(learning_rate={self.learning_rate:g}).",
                ConvergenceWarning,
                stacklevel=_user_stacklevel(),
            )

        losses = np.asarray(result.loss_curve, dtype=float)
        if (
            nll
            and not result.validation_scores
            and result.stop_reason != "diverged"
            and losses.size > 1
        ):
            # Without validation rows the last epoch's weights are kept,
            # however much worse than an earlier epoch's they fit.
            best = int(np.argmin(losses))
            if losses[-1] > losses[best] + LOSS_RISE:
                warnings.warn(
                    f"Without early stopping FlowDensity keeps the last epoch's weights, but "
                    f"their training loss {losses[-1]:.4g} is {losses[-1] - losses[best]:.3g} "
                    f"nats per row above epoch {previous + best + 1}'s ({losses[best]:.4g}): "
                    f"training went astray. Try a smaller learning_rate (now "
                    f"{self.learning_rate:g}), or early_stopping=True (the best epoch's weights "
                    "are kept).",
                    ConvergenceWarning,
                    stacklevel=_user_stacklevel(),
                )

    def _check_invertibility(self, X: np.ndarray, rng: np.random.RandomState, seed: int) -> float:
        """Largest round-trip error ``|x - T^{-1}(T(x))|`` on (a subsample of)
        the training rows, in standard deviations of each column; warns when
        the inverse is numerically broken. (``seed``: for layers that draw
        while inverting, augmented continuous flows.)"""
        if X.shape[0] > INVERTIBILITY_ROWS:
            X = X[rng.choice(X.shape[0], INVERTIBILITY_ROWS, replace=False)]
        # The spread the flow sees: dequantization noise included, so a
        # (near-)constant column does not turn round-off into a huge error.
        scale = np.sqrt(X.var(axis=0) + self.dequantization_**2 / 12.0)
        scale = np.where(scale > 0, scale, 1.0)
        rows = torch.tensor(X - self.center_, dtype=self._flow_dtype()).to(self.device_)
        with drawing_from(torch.Generator().manual_seed(seed)):
            err = round_trip_error(self.flow_.transform, rows).cpu().double().numpy()
        error = float((err / scale).max())
        # Inverses computed numerically (ODE solves) are exact only to their
        # solver tolerance, which the layer reports.
        tolerance = max(
            INVERTIBILITY_TOL[self.dtype],
            getattr(self.flow_.own_objective, "round_trip_tolerance", 0.0),
        )
        if not error <= tolerance:
            # An ODE's round trip misses by its solver's error, which the
            # densities carry too.
            remedy = (
                "Its densities and samples carry the ODE solver's error: use the default "
                "adaptive solver, or tighter rtol/atol (or more n_steps)"
                if hasattr(self.flow_.own_objective, "round_trip_tolerance")
                else "Densities use the forward map, but samples are unreliable. Try "
                "dtype='float64', a smaller learning_rate or fewer n_layers"
            )
            warnings.warn(
                f"The fitted kind={self.kind!r} flow does not invert its training data: "
                f"round-trip error {error:.3g} standard deviations (tolerance "
                f"{tolerance:g}). {remedy}.",
                InvertibilityWarning,
                stacklevel=_user_stacklevel(),
            )
        return error

    def _compute_offset(
        self, X: np.ndarray, val_idx: np.ndarray | None, weights: np.ndarray | None
    ) -> float:
        tail = AUTO_TAIL if self.contamination == "auto" else self.contamination
        if self.contamination == "auto" and val_idx is not None:
            # Held-out rows show how new normal data score (training rows are
            # flattered by overfitting), so "auto" takes their tail.
            X = X[val_idx]
            weights = None if weights is None else weights[val_idx]
        scores = self._log_density(X)
        if weights is None:  # (numpy's percentile, as before weights existed)
            return float(np.percentile(scores, 100.0 * tail))
        return float(weighted_quantile(scores, tail, weights))

    # -------------------------------------------------------------- scoring
    def _map_rows(
        self,
        X: np.ndarray,
        fn: Callable[[torch.Tensor], torch.Tensor],
        width: int | None,
        shift: np.ndarray | None = None,
    ) -> np.ndarray:
        """``fn`` (a map of tensors on the flow's device) of the rows of
        ``X - shift``, in chunks so that memory stays bounded on huge inputs,
        as float64 with ``width`` columns (None: one value per row). Rows
        that are not finite in the flow's dtype (beyond float32's range)
        are not passed to ``fn`` (an ODE solver would fail on them) and
        come back NaN."""
        out = np.full((X.shape[0],) if width is None else (X.shape[0], width), np.nan)

        def step(start: int, stop: int) -> None:
            block = X[start:stop]
            if shift is not None:
                with np.errstate(over="ignore"):  # inf: not finite below
                    block = block - shift
            # A contiguous copy: read-only (memmapped) and reversed
            # (X[::-1]) input are fine.
            chunk = torch.tensor(np.ascontiguousarray(block), dtype=self._flow_dtype())
            finite = torch.isfinite(chunk).all(dim=1)
            if bool(finite.any()):
                mapped = fn(chunk[finite].to(self.device_))
                # A view of out: the masked assignment writes through.
                out[start:stop][finite.numpy()] = mapped.cpu().double().numpy()

        with torch.inference_mode():
            in_chunks(X.shape[0], self.device_, step)
        return out

    def _log_density(self, X: np.ndarray) -> np.ndarray:
        """Log-density of already validated rows (no feature-name checks)."""
        # Inputs are finite and so are the fitted weights, so a non-finite
        # value can only come from overflow at points so far out that the
        # density underflows: its limit there is log(0) = -inf. That covers
        # NaN from inf - inf inside the flow, and rows beyond the range of
        # float32 (1e300).
        out = self._map_rows(X, self.flow_.log_prob, None, shift=self.center_)
        out[np.isnan(out)] = -np.inf
        return out

    @_plain_torch()
    def score_samples(self, X):
        """Log-density of each row of ``X`` under the fitted flow.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Query points, in the units of the training data.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            ``log p(x)`` in nats, for the density of the raw ``X`` (the
            internal standardization is accounted for). Lower means more
            abnormal.

        Examples
        --------
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(X)
        >>> est.score_samples(X[:4]).shape
        (4,)
        """
        check_is_fitted(self)
        return self._log_density(self._validate_X(X, reset=False, dtype=_MAPPED_DTYPES))

    def cell_widths(self, X):
        """Width of the dequantization cell of each entry of ``X``.

        ``score_samples`` reports the density of the dequantized variable
        ``X + U`` at ``X``; where an entry has a cell of width ``w``, adding
        ``log w`` turns that feature's density into (the midpoint estimate
        of) the probability of its value: the density at the cell's centre
        times its width, close to the mass over the cell where the density
        varies little across it (see the ``dequantize`` parameter).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Query points, in the units of the training data.

        Returns
        -------
        widths : ndarray of shape (n_samples, n_features)
            The cell width of each entry; 0 where the feature is not
            dequantized there (continuous values).

        Examples
        --------
        >>> import numpy as np
        >>> from skflow import FlowDensity
        >>> rng = np.random.RandomState(0)
        >>> counts = np.where(rng.rand(500) < 0.4, 0, rng.poisson(20, 500))[:, None]
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(counts)
        >>> int(counts[counts > 0].min())  # the smallest count after zero
        9
        >>> est.cell_widths([[0], [20]])  # zero's cell reaches halfway to 9
        array([[9.],
               [1.]])
        """
        check_is_fitted(self)
        return 2 * half_widths(self._validate_X(X, reset=False), self.dequantization_cells_)

    def score(self, X, y=None, sample_weight=None):
        """Mean log-likelihood of the rows of ``X`` (higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Query points.
        y : Ignored
            Not used, present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative row weights: the weighted mean is returned (a row
            of weight 0 does not count, even at log-density ``-inf``).
            ``GridSearchCV`` passes each test fold's weights here when its
            ``fit`` gets weights (``cross_val_score`` only with metadata
            routing and ``set_score_request(sample_weight=True)``).

        Returns
        -------
        score : float
            Mean of :meth:`score_samples` over the rows, in nats.

        Examples
        --------
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(X)
        >>> bool(est.score(X) == est.score_samples(X).mean())
        True
        """
        scores = self.score_samples(X)
        if sample_weight is None:
            return float(np.mean(scores))
        weights = _check_sample_weight(sample_weight, scores, ensure_non_negative=True)
        counted = weights > 0
        # Scaled by the largest: the weights' sum can neither overflow nor
        # lose digits in subnormals.
        return float(np.average(scores[counted], weights=weights[counted] / weights.max()))

    def decision_function(self, X):
        """Shifted log-density: negative for outliers, positive for inliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Query points.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            ``score_samples(X) - offset_``.

        Examples
        --------
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(X)
        >>> bool(((est.decision_function(X) < 0) == (est.predict(X) == -1)).all())
        True
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Label each row as inlier (+1) or outlier (-1).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Query points.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            +1 where ``decision_function(X) >= 0``, else -1.

        Examples
        --------
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(contamination=0.1, max_iter=5, random_state=0).fit(X)
        >>> round(float((est.predict(X) == -1).mean()), 1)  # the contamination
        0.1
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def _through_flow(self, X: np.ndarray, inverse: bool, what: str) -> np.ndarray:
        """Validated rows mapped to the latent (data shifted by ``center_``)
        or back (``inverse``); a ValueError, not NaN, where the map cannot
        be computed."""
        self._check_bijective(what)
        transform = self.flow_.transform
        step = transform.inverse if inverse else transform
        # Continuous flows skip the log-determinant nobody reads here.
        with without_log_det():
            mapped = self._map_rows(
                X, lambda t: step(t)[0], X.shape[1], shift=None if inverse else self.center_
            )
            bad = ~np.isfinite(mapped).all(axis=1)
            if inverse:
                # Far out in the heavy-tailed latent the inverse grows like
                # exp(|z|) and saturates (about 7 to 10 standard deviations
                # out, depending on the data): such rows do not map back.
                # (Row maxima of |X| without a copy of |X|.)
                size = np.maximum(X.max(axis=1), -X.min(axis=1))
                far = ~bad & (size > TAIL_START)
                if far.any():
                    back = self._map_rows(mapped[far], lambda t: transform(t)[0], X.shape[1])
                    error = np.abs(back - X[far]).max(axis=1)
                    bad[far] = ~(error <= 1e-2 * size[far])
        if bad.any():
            dtype = str(self._flow_dtype()).removeprefix("torch.")
            remedy = "" if dtype == "float64" else ", or refit with dtype='float64'"
            raise ValueError(
                f"{what}: {int(bad.sum())} row(s) (the first is row {int(bad.argmax())}) are "
                f"too far out for the flow's {dtype} arithmetic: they do not map to "
                "finite values that map back. Remove them (standard normal latent draws "
                f"never get there){remedy}."
            )
        if inverse:
            mapped += self.center_  # (in place: no second array of the output's size)
        return mapped

    def _check_bijective(self, what: str, fitted: bool = True) -> None:
        if fitted:
            augmented = getattr(self.flow_.own_objective, "augment_dims", 0)
        else:
            augmented = self.kind == "cnf" and (self.kind_options or {}).get("augment_dims")
        if augmented:
            raise ValueError(
                f"{what} needs a one-to-one map between data and latent, but this cnf "
                "appends augment_dims noise dimensions to the data (its latent has more "
                "coordinates than X). Fit with kind_options={'augment_dims': 0} to use it."
            )

    @_plain_torch()
    def transform(self, X):
        """Map rows to the flow's latent space, where the fitted model is a
        standard normal distribution.

        The latent ``z = T(x)`` is the flow's bijection (fixed layers
        included), so ``score_samples(X)`` equals the standard normal
        log-density of ``transform(X)`` plus ``log |det dT/dx|``, and
        :meth:`inverse_transform` maps back. Use it as a learned
        multivariate Gaussianization, e.g. as a step of a ``Pipeline``.
        Dequantized (discrete) features are mapped at their values, the
        centres of their cells, which the model treats as continuous.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows in the units of the training data.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
            Latent coordinates; under the fitted model, independent standard
            normals (for rows with dequantized features, the model's
            continuous variable is ``X + U`` with the cells' noise ``U``, so
            the latent of ``X`` itself is only roughly standard normal).

        Examples
        --------
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(random_state=0).fit(X)
        >>> Z = est.transform(X)
        >>> Z.shape, bool(abs(Z.mean()) < 0.2 and abs(Z.std() - 1) < 0.2)
        ((178, 13), True)
        """
        check_is_fitted(self)
        rows = self._validate_X(X, reset=False, dtype=_MAPPED_DTYPES)
        return self._through_flow(rows, False, "transform")

    def fit_transform(self, X, y=None, **fit_params):
        """Fit the flow to ``X``, then map ``X`` to the latent space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used, present for API consistency.
        **fit_params : dict
            Passed to :meth:`fit` (e.g. ``sample_weight``).

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
            ``fit(X, **fit_params).transform(X)``.

        Examples
        --------
        >>> from sklearn.datasets import load_iris
        >>> from skflow import FlowDensity
        >>> FlowDensity(max_iter=5, random_state=0).fit_transform(load_iris().data).shape
        (150, 4)
        """
        # Refuse a flow without a latent map before training it (valid
        # parameters first: kind_options is read).
        self._validate_params()
        self._check_bijective("fit_transform", fitted=False)
        return self.fit(X, y, **fit_params).transform(X)

    @_plain_torch()
    def inverse_transform(self, X):
        """Map latent coordinates back to the units of the data.

        The inverse of :meth:`transform`, up to the flow's numerical
        round-trip error (``reconstruction_error_``). Standard normal rows
        give samples of the model; unlike :meth:`sample`, discrete features
        are not rounded onto their values.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Latent coordinates (a DataFrame must have :meth:`transform`'s
            columns ``z0``, ``z1``, ...). Rows too far out for the flow's
            arithmetic to map back (beyond about 7 to 10 standard deviations,
            where the heavy-tailed latent's inverse grows like ``exp(|z|)``)
            raise a ValueError; standard normal draws never get there.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
            Rows in the units of the training data.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(X)
        >>> bool(np.allclose(est.inverse_transform(est.transform(X)), X, rtol=1e-3))
        True
        """
        check_is_fitted(self)
        columns = _column_dtypes(X)
        if columns is not None and list(columns.index) != list(self.get_feature_names_out()):
            raise ValueError(
                f"inverse_transform reads latent columns {list(self.get_feature_names_out())} "
                f"(what transform returns), but X has columns {list(columns.index)}: pass a "
                "plain array to map columns by position."
            )
        try:
            Z = check_array(X, dtype=_MAPPED_DTYPES)
        except ValueError as exc:
            if "could not convert" not in str(exc):
                raise
            raise ValueError(
                f"inverse_transform maps latent coordinates (the numbers transform returns), "
                f"but X holds text: {exc}."
            ) from None
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Z.shape[1]} columns, but the latent space of this FlowDensity has "
                f"{self.n_features_in_} (one per feature)."
            )
        return self._through_flow(Z, True, "inverse_transform")

    def get_feature_names_out(self, input_features=None):
        """Names of the latent coordinates that :meth:`transform` returns.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Checked against ``feature_names_in_`` when given; the names out
            do not depend on it.

        Returns
        -------
        feature_names_out : ndarray of str objects
            ``z0``, ``z1``, ...: latent coordinate ``i`` mixes all features,
            so it is not named after feature ``i``.

        Examples
        --------
        >>> from sklearn.datasets import load_iris
        >>> from skflow import FlowDensity
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(load_iris().data)
        >>> est.get_feature_names_out().tolist()
        ['z0', 'z1', 'z2', 'z3']
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features)
        return np.asarray([f"z{i}" for i in range(self.n_features_in_)], dtype=object)

    def _redraw_far_misses(
        self, x: torch.Tensor, z: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """``x`` (draws from base rows ``z``) with the far-out rows that do
        not map back to their ``z`` drawn anew (up to ``REDRAW_ROUNDS``
        times; NaN after that). In float arithmetic a learned inverse can
        break down on a few ordinary latents (cardio: 1 in 10,000, sent up
        to 1e35 standard deviations out, their forward map 14-23 units
        off); far rows are where that shows and few, so only they are
        checked. (ODE inverses are checked at fit against their solver
        tolerance.)"""
        if self.flow_.own_objective is not None:
            return x
        low, high = self.lattice_range_ - self.center_
        # A constant column's range is 0: its cell, else a sliver of its value, else 1.
        reach = np.maximum(high - low, self.dequantization_)
        reach = np.maximum(reach, 1e-3 * np.abs(self.lattice_range_).max(axis=0))
        reach = np.where(reach > 0, reach, 1.0)
        # "Far" must stay rare, so that checking costs nothing: a warm fit on
        # moved rows leaves lattice_range_ behind, and then the reach widens.
        widen = 1.0
        while True:
            rows = self._far_rows(x, low - widen * reach, high + widen * reach)
            if rows.numel() <= max(FAR_SHARE * x.shape[0], 1) or widen >= 1e6:
                break
            widen *= 10
        z = z[rows]  # (the rest of the latent is not needed: freed)
        for attempt in range(REDRAW_ROUNDS + 1):
            if rows.numel() == 0:
                return x
            back = torch.empty_like(z)

            def forward(start: int, stop: int, back=back, rows=rows) -> None:
                back[start:stop] = self.flow_.transform(x[rows[start:stop]])[0]

            in_chunks(rows.numel(), x.device, forward)
            miss = ~((back - z).abs() <= SAMPLE_LATENT_TOL * (1 + z.abs())).all(dim=1)
            rows, z = rows[miss], z[miss]
            if rows.numel() == 0 or attempt == REDRAW_ROUNDS:
                break
            x[rows], z = self.flow_.sample_with_latent(rows.numel(), gen)
        x[rows] = torch.nan  # (sample warns of them)
        return x

    @staticmethod
    def _far_rows(x: torch.Tensor, low: np.ndarray, high: np.ndarray) -> torch.Tensor:
        """Indices of the rows of ``x`` with a value outside ``[low, high]``
        or not finite, found chunk by chunk (no full-size temporaries)."""
        low_t, high_t = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (low, high))
        found: list[torch.Tensor] = []

        def step(start: int, stop: int) -> None:
            block = x[start:stop]
            out = ((block < low_t) | (block > high_t) | ~torch.isfinite(block)).any(dim=1)
            found.append(torch.nonzero(out).flatten() + start)

        in_chunks(x.shape[0], x.device, step)
        return torch.cat(found) if found else torch.empty(0, dtype=torch.long, device=x.device)

    def _snap_to_lattice(self, samples: np.ndarray) -> np.ndarray:
        """Round dequantized features back onto their values, in place and
        one feature at a time (whole-array temporaries tripled the peak
        memory of a large draw)."""
        low, high = self.lattice_range_
        for j, cell in enumerate(self.dequantization_cells_):
            if not isinstance(cell, tuple) and cell == 0:
                continue  # continuous: nothing to snap
            y = samples[:, j]
            snapped = snap_to_cells(y[:, None], [cell], low[j : j + 1])[:, 0]
            # Clipped to the training range only where a value was snapped.
            moved = snapped != y
            y[moved] = np.clip(snapped[moved], low[j], high[j])
        return samples

    @_plain_torch()
    def sample(self, n_samples=1, random_state=None, as_frame=False):
        """Draw samples from the fitted density.

        Parameters
        ----------
        n_samples : int, default=1
            Number of rows to draw (0 gives an empty array).
        random_state : int, RandomState instance or None, default=None
            Seed for the draws; the same seed gives the same samples. As in
            ``KernelDensity.sample``, this argument alone seeds them (not
            the estimator's ``random_state``): None draws afresh each call.
        as_frame : bool, default=False
            Return a pandas DataFrame whose columns are ``feature_names_in_``
            (``x0``, ``x1``, ... when ``fit`` saw no column names) and, when
            ``fit`` saw a DataFrame, whose columns have its numpy dtypes
            (``feature_dtypes_``): integer columns come back as integers,
            boolean ones as booleans.

        Returns
        -------
        X : ndarray or DataFrame of shape (n_samples, n_features_in_)
            Samples in the units of the training data. Dequantized
            (discrete) features are rounded back onto their lattice and
            clipped to their training range, so integer codes come back as
            integers.

        Examples
        --------
        >>> from sklearn.datasets import load_iris
        >>> from skflow import FlowDensity
        >>> df = load_iris(as_frame=True).data
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(df)
        >>> est.sample(3, random_state=0, as_frame=True).columns.tolist()
        ['sepal length (cm)', 'sepal width (cm)', 'petal length (cm)', 'petal width (cm)']
        """
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 0:
            raise ValueError(f"n_samples must be a non-negative int, got {n_samples!r}.")
        if not isinstance(as_frame, bool | np.bool_):
            raise TypeError(f"as_frame must be True or False, got {as_frame!r}.")
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        gen = torch.Generator().manual_seed(seed)
        if n_samples == 0:  # some layers (ODE solves, channel views) reject empty batches
            samples = np.empty((0, self.n_features_in_))
        else:
            # (Continuous flows skip the log-determinant sampling ignores.)
            try:
                # Bytes beyond torch's sizes (Python ints: numpy's would wrap).
                if int(n_samples) * self.n_features_in_ * 8 >= 2**62:
                    raise MemoryError
                with torch.inference_mode(), without_log_det():
                    x = self._redraw_far_misses(
                        *self.flow_.sample_with_latent(int(n_samples), gen), gen
                    )
            except (MemoryError, RuntimeError) as exc:  # (torch's OutOfMemoryError too)
                if not isinstance(exc, MemoryError) and not any(
                    word in str(exc) for word in ("alloc", "overflow")
                ):
                    raise
                gib = int(n_samples) * self.n_features_in_ * 8 / 2**30
                raise MemoryError(
                    f"sample({n_samples}) needs well over {gib:.3g} GiB for its "
                    f"{n_samples} x {self.n_features_in_} draws, more than this machine could "
                    "allocate: draw fewer rows per call (several calls with different "
                    "random_state values)."
                ) from None
            samples = x.cpu().double().numpy()
            del x  # (float32 draws: freed before the snapping's temporaries)
            samples += self.center_  # in place: one n x D copy fewer at peak
            samples = self._snap_to_lattice(samples)
            broken = int((~np.isfinite(samples).all(axis=1)).sum())
            if broken:
                warnings.warn(
                    f"{broken} of {n_samples} samples are not finite: the fitted flow's inverse "
                    f"breaks down where they were drawn (reconstruction_error_ = "
                    f"{self.reconstruction_error_:.3g}). Refit with dtype='float64', a smaller "
                    "learning_rate or fewer n_layers.",
                    InvertibilityWarning,
                    stacklevel=2,
                )
        if not as_frame:
            return samples
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("sample(as_frame=True) needs pandas: pip install pandas.") from None
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            names = [f"x{i}" for i in range(self.n_features_in_)]
        frame = pd.DataFrame(samples, columns=list(names))
        dtypes = getattr(self, "feature_dtypes_", None)
        if dtypes is None:
            return frame
        restored = {}
        for name, dtype in zip(frame.columns, dtypes, strict=True):
            column = frame[name]
            if dtype is None or not np.isfinite(column).all():
                continue  # (a non-finite draw stays float64, as in the array)
            kind = np.dtype(dtype).kind
            if kind == "b":
                column = column > 0.5  # snapped onto the training values 0 and 1
            elif kind in "iu":
                # A column with many values is modelled as continuous: round
                # its draws, within what the integer type holds (int64's
                # limits are not floats: clip just inside them).
                info = np.iinfo(dtype)
                low, high = np.nextafter(float(info.min), 0), np.nextafter(float(info.max), 0)
                column = column.round().clip(low, high)
            restored[name] = column.astype(dtype)
        return frame.assign(**restored) if restored else frame

    # ---------------------------------------------------------- persistence
    def __getstate__(self):
        # BaseEstimator may hand back the live __dict__: copy before editing.
        state = dict(super().__getstate__())
        if "flow_" in state and self.device_.type != "cpu":
            # Pickle the flow on CPU so the file loads on machines without a GPU.
            state["flow_"] = copy.deepcopy(self.flow_).cpu()
        return state

    def _flow_dtype(self) -> torch.dtype:
        # The fitted flow's, not the dtype parameter's (set_params after fit
        # changes the next fit, not this model).
        return self.flow_.dequantization.dtype

    def _fill_fitted_defaults(self) -> None:
        """Fitted attributes that older models (files, pickles) lack. Before
        per-value dequantization cells there was one noise width per feature
        (``dequantization_``): the same constant cells reproduce their
        sampling exactly. Before ``center_`` the flow saw the raw values: a
        zero shift."""
        if "dequantization_" in self.__dict__ and "dequantization_cells_" not in self.__dict__:
            self.dequantization_cells_ = [float(w) / 2 for w in self.dequantization_]
        if "n_features_in_" in self.__dict__ and "center_" not in self.__dict__:
            self.center_ = np.zeros(self.n_features_in_)  # fitted on the raw values

    def __setstate__(self, state):
        super().__setstate__(state)
        # Parameters added since the pickle was made take their defaults.
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and name not in self.__dict__:
                setattr(self, name, param.default)
        self._fill_fitted_defaults()
        if "flow_" in self.__dict__ and "_fitted_params" not in self.__dict__:
            # Pickled before fit recorded them: the parameters as pickled
            # (missing ones at their defaults, above), so set_params after
            # unpickling does not change what save writes.
            self._fitted_params = copy.deepcopy(self.get_params(deep=False))
        if "flow_" not in self.__dict__:
            return
        device = _usable_device(
            self.__dict__.get("device_", torch.device("cpu")), self._flow_dtype()
        )
        self.flow_ = self.flow_.to(device)
        self.device_ = device

    @_plain_torch()
    def save(self, path):
        """Save the fitted estimator to a file that loads without running code.

        The file (`safetensors <https://huggingface.co/docs/safetensors>`_
        format) holds the flow's weights and buffers as raw tensors and, as
        JSON, the parameters the flow was fitted with (not later
        ``set_params`` changes), every fitted attribute, the skflow and torch
        versions and a SHA-256 checksum. Unlike pickle or joblib files, which
        execute code when loaded and so must never be loaded from an
        untrusted source, :meth:`load` only parses JSON and copies bytes.
        The file is written atomically: an interrupted save never replaces a
        good file with a broken one.

        Parameters
        ----------
        path : str or path-like
            Destination file (``.safetensors`` is the usual suffix).

        Returns
        -------
        self : FlowDensity
            The estimator, unchanged.

        Raises
        ------
        TypeError
            If a parameter or fitted attribute cannot be stored as JSON, such
            as ``random_state`` set to a ``RandomState`` instance (fit with an
            int or None instead).

        See Also
        --------
        load : Read a saved estimator back.

        Examples
        --------
        >>> import tempfile, os
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> est = FlowDensity(max_iter=5, random_state=0).fit(X)
        >>> path = os.path.join(tempfile.mkdtemp(), "wine.safetensors")
        >>> _ = est.save(path)
        >>> loaded = FlowDensity.load(path)
        >>> bool((loaded.score_samples(X) == est.score_samples(X)).all())
        True
        """
        from skflow import __version__

        check_is_fitted(self)
        fitted = {
            k: v
            for k, v in vars(self).items()
            if k.endswith("_") and not k.startswith("_") and k != "flow_"
        }
        params = self.__dict__.get("_fitted_params") or self.get_params(deep=False)
        # warm_start says what the next fit does, not how this flow was
        # built: the current setting.
        params = {**params, "warm_start": self.warm_start}
        header = {
            "class": type(self).__name__,
            "skflow_version": __version__,
            "torch_version": torch.__version__,
            "params": {k: _persistence.encode(v, k) for k, v in params.items()},
            "fitted": {k: _persistence.encode(v, k) for k, v in fitted.items()},
        }
        if getattr(self, "_split", None) is not None:
            # The first fit's validation split, for warm fits of the loaded
            # model (a RandomState state and two sizes).
            header["split"] = _persistence.encode(self._split, "_split")
        output = self.__dict__.get("_sklearn_output_config")
        if output:  # set_output(transform=...), as pickle would keep it
            header["output"] = _persistence.encode(output, "set_output")
        requests = self._routing_requests()
        if requests:  # set_fit_request(sample_weight=True) and the like, likewise
            header["requests"] = requests
        tails = _marginal_tails(self.flow_)
        if tails:  # (a model first fitted by skflow 0.2 keeps its 0 through re-saves)
            header["marginal_tails"] = tails
        _persistence.write(path, header, self.flow_.state_dict())
        return self

    def _routing_requests(self) -> dict[str, dict[str, bool | str]]:
        """The metadata-routing requests set on this estimator
        (``set_fit_request`` and the like), per method."""
        request = self._get_metadata_request()
        methods = {method: getattr(request, method).requests for method in _ROUTED_METHODS}
        return {
            method: {name: alias for name, alias in requests.items() if alias is not None}
            for method, requests in methods.items()
            if any(alias is not None for alias in requests.values())
        }

    def _set_routing_requests(self, requests: object) -> None:
        if not (
            isinstance(requests, dict)
            and set(requests) <= set(_ROUTED_METHODS)
            and all(
                isinstance(params, dict)
                and all(isinstance(alias, bool | str) for alias in params.values())
                for params in requests.values()
            )
        ):
            raise ValueError(f"its metadata requests {requests!r} are not ones sklearn knows")
        # (The setters exist only while routing is on, whatever the user's setting.)
        with config_context(enable_metadata_routing=True):
            for method, params in requests.items():
                getattr(self, f"set_{method}_request")(**params)

    @classmethod
    @_plain_torch()
    def load(cls, path, device=None):
        """Load an estimator written by :meth:`save`.

        Loading parses JSON and copies tensor bytes; it never executes code
        from the file, so it is safe on files from untrusted sources (a
        malicious file can at worst hold bad weights; one whose parameters
        name a network larger than the values it holds is refused before
        anything is built).

        Parameters
        ----------
        path : str or path-like
            File written by :meth:`save`.
        device : str, torch.device or None, default=None
            Where to put the flow. None means the device it was fitted on
            when this machine has it, else the CPU (with a warning). A given
            device also becomes the ``device`` parameter, so a warm fit of the
            loaded model continues there.

        Returns
        -------
        estimator : FlowDensity
            The fitted estimator, scoring exactly like the saved one.

        Raises
        ------
        ValueError
            If the file is not a skflow model, is truncated, fails its
            SHA-256 check (corrupted or edited), was written by a newer file
            format, or holds a flow this skflow version cannot rebuild or
            fitted attributes that ``fit`` could not have set.

        See Also
        --------
        save : Write an estimator to a file.

        Examples
        --------
        >>> import tempfile, os
        >>> from sklearn.datasets import load_wine
        >>> from skflow import FlowDensity
        >>> X = load_wine().data
        >>> path = os.path.join(tempfile.mkdtemp(), "wine.safetensors")
        >>> _ = FlowDensity(max_iter=5, random_state=0).fit(X).save(path)
        >>> est = FlowDensity.load(path, device="cpu")
        >>> est.score_samples(X[:2]).shape
        (2,)
        """
        from skflow import __version__

        header, tensors = _persistence.read(path, reader_version=__version__)
        if header.get("class") != cls.__name__:
            raise ValueError(
                f"{str(path)!r} holds a {header.get('class')!r}, not a {cls.__name__}."
            )
        saved_by = header.get("skflow_version")
        try:
            est = cls(**{k: _persistence.decode(v) for k, v in header["params"].items()})
            est._validate_params()
            fitted = {k: _persistence.decode(v) for k, v in header["fitted"].items()}
            _check_fitted(fitted, cls)
            _check_size(est, fitted, tensors)
            # (Initial weights the file's tensors replace, drawn from a
            # generator of their own: loading leaves torch's global one alone.)
            with seeded_build(0):
                flow = est._build_flow(fitted["n_features_in_"], tuple(fitted["hidden_units_"]))
            flow = flow.to(_DTYPES[est.dtype])
            _persistence.check_tensors(flow.state_dict(), tensors)
            # (check_tensors: the file's dtypes are those of the dtype parameter.)
            flow.load_state_dict(tensors, strict=True, assign=True)
            restore_counts = getattr(flow.own_objective, "restore_counts", None)
            if restore_counts is not None and "nfe_" in fitted:
                restore_counts(fitted["nfe_"])  # (the weights' training history)
            # Files without the entry come from skflow 0.2 (logarithmic
            # marginal tails right past the knots) or hold no marginal map.
            layers = [m for m in flow.modules() if isinstance(m, PiecewiseLinear)]
            tails = header.get("marginal_tails", [0.0] * len(layers))
            if not (
                isinstance(tails, list)
                and len(tails) == len(layers)
                and all(isinstance(t, (int, float)) and 0 <= t < math.inf for t in tails)
            ):
                raise ValueError(f"its marginal_tails {tails!r} are not one length per layer")
            for layer, tail in zip(layers, tails, strict=True):
                layer.linear_tail = float(tail)
            split = (
                _checked_split(_persistence.decode(header["split"])) if "split" in header else None
            )
            if "output" in header:
                output = _persistence.decode(header["output"])
                if not (
                    isinstance(output, dict)
                    and set(output) <= {"transform"}
                    and set(output.values()) <= {"default", "pandas", "polars"}
                ):
                    raise ValueError(f"its set_output setting {output!r} is not one sklearn knows")
                est.set_output(**output)
            est._set_routing_requests(header.get("requests", {}))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            problem = f"it lacks {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(
                f"{str(path)!r} was saved by skflow {saved_by} and does not match the "
                f"estimator this skflow ({__version__}) builds: {problem}. Load it with "
                f"skflow {saved_by}, or refit."
            ) from None
        for name, value in fitted.items():
            setattr(est, name, value)
        est._fitted_params = copy.deepcopy(est.get_params(deep=False))
        est._fill_fitted_defaults()
        if split is not None:
            est._split = split
        saved_device = fitted.get("device_", torch.device("cpu"))
        if device is not None:
            est.device_ = resolve_device(device, _DTYPES[est.dtype])
            # ... and where a warm fit continues (a GPU model's "cuda" failed
            # there on a CPU-only machine). The file's parameters stay saved.
            est.device = device
        else:
            est.device_ = _usable_device(saved_device, flow.dequantization.dtype)
        est.flow_ = flow.to(est.device_).eval()
        return est
