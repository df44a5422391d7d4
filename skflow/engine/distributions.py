"""Base distribution and the flow (base distribution + transform)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from skflow.engine.transforms import Transform

_LOG_2PI = math.log(2 * math.pi)


class StandardNormal(nn.Module):
    """Standard normal on ``R^D``; the latent distribution of every flow."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n_features = n_features
        # A buffer (not a constant) so the distribution follows .to(device/dtype).
        self.register_buffer("_anchor", torch.zeros(()))

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.square().sum(-1) + self.n_features * _LOG_2PI)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        # Draw on the generator's device (CPU for reproducibility), then move.
        gen_device = generator.device if generator is not None else self._anchor.device
        z = torch.randn(
            n,
            self.n_features,
            generator=generator,
            device=gen_device,
            dtype=self._anchor.dtype,
        )
        return z.to(self._anchor.device)


class Flow(nn.Module):
    """A normalizing flow: ``log p(x) = log N(T(x)) + log|det dT/dx|``."""

    def __init__(self, transform: Transform, base: StandardNormal) -> None:
        super().__init__()
        self.transform = transform
        self.base = base

    def log_prob(self, x: Tensor) -> Tensor:
        z, ladj = self.transform(x)
        return self.base.log_prob(z) + ladj

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        x, _ = self.transform.inverse(self.base.sample(n, generator))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)
