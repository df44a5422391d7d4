"""Neural networks used as conditioners: plain MLPs and masked MLPs (MADE)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn


def _zero_last(linear: nn.Linear | nn.Conv2d) -> None:
    # A zero output layer makes every flow layer start as the identity (or a
    # fixed elementwise map), which keeps the first steps of training stable.
    nn.init.zeros_(linear.weight)
    # (The bias is None only for bias=False, which no caller passes.)
    nn.init.zeros_(cast(Tensor, linear.bias))


class MLP(nn.Sequential):
    """Fully connected network ``in_features -> hidden_units -> out_features``.

    A zero ``in_features`` is allowed (a coupling layer on one column has
    nothing to condition on): the network then learns a constant output.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_units: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        self.constant_input = in_features == 0
        layers: list[nn.Module] = []
        width = max(in_features, 1)
        for h in hidden_units:
            layers += [nn.Linear(width, h), activation()]
            width = h
        last = nn.Linear(width, out_features)
        _zero_last(last)
        super().__init__(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        if self.constant_input:
            x = x.new_ones(x.shape[:-1] + (1,))
        return _chain(self, x)


def _chain(layers: nn.Sequential, x: Tensor) -> Tensor:
    """``layers(x)`` through each layer's ``forward`` directly: skipping
    ``nn.Module.__call__`` (hook dispatch) for these small layers saves about
    3% of a small flow's training step on CPU. Hooks on the individual layers
    therefore do not fire; hooks on the network itself do."""
    for layer in layers:
        x = layer.forward(x)
    return x


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015).

    Output ``[..., i, :]`` (``n_params`` values for feature ``i``) depends only
    on the features before ``i`` in ``order`` (a permutation of ``0 .. D-1``;
    default the natural order). Stacked flows alternate orders in the masks
    rather than permuting the data between layers, which saves a copy per
    layer. Hidden degrees are assigned cyclically, so the masks are
    deterministic and every hidden unit is used.
    """

    def __init__(
        self,
        n_features: int,
        n_params: int,
        hidden_units: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
        order: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_params = n_params
        # Degree of feature order[k] is k + 1.
        in_deg = torch.empty(n_features, dtype=torch.long)
        in_deg[order if order is not None else torch.arange(n_features)] = torch.arange(
            1, n_features + 1
        )
        # Hidden degrees in 1..D-1 (0 when D == 1, i.e. no input connection).
        span = max(n_features - 1, 1)
        low = min(n_features - 1, 1)
        layers: list[nn.Module] = []
        prev = in_deg
        for h in hidden_units:
            deg = torch.arange(h) % span + low
            layers += [MaskedLinear(deg[:, None] >= prev[None, :]), activation()]
            prev = deg
        out_deg = in_deg.repeat_interleave(n_params)
        last = MaskedLinear(out_deg[:, None] > prev[None, :])
        _zero_last(last)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = _chain(self.net, x)
        return out.view(*x.shape[:-1], self.n_features, self.n_params)


class ConvNet(nn.Module):
    """Convolutional conditioner of an image coupling layer (Glow's ``NN()``).

    Maps flat rows of an ``(in_channels, height, width)`` image to flat rows
    holding ``n_params`` values for each coordinate of an ``(out_channels,
    height, width)`` image, ordered ``(channel, row, column, param)`` as
    :class:`~skflow.engine.transforms.Coupling` expects. 3x3 convolutions
    first and last, 1x1 in between; the last one starts at zero, so the
    coupling starts as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_params: int,
        hidden_channels: Sequence[int],
        height: int,
        width: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.in_shape = (in_channels, height, width)
        self.out_shape = (out_channels, n_params, height, width)
        layers: list[nn.Module] = []
        width_in = in_channels
        for i, h in enumerate(hidden_channels):
            kernel = 3 if i == 0 else 1
            layers += [nn.Conv2d(width_in, h, kernel, padding=kernel // 2), activation()]
            width_in = h
        last = nn.Conv2d(width_in, out_channels * n_params, 3, padding=1)
        _zero_last(last)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x.view(x.shape[0], *self.in_shape))
        return out.view(x.shape[0], *self.out_shape).permute(0, 1, 3, 4, 2).flatten(1)
