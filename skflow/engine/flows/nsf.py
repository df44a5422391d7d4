"""Neural spline flows (Durkan, Bekasov, Murray & Papamakarios 2019, arXiv:1906.04032).

Each layer transforms every coordinate with a monotone rational-quadratic
spline on ``[-tail_bound, tail_bound]`` (identity outside, see
``skflow.engine.splines``) whose bins and knot slopes come from a
conditioner network. Two variants share the spline:

- ``"autoregressive"`` (RQ-NSF (AR)): a MADE conditioner, as in MAF.
  Density: one pass per layer; sampling: ``D`` sequential steps per layer.
- ``"coupling"`` (RQ-NSF (C)): half of the coordinates condition the spline
  of the other half, as in RealNVP. Density and sampling: one pass per layer,
  but each layer changes only half of the coordinates.

A spline is far more flexible per layer than an affine map (multimodal
marginals in one step), at roughly ``3 * n_bins`` conditioner outputs per
coordinate instead of 2. The autoregressive variant is the default: on the
shared UCI/ADBench tables it reached a higher held-out log-likelihood than
the coupling variant, which trains about twice as fast.

Tails: data are standardized before the flow and the splines act on
``[-tail_bound, tail_bound]`` only; beyond it every layer is the identity,
so the probability of a coordinate exceeding ``tail_bound`` is pinned to
the base Gaussian's. The default ``tail_bound=3`` (the paper's choice for
tabular data) gave the best held-out log-likelihood on the shared tables;
for heavy-tailed columns (amounts, waiting times: a few percent of rows
beyond 3 standard deviations) ``tail_bound=5`` reproduces the tail and the
variance of samples much better, at a coarser resolution per bin.
"""

from __future__ import annotations

from collections.abc import Sequence

from skflow.engine.flows.maf import reversing_stack
from skflow.engine.flows.realnvp import alternating_masks
from skflow.engine.splines import RationalQuadraticSplineTransformer
from skflow.engine.transforms import (
    Compose,
    Coupling,
    MaskedAutoregressive,
    Transform,
)

VARIANTS = ("autoregressive", "coupling")


def build_nsf(
    n_features: int,
    *,
    n_layers: int,
    hidden_units: Sequence[int],
    variant: str = "autoregressive",
    n_bins: int = 8,
    tail_bound: float = 3.0,
) -> Transform:
    """Stack of ``n_layers`` rational-quadratic spline layers.

    ``variant`` picks the conditioner: ``"autoregressive"`` (MADE, feature
    order reversed between layers) or ``"coupling"`` (alternating masks).
    ``n_bins`` and ``tail_bound`` set the spline of every layer.
    """
    if variant not in VARIANTS:
        raise ValueError(f"nsf variant must be one of {VARIANTS}, got {variant!r}.")
    spline = RationalQuadraticSplineTransformer(n_bins=n_bins, tail_bound=tail_bound)
    if variant == "coupling":
        return Compose(
            *(
                Coupling(mask, spline, hidden_units)
                for mask in alternating_masks(n_features, n_layers)
            )
        )
    return reversing_stack(
        n_features,
        n_layers,
        lambda order: MaskedAutoregressive(n_features, spline, hidden_units, order),
    )
