"""One constructor per flow family; ``KINDS`` maps a ``kind`` string to it.

A constructor takes ``n_features`` plus keyword options (at least
``n_layers`` and ``hidden_units``) and returns a
:class:`~skflow.engine.transforms.Transform` mapping standardized data to the
latent space. Adding a family means one module here and one line in ``KINDS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from numbers import Integral

from skflow.engine.flows.cnf import ContinuousFlow, build_cnf
from skflow.engine.flows.glow import build_glow
from skflow.engine.flows.iaf import build_iaf
from skflow.engine.flows.maf import build_maf
from skflow.engine.flows.nice import build_nice
from skflow.engine.flows.nsf import build_nsf
from skflow.engine.flows.planar import build_planar
from skflow.engine.flows.realnvp import build_realnvp
from skflow.engine.transforms import Transform

KINDS: dict[str, Callable[..., Transform]] = {
    "maf": build_maf,
    "realnvp": build_realnvp,
    "planar": build_planar,
    "iaf": build_iaf,
    "nsf": build_nsf,
    "glow": build_glow,
    "nice": build_nice,
    "cnf": build_cnf,
}


# Every constructor's shape arguments (cnf's layer calls its blocks n_blocks).
SHAPE_OPTIONS = ("n_layers", "hidden_units")


def _builder(kind: str) -> Callable[..., Transform]:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"Unknown flow kind {kind!r}; choose one of {sorted(KINDS)}.") from None


def kind_options(kind: str) -> list[str]:
    """Names of the options of flow family ``kind`` besides its shape
    (``n_layers``, ``hidden_units``)."""
    params = inspect.signature(_builder(kind)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        # (cnf passes its options on to its layer: that layer's keywords.)
        params = inspect.signature(ContinuousFlow).parameters
    skip = {*SHAPE_OPTIONS, "n_blocks"}
    return [n for n, p in params.items() if p.default is not p.empty and n not in skip]


def _positive_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and int(value) >= 1


def build_transform(kind: str, n_features: int, **options: object) -> Transform:
    """Build the transform of flow family ``kind`` for ``n_features`` features.

    Parameters
    ----------
    kind : str
        A key of :data:`KINDS` (``"maf"``, ``"nsf"``, ``"cnf"``, ...).
    n_features : int
        Dimension of the data.
    **options
        ``n_layers`` (required), ``hidden_units`` (a sequence of widths,
        ``()`` for linear conditioners; required but by ``"planar"``, which
        has no conditioner) and the kind's own options
        (:func:`skflow.engine.flows.kind_options`; the kinds guide lists them).

    Returns
    -------
    Transform
        The bijection from data to latent; wrap it in a
        :class:`~skflow.engine.Flow` for densities and samples.

    Examples
    --------
    >>> import torch
    >>> from skflow.engine import build_transform
    >>> t = build_transform("nsf", 3, n_layers=2, hidden_units=(16,), n_bins=4)
    >>> z, log_det = t(torch.randn(5, 3))
    >>> z.shape, log_det.shape
    (torch.Size([5, 3]), torch.Size([5]))
    >>> x, _ = t.inverse(z)  # back to the data
    """
    builder, allowed = _builder(kind), kind_options(kind)
    if "n_layers" not in options:
        raise ValueError("build_transform needs n_layers (the number of layers or blocks).")
    units_param = inspect.signature(builder).parameters.get("hidden_units")
    required = units_param is not None and units_param.default is inspect.Parameter.empty
    if "hidden_units" not in options and required:
        raise ValueError(
            f"build_transform({kind!r}) needs hidden_units (the conditioners' widths, e.g. "
            "(64, 64); () for linear conditioners)."
        )
    for name, value in (("n_features", n_features), ("n_layers", options["n_layers"])):
        # (Zero layers would silently build the identity.)
        if not _positive_int(value):
            raise ValueError(f"build_transform needs {name} >= 1, got {value!r}.")
    units = options.get(
        "hidden_units", () if required or units_param is None else units_param.default
    )
    if (
        not isinstance(units, Sequence)
        or isinstance(units, str)
        or not all(map(_positive_int, units))
    ):
        # (A zero width would build a constant conditioner, 8.5 a network of 9.)
        raise ValueError(
            f"build_transform needs hidden_units as a sequence of positive ints, e.g. "
            f"(64, 64) (() for linear conditioners), got {units!r}."
        )
    unknown = sorted(set(options) - {*SHAPE_OPTIONS, *allowed})
    if unknown:
        raise ValueError(
            f"kind={kind!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {allowed}."
        )
    return builder(n_features, **options)
