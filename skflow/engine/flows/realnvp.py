"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2016, arXiv:1605.08803).

Affine coupling layers with alternating checkerboard masks over the features:
half of the coordinates pass through and condition a bounded affine map of
the other half. Density and sampling both take one pass per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from skflow.engine.transforms import (
    AffineTransformer,
    Compose,
    Coupling,
    Transform,
    batch_normed,
)


def alternating_masks(n_features: int, n_layers: int) -> list[torch.Tensor]:
    """Masks (True = conditioning coordinate) alternating between odd and even
    features; with one feature, nothing can condition, so the coordinate is
    transformed by a learned constant map in every layer."""
    parity = torch.arange(n_features) % 2
    if n_features == 1:
        return [torch.zeros(1, dtype=torch.bool)] * n_layers
    return [parity == (i % 2) for i in range(n_layers)]


def build_realnvp(
    n_features: int, *, n_layers: int, hidden_units: Sequence[int], batch_norm: bool = False
) -> Transform:
    """Stack of ``n_layers`` affine couplings with alternating masks;
    ``batch_norm=True`` adds a ``skflow.engine.transforms.BatchNormFlow``
    after each (as in the RealNVP paper)."""
    return Compose(
        *(
            batch_normed(Coupling(mask, AffineTransformer(), hidden_units), n_features, batch_norm)
            for mask in alternating_masks(n_features, n_layers)
        )
    )
