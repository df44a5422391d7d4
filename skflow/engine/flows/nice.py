"""NICE (Dinh, Krueger & Bengio 2014, arXiv:1410.8516).

Additive coupling layers with alternating masks: half of the coordinates
pass through and condition a shift of the other half, ``z = x + t(x_cond)``.
Every coupling is volume preserving, so the only change of volume is a
final learned diagonal scaling, one scale per feature (with a shift). Both
density and sampling take one pass per layer and the log-det is free; the
price is expressiveness: the density can only change its local volume
through that single global scaling, so NICE usually needs more layers than
RealNVP (affine couplings) for the same fit. ``batch_norm=True`` inserts a
``skflow.engine.transforms.BatchNormFlow`` after every coupling
(RealNVP's batch normalization, arXiv:1605.08803), which adds
data-dependent volume change between the couplings.
"""

from __future__ import annotations

from collections.abc import Sequence

from skflow.engine.flows.realnvp import alternating_masks
from skflow.engine.transforms import (
    AdditiveTransformer,
    Compose,
    Coupling,
    ElementwiseAffine,
    Transform,
    batch_normed,
)


def build_nice(
    n_features: int,
    *,
    n_layers: int,
    hidden_units: Sequence[int],
    batch_norm: bool = False,
) -> Transform:
    """``n_layers`` additive couplings with alternating masks, then a learned
    per-feature scaling."""
    couplings = (
        batch_normed(Coupling(mask, AdditiveTransformer(), hidden_units), n_features, batch_norm)
        for mask in alternating_masks(n_features, n_layers)
    )
    return Compose(*couplings, ElementwiseAffine(n_features))
