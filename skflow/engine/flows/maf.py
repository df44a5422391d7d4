"""Masked autoregressive flow (Papamakarios, Pavlakou & Murray 2017, arXiv:1705.07057).

Each layer is an affine autoregressive map whose shift and log-scale come from
a MADE; the autoregressive order is reversed from one layer to the next so
every coordinate gets conditioned on every other. Density: one pass per
layer. Sampling: ``D`` sequential steps per layer, about one pass of arithmetic
in all (:meth:`skflow.engine.nn.MADE.autoregress`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from skflow.engine.transforms import (
    AffineTransformer,
    Compose,
    MaskedAutoregressive,
    Transform,
    batch_normed,
)


def reversing_stack(
    n_features: int, n_layers: int, make_layer: Callable[[Tensor | None], Transform]
) -> Transform:
    """``n_layers`` autoregressive layers from ``make_layer(order)``, the
    order alternating between natural (``None``) and reversed, so that every
    coordinate gets conditioned on every other (shared by the autoregressive
    families: maf, iaf, nsf). The reversal lives in the masks: no data is
    permuted between layers."""
    reverse = torch.arange(n_features - 1, -1, -1)
    return Compose(*(make_layer(reverse if i % 2 else None) for i in range(n_layers)))


def build_maf(
    n_features: int, *, n_layers: int, hidden_units: Sequence[int], batch_norm: bool = False
) -> Transform:
    """Stack of ``n_layers`` MADE affine layers with order reversal between them;
    ``batch_norm=True`` adds a ``skflow.engine.transforms.BatchNormFlow``
    after each (as in the MAF paper)."""
    return reversing_stack(
        n_features,
        n_layers,
        lambda order: batch_normed(
            MaskedAutoregressive(n_features, AffineTransformer(), hidden_units, order),
            n_features,
            batch_norm,
        ),
    )
