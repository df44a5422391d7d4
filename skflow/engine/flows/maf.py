"""Masked autoregressive flow (Papamakarios, Pavlakou & Murray 2017, arXiv:1705.07057).

Each layer is an affine autoregressive map whose shift and log-scale come from
a MADE; the feature order is reversed between layers so every coordinate gets
conditioned on every other. Density: one pass per layer. Sampling: ``D``
sequential passes per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from skflow.engine.transforms import (
    AffineTransformer,
    Compose,
    MaskedAutoregressive,
    Permutation,
    Transform,
)


def build_maf(n_features: int, *, n_layers: int, hidden_units: Sequence[int]) -> Transform:
    """Stack of ``n_layers`` MADE affine layers with order reversal between them."""
    reverse = torch.arange(n_features - 1, -1, -1)
    layers: list[Transform] = []
    for i in range(n_layers):
        if i > 0:
            layers.append(Permutation(reverse))
        layers.append(MaskedAutoregressive(n_features, AffineTransformer(), hidden_units))
    return Compose(*layers)
