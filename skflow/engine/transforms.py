"""Bijections with exact log-determinants.

Convention (shared by every layer): ``forward`` maps data to latent
(the normalizing direction) and returns ``(z, log|det dz/dx|)``; ``inverse``
maps latent to data and returns ``(x, log|det dx/dz|)``. Log-determinants
have shape ``(batch,)``.

Autoregressive and coupling layers are built from an *elementwise
transformer* (a monotone map of each coordinate given parameters) and a
*conditioner* network that produces those parameters; a new transformer
(affine, additive, rational-quadratic spline, ...) plugs into both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from skflow.engine.nn import MADE, MLP


class Transform(nn.Module):
    """Base class: an invertible map with exact log|det J| in both directions."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError


class Compose(Transform):
    """Apply transforms in order (data -> latent); inverse applies them reversed."""

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ladj = t(x)
            total = total + ladj
        return x, total

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for t in reversed(self.transforms):
            z, ladj = t.inverse(z)
            total = total + ladj
        return z, total


class Inverse(Transform):
    """Swap the two directions of a transform (e.g. IAF is an inverted MAF)."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform(z)


class Affine(Transform):
    """Fixed elementwise affine map ``z = (x - loc) / scale`` (standardization).

    ``loc`` and ``scale`` are buffers, not parameters: they are set from the
    data once and are part of the density, so scores stay in the user's units.
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("loc", torch.empty_like(loc))
        self.register_buffer("log_scale", torch.empty_like(scale))
        self.reset(loc, scale)

    @torch.no_grad()
    def reset(self, loc: Tensor, scale: Tensor) -> None:
        """Set ``loc`` and ``scale`` (e.g. from data, once the layer exists)."""
        if not bool((scale > 0).all()):
            raise ValueError("Affine scale must be strictly positive.")
        self.loc.copy_(loc)
        self.log_scale.copy_(scale.log())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(self.log_scale) + self.loc
        return x, self.log_scale.sum().expand(z.shape[0])


class Permutation(Transform):
    """Reorder features; volume preserving."""

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        self.register_buffer("perm", perm.clone())
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])


class ElementwiseTransformer(Protocol):
    """A monotone scalar map applied per coordinate, given per-coordinate params.

    ``forward(x, params)`` and ``inverse(z, params)`` return the mapped values
    and the *elementwise* log|derivative| (same shape as ``x``); ``params``
    has shape ``x.shape + (n_params,)``.
    """

    n_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]: ...

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]: ...


class AffineTransformer:
    """``z = x * exp(s) + t`` with ``s`` softly bounded to ``(-bound, bound)``.

    The tanh bound keeps one layer from producing huge scales early in
    training, the usual source of NaN in affine flows.
    """

    n_params = 2

    def __init__(self, bound: float = 3.0) -> None:
        self.bound = bound

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        return shift, self.bound * torch.tanh(raw / self.bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return x * torch.exp(log_scale) + shift, log_scale

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return (z - shift) * torch.exp(-log_scale), -log_scale


class MaskedAutoregressive(Transform):
    """Autoregressive layer: coordinate ``i`` is transformed with parameters
    computed by a MADE from coordinates ``< i`` (Papamakarios et al. 2017).

    ``forward`` (density direction) is one network pass; ``inverse``
    (sampling) needs ``D`` sequential passes, one per coordinate.
    """

    def __init__(
        self,
        n_features: int,
        transformer: ElementwiseTransformer,
        hidden_units: Sequence[int],
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.made = MADE(n_features, transformer.n_params, hidden_units)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = self.transformer.forward(x, self.made(x))
        return z, ladj.sum(-1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # After pass k the first k coordinates are exact, so D passes suffice.
        x = torch.zeros_like(z)
        for _ in range(z.shape[-1]):
            x, ladj = self.transformer.inverse(z, self.made(x))
        return x, ladj.sum(-1)


class Coupling(Transform):
    """Coupling layer (Dinh et al. 2014, 2016): coordinates where ``mask`` is
    True pass unchanged and condition the transform of the others.

    Both directions take one network pass.
    """

    def __init__(
        self,
        mask: Tensor,
        transformer: ElementwiseTransformer,
        hidden_units: Sequence[int],
    ) -> None:
        super().__init__()
        mask = mask.bool()
        self.register_buffer("idx_cond", torch.nonzero(mask).flatten())
        self.register_buffer("idx_trans", torch.nonzero(~mask).flatten())
        self.transformer = transformer
        self.n_trans = n_trans = len(self.idx_trans)
        self.n_params = transformer.n_params
        self.net = MLP(len(self.idx_cond), n_trans * self.n_params, hidden_units)

    def _couple(self, x: Tensor, forward: bool) -> tuple[Tensor, Tensor]:
        cond = x[:, self.idx_cond]
        params = self.net(cond).view(x.shape[0], self.n_trans, self.n_params)
        step = self.transformer.forward if forward else self.transformer.inverse
        y, ladj = step(x[:, self.idx_trans], params)
        out = x.clone()
        out[:, self.idx_trans] = y
        return out, ladj.sum(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, forward=True)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(z, forward=False)
