"""Masked autoregressive flow (Papamakarios, Pavlakou & Murray 2017, arXiv:1705.07057).

Each layer is an affine autoregressive map whose shift and log-scale come from
a MADE; the feature order is reversed between layers so every coordinate gets
conditioned on every other. Density: one pass per layer. Sampling: ``D``
sequential passes per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from skflow.engine.transforms import (
    AffineTransformer,
    Compose,
    MaskedAutoregressive,
    Permutation,
    Transform,
    batch_normed,
)


def reversing_stack(
    n_features: int, n_layers: int, make_layer: Callable[[], Transform]
) -> Transform:
    """``n_layers`` layers from ``make_layer`` with the feature order reversed
    between them, so that every coordinate gets conditioned on every other
    (shared by the autoregressive families: maf, iaf, nsf)."""
    reverse = torch.arange(n_features - 1, -1, -1)
    layers: list[Transform] = []
    for i in range(n_layers):
        if i > 0:
            layers.append(Permutation(reverse))
        layers.append(make_layer())
    return Compose(*layers)


def build_maf(
    n_features: int, *, n_layers: int, hidden_units: Sequence[int], batch_norm: bool = False
) -> Transform:
    """Stack of ``n_layers`` MADE affine layers with order reversal between them;
    ``batch_norm=True`` adds a :class:`~skflow.engine.transforms.BatchNormFlow`
    after each (as in the MAF paper)."""
    return reversing_stack(
        n_features,
        n_layers,
        lambda: batch_normed(
            MaskedAutoregressive(n_features, AffineTransformer(), hidden_units),
            n_features,
            batch_norm,
        ),
    )
