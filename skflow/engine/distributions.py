"""Base distribution and the flow (base distribution + transform)."""

from __future__ import annotations

import math
from numbers import Integral
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from skflow.engine.device import in_chunks
from skflow.engine.rng import drawing_from
from skflow.engine.transforms import Compose, Transform

_LOG_2PI = math.log(2 * math.pi)


def std_normal_log_prob(z: Tensor) -> Tensor:
    """Log-density of the standard normal on the last dimension of ``z``."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * _LOG_2PI)


class StandardNormal(nn.Module):
    """Standard normal on ``R^D``; the latent distribution of every flow.

    Parameters
    ----------
    n_features : int
        The dimension ``D``.

    Examples
    --------
    >>> import torch
    >>> from skflow.engine import StandardNormal
    >>> base = StandardNormal(2)
    >>> base.log_prob(torch.zeros(1, 2))  # -log(2 pi)
    tensor([-1.8379])
    >>> base.sample(3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
    """

    _anchor: Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        if not isinstance(n_features, Integral) or isinstance(n_features, bool) or n_features < 1:
            raise ValueError(f"StandardNormal takes a positive int, got {n_features!r}.")
        self.n_features: int = int(n_features)
        # A buffer (not a constant) so the distribution follows .to(device/dtype).
        self.register_buffer("_anchor", torch.zeros(()))

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density of each row of ``z`` (shape ``(n, D)``): shape ``(n,)``."""
        return std_normal_log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws, shape ``(n, D)``, in the distribution's dtype and on
        its device (drawn on ``generator``'s device, so a CPU generator gives
        the same numbers on any device)."""
        gen_device = generator.device if generator is not None else self._anchor.device
        z = torch.randn(
            n,
            self.n_features,
            generator=generator,
            device=gen_device,
            dtype=self._anchor.dtype,
        )
        return z.to(self._anchor.device)


class OwnObjective(Protocol):
    """A layer with a ``training_loss`` of its own (see :attr:`Flow.own_objective`)."""

    def training_loss(self, x: Tensor, ladj: Tensor) -> Tensor: ...


class Flow(nn.Module):
    """A normalizing flow: ``log p(x) = log N(T(x)) + log|det dT/dx|``.

    Parameters
    ----------
    transform : Transform
        The bijection ``T`` from data to latent, e.g. from
        :func:`~skflow.engine.build_transform`.
    base : StandardNormal
        The latent distribution, of the transform's dimension.

    Examples
    --------
    >>> import torch
    >>> from skflow.engine import Flow, StandardNormal, build_transform
    >>> _ = torch.manual_seed(0)
    >>> flow = Flow(build_transform("maf", 3, n_layers=2, hidden_units=(16,)), StandardNormal(3))
    >>> x = torch.randn(5, 3)
    >>> flow.log_prob(x).shape
    torch.Size([5])
    >>> with torch.no_grad():
    ...     flow.sample(4, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3])
    """

    dequantization: Tensor

    def __init__(self, transform: Transform, base: StandardNormal) -> None:
        super().__init__()
        self.transform = transform
        self.base = base
        # Width of the uniform dequantization noise added to each feature
        # while training (0 = continuous feature); see ``train_flow``.
        self.register_buffer("dequantization", torch.zeros(base.n_features))

    @property
    def layers(self) -> list[Transform]:
        """The transform's layers in order (the transform itself when it is
        not a :class:`~skflow.engine.transforms.Compose`)."""
        if isinstance(self.transform, Compose):
            # (ModuleList yields Module: a Compose holds Transforms.)
            return cast("list[Transform]", list(self.transform.transforms))
        return [self.transform]

    @property
    def own_objective(self) -> Transform | None:
        """The last layer when it has a ``training_loss(x, ladj)`` of its
        own (a continuous flow), else None. It also carries that layer's
        settings that training and the estimator read (``ema_decay``,
        ``min_batch_rows``, ``nfe``, ...)."""
        layers = self.layers
        last = layers[-1] if layers else None
        return last if hasattr(last, "training_loss") else None

    @property
    def ema_decay(self) -> float | None:
        """Decay of the exponential moving average of the weights that
        training validates and keeps, if the last layer asks for one (flow
        matching: its noisy regression gradients leave the raw weights
        jittering around a better average)."""
        return getattr(self.own_objective, "ema_decay", None)

    def check_rows(self, x: Tensor, what: str) -> None:
        """Raise ``TypeError`` unless ``x`` is a tensor, ``ValueError``
        unless it holds rows ``(n, D)`` in the flow's dtype, on its device
        (``what`` names the caller in the message)."""
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{what} takes a torch.Tensor, got {type(x).__name__} (torch.as_tensor(x))."
            )
        device = self.dequantization.device
        if x.device != device:
            raise ValueError(
                f"{what} takes rows on the flow's device {device}; got {x.device} "
                "(x.to(device), or the flow with .to(device))."
            )
        if (
            x.dim() != 2
            or x.shape[-1] != self.base.n_features
            or x.dtype != self.dequantization.dtype
        ):
            # (Else a mismatch surfaces as a shape error deep in a layer, or
            # not at all: a single row of shape (D,) would be read as D rows.)
            raise ValueError(
                f"{what} takes rows of shape (n, {self.base.n_features}) in "
                f"{self.dequantization.dtype}; got shape {tuple(x.shape)} in {x.dtype} (one "
                "row: x[None]; convert with x.to(dtype), or the flow with .to(dtype))."
            )

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of each row of ``x`` (shape ``(n, D)``, the flow's
        dtype and device): a tensor of shape ``(n,)``, differentiable with
        respect to the parameters and to ``x``. Rows that a layer cannot map
        (a continuous flow's rows beyond its solver's range) get ``-inf``."""
        self.check_rows(x, "Flow.log_prob")
        z, ladj = self.transform(x)
        # A row a layer cannot map (a continuous flow's row beyond its
        # solver) comes back with latent NaN and log-det -inf: log-density
        # -inf, not NaN.
        return torch.where(ladj == -math.inf, ladj, self.base.log_prob(z) + ladj)

    def training_loss(self, x: Tensor) -> Tensor:
        """Per-row loss that training minimizes (and early stopping monitors):
        the negative log-likelihood, unless the last layer has a
        ``training_loss(x, ladj)`` of its own (a continuous flow: Hutchinson's
        estimate and regularizers, or flow matching). That layer gets ``x`` mapped
        through the layers in front of it (fixed preprocessing) and their
        log-determinant ``ladj``.
        """
        own = self.own_objective
        if own is None:
            return -self.log_prob(x)
        ladj = x.new_zeros(x.shape[0])
        for layer in self.layers[:-1]:
            x, layer_ladj = layer(x)
            ladj = ladj + layer_ladj
        return cast(OwnObjective, own).training_loss(x, ladj)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` rows drawn from the flow, shape ``(n, D)``, on its device:
        base draws mapped through the inverse transform (in chunks of
        :func:`~skflow.engine.device.in_chunks`). With a CPU
        ``generator`` the draws are reproducible on any device; without one
        they come from torch's global generator (and a layer's own draws from
        the thread's noise generator, if one is set: see :mod:`skflow.engine.rng`).
        Wrap in ``torch.no_grad()`` unless you need gradients."""
        return self.sample_with_latent(n, generator)[0]

    def sample_with_latent(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`sample`'s rows and the base draws they were mapped from
        (``transform`` maps the rows back to them, up to round-off where
        the inverse is well conditioned)."""
        if not isinstance(n, Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"Flow.sample takes a non-negative int, got {n!r}.")
        z = self.base.sample(n, generator)
        if generator is None:
            return self._invert(z), z
        # Layers that draw noise of their own while sampling (augmented
        # continuous flows) take it from a generator seeded from
        # ``generator``, so samples stay reproducible.
        seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
        with drawing_from(torch.Generator(device=generator.device).manual_seed(seed)):
            return self._invert(z), z

    def _invert(self, z: Tensor) -> Tensor:
        # The latent draws are made at once (the same numbers for any n), the
        # inverse pass in chunks so its activations stay bounded; each chunk
        # goes straight into the output (a list then a concatenation would
        # hold it twice).
        out = torch.empty_like(z)

        def step(start: int, stop: int) -> None:
            out[start:stop] = self.transform.inverse(z[start:stop])[0]

        in_chunks(z.shape[0], z.device, step)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)
