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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from skflow.engine.nn import MADE, MLP, check_permutation

# False within without_log_det() (per thread and task).
_LOG_DET: ContextVar[bool] = ContextVar("skflow_log_det", default=True)


@contextmanager
def without_log_det() -> Iterator[None]:
    """Within this context, in this thread, layers whose log-determinant
    costs much more than the map itself may skip it (reporting NaN):
    sampling and latent maps need no density. Continuous flows do: their
    divergence costs one backward pass per dimension at every evaluation of
    the field (8-16x the time of the solve itself on 30 features). A context
    variable, not a flag on the layers: other threads, and copies or pickles
    of a flow taken meanwhile, keep their densities."""
    token = _LOG_DET.set(False)
    try:
        yield
    finally:
        _LOG_DET.reset(token)


def log_det_wanted() -> bool:
    """False within :func:`without_log_det`."""
    return _LOG_DET.get()


class Transform(nn.Module):
    """Base class: an invertible map with exact log|det J| in both directions.

    ``compilable`` is False for layers that ``train_flow(compile=True)`` must
    not hand to ``torch.compile`` (tried and found to break or crash it).
    """

    compilable: bool = True

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Map rows ``x`` (shape ``(batch, D)``) towards the latent space:
        ``(z, log|det dz/dx|)``, the log-determinant of shape ``(batch,)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Map latent rows back: ``(x, log|det dx/dz|)``."""
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
            # (ModuleList yields Module: it holds Transforms here.)
            z, ladj = cast(Transform, t).inverse(z)
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
    """Fixed affine map ``z = L^{-1} (x - loc)`` with ``L`` lower triangular
    with a positive diagonal: standardization when ``L`` is diagonal,
    whitening when ``L`` is a Cholesky factor of a covariance.

    ``loc`` and ``L`` are buffers, not parameters: they are set from the data
    once and are part of the density (log|det| = -sum log diag L), so scores
    stay in the user's units. ``scale`` may be a vector (the diagonal of L).
    The buffers take ``loc``'s floating dtype.
    """

    loc: Tensor
    tril: Tensor
    inv_tril: Tensor
    log_det: Tensor

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        d = loc.shape[-1]
        dtype = loc.dtype if loc.is_floating_point() else torch.get_default_dtype()
        self.register_buffer("loc", torch.zeros(d, dtype=dtype))
        self.register_buffer("tril", torch.eye(d, dtype=dtype))
        self.register_buffer("inv_tril", torch.eye(d, dtype=dtype))
        self.register_buffer("log_det", torch.zeros((), dtype=dtype))
        self.reset(loc, scale)

    @torch.no_grad()
    def reset(self, loc: Tensor, scale: Tensor) -> None:
        """Set ``loc`` and ``L`` (e.g. from data, once the layer exists)."""
        # Solved in float64 on the CPU (MPS has no float64), then cast to the
        # buffers' dtype before the copy to their device.
        scale = scale.detach().cpu().double()
        if not bool(torch.isfinite(scale).all()):
            raise ValueError("Affine scale must be finite with a strictly positive diagonal.")
        if scale.dim() == 2 and bool(torch.triu(scale, diagonal=1).any()):
            raise ValueError(
                "Affine scale must be lower triangular (for whitening, the Cholesky factor "
                "torch.linalg.cholesky(covariance), not the covariance itself)."
            )
        tril = torch.diag_embed(scale) if scale.dim() == 1 else scale
        diag = torch.diagonal(tril)
        if not bool((diag > 0).all()):
            raise ValueError("Affine scale must be finite with a strictly positive diagonal.")
        eye = torch.eye(tril.shape[0], dtype=torch.float64)
        inv_tril = torch.linalg.solve_triangular(tril, eye, upper=False)
        dtype = self.loc.dtype
        self.loc.copy_(loc.detach().cpu().to(dtype))
        self.tril.copy_(tril.to(dtype))
        self.inv_tril.copy_(inv_tril.to(dtype))
        self.log_det.copy_(diag.log().sum().to(dtype))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.loc) @ self.inv_tril.T
        return z, (-self.log_det).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z @ self.tril.T + self.loc
        return x, self.log_det.expand(z.shape[0])


def _search(knots: Tensor, v: Tensor) -> Tensor:
    """``torch.searchsorted(knots, v)`` (rows of sorted ``knots``, ``v``
    row by row): the number of knots below each value.

    On a CPU, a branchless binary search in whole-tensor steps (a gather and
    a compare each) is 2.4x faster than ``searchsorted``'s per-element loop
    on large batches (16 vs 38 ns per lookup in 128 knots; the lookup was a
    quarter of scoring a small flow), but its two dozen operations cost
    about 60 us, which ``searchsorted`` beats below about 2,000 lookups in
    128 knots (more with fewer knots). Elsewhere ``searchsorted`` is one
    kernel."""
    if v.device.type != "cpu" or v.numel() < 2048:
        return torch.searchsorted(knots, v)
    # Invariant: every knot before ``base`` is below v, and the answer lies in
    # base .. base + n; each step halves n with one probe per value.
    n = knots.shape[-1]
    half = n // 2
    base = (knots[:, half : half + 1] < v).long() * half
    n -= half
    while n > 1:
        half = n // 2
        base.add_(knots.gather(1, base + half) < v, alpha=half)
        n -= half
    return base.add_(knots.gather(1, base) < v)


# Whether a torch.func transform (vmap, grad, jacrev) is tracing the call; a
# private hook of torch's, so absent means "cannot tell" (never refuse).
functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def refuse_functorch(what: str, why: str) -> None:
    """Raise a clear ``NotImplementedError`` when called under a torch.func
    transform (else a "data-dependent control flow" or "batching rule not
    implemented" error from deep inside)."""
    if functorch_active():
        raise NotImplementedError(
            f"{what} does not support torch.func transforms (vmap, grad, jacrev) here: {why}. "
            "Use torch.autograd instead (torch.autograd.grad, "
            "torch.autograd.functional.jacobian)."
        )


class PiecewiseLinear(Transform):
    """Fixed monotone map of each feature: piecewise linear through knots
    ``(x_knots[i, k], z_knots[i, k])``; beyond the end knots it goes on with
    the end segment's slope ``s`` for ``LINEAR_TAIL`` units, then
    logarithmically: ``z = z_end + t(s |x - x_end|)`` with ``t(e) = e`` up to
    ``L = LINEAR_TAIL`` and ``L + log(1 + e - L)`` past it.

    Fitted to a feature's empirical quantiles against normal quantiles, it is
    a marginal Gaussianization: skewed, multimodal or spiky features become
    near-normal before the learned layers see them. The logarithmic part
    keeps points far outside the training range from exploding through the
    layers after it (a query 1e6 standard deviations out lands about 65 units
    out); the linear part keeps the inverse from sending the rare latent
    the layers after it stretch out (30 units, say) exponentially far (a
    logarithm from the end knot on put 0.3% of a fitted maf's samples of
    breast_cancer beyond 20 standard deviations, up to 1e9). log|det| is
    exact everywhere.
    """

    # Normal units of linear tail past each end knot (see the class docstring);
    # each layer holds its own ``linear_tail``, and layers pickled before it
    # existed (by skflow 0.2) read 0: their logarithmic tails, as fitted.
    LINEAR_TAIL = 50.0
    # Beyond this many units past the linear tail, the inverse's exp saturates.
    MAX_TAIL = 80.0

    x_knots: Tensor
    z_knots: Tensor

    def __init__(self, x_knots: Tensor, z_knots: Tensor) -> None:
        super().__init__()
        self.linear_tail = self.LINEAR_TAIL
        self.register_buffer("x_knots", torch.empty_like(x_knots))
        self.register_buffer("z_knots", torch.empty_like(z_knots))
        self.reset(x_knots, z_knots)

    @torch.no_grad()
    def reset(self, x_knots: Tensor, z_knots: Tensor) -> None:
        """Set the knots; both must be strictly increasing along the last axis."""
        if x_knots.shape[-1] < 2:
            raise ValueError("PiecewiseLinear needs at least 2 knots per feature.")
        # Checked in the layer's dtype, cast before the copy to the buffers'
        # device (MPS has no float64): knots 1 apart at 1e12 are distinct in
        # float64 but one value in float32, a 0/0 slope.
        x_knots, z_knots = x_knots.to(self.x_knots.dtype), z_knots.to(self.z_knots.dtype)
        for name, k in (("x_knots", x_knots), ("z_knots", z_knots)):
            if not bool((k.diff(dim=-1) > 0).all()) or not bool(torch.isfinite(k).all()):
                raise ValueError(
                    f"PiecewiseLinear {name} must be finite and strictly increasing in "
                    f"{self.x_knots.dtype}."
                )
        self.x_knots.copy_(x_knots)
        self.z_knots.copy_(z_knots)

    @staticmethod
    def _segments(v: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        """Linear interpolation of ``v`` (features first) and its slope."""
        # (Out of place: torch.func's vmap has no batching rule for clamp_.)
        idx = _search(src, v).clamp(1, src.shape[-1] - 1)
        prev = idx - 1
        s0, s1 = src.gather(1, prev), src.gather(1, idx)
        d0, d1 = dst.gather(1, prev), dst.gather(1, idx)
        slope = (d1 - d0) / (s1 - s0)
        return d0 + (v - s0) * slope, slope

    def _end_slopes(self) -> tuple[Tensor, Tensor]:
        xk, zk = self.x_knots, self.z_knots
        return (
            (zk[:, 1:2] - zk[:, :1]) / (xk[:, 1:2] - xk[:, :1]),
            (zk[:, -1:] - zk[:, -2:-1]) / (xk[:, -1:] - xk[:, -2:-1]),
        )

    def _tail(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """``t(e)`` of the class docstring for excesses ``e >= 0``, and
        ``log t'(e)``."""
        linear = getattr(self, "linear_tail", 0.0)
        past = (e - linear).clamp(min=0)
        log_past = torch.log1p(past)
        return torch.where(past > 0, linear + log_past, e), -log_past

    def _untail(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The inverse of :meth:`_tail` (saturating ``MAX_TAIL`` units past
        the linear part), and its log-derivative."""
        linear = getattr(self, "linear_tail", 0.0)
        past = (t - linear).clamp(min=0, max=self.MAX_TAIL)
        return torch.where(past > 0, linear + torch.expm1(past), t), past

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xt = x.T.contiguous()
        z, slope = self._segments(xt, self.x_knots, self.z_knots)
        s_lo, s_hi = self._end_slopes()
        under, log_under = self._tail((self.x_knots[:, :1] - xt).clamp(min=0) * s_lo)
        over, log_over = self._tail((xt - self.x_knots[:, -1:]).clamp(min=0) * s_hi)
        z = torch.where(under > 0, self.z_knots[:, :1] - under, z)
        z = torch.where(over > 0, self.z_knots[:, -1:] + over, z)
        # In a tail, log dz/dx = log s + log t'; inside, log(slope) (the end
        # segment's slope is s: the tails continue it).
        ladj = slope.log() + log_under + log_over
        return z.T, ladj.sum(0)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        zt = z.T.contiguous()
        x, slope = self._segments(zt, self.z_knots, self.x_knots)
        s_lo, s_hi = self._end_slopes()
        under, log_under = self._untail((self.z_knots[:, :1] - zt).clamp(min=0))
        over, log_over = self._untail((zt - self.z_knots[:, -1:]).clamp(min=0))
        x = torch.where(under > 0, self.x_knots[:, :1] - under / s_lo, x)
        x = torch.where(over > 0, self.x_knots[:, -1:] + over / s_hi, x)
        # Inside, slope is dx/dz; in a tail log dx/dz = log t^-1' - log s.
        inside = (under == 0) & (over == 0)
        ladj = torch.where(
            inside,
            slope.log(),
            log_under + log_over - torch.where(under > 0, s_lo, s_hi).log(),
        )
        return x.T, ladj.sum(0)


class LogTails(Transform):
    """Identity within ``bound`` of zero, logarithmic beyond:
    ``z = sign(x) (bound + log(1 + |x| - bound))`` for ``|x| > bound``.

    The same map as a :class:`PiecewiseLinear` with knots at ``+-bound`` and
    no linear stretch past them (``linear_tail = 0``), in a few elementwise
    operations (it runs at every training step, after the
    learned layers): a far-out input gets a large negative log-density
    instead of the exponential blow-up of the layers before it squared.
    """

    def __init__(self, bound: float) -> None:
        super().__init__()
        if not bound > 0:
            raise ValueError(f"LogTails bound must be positive, got {bound!r}.")
        self.bound = float(bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        excess = (x.abs() - self.bound).clamp(min=0)
        log_excess = torch.log1p(excess)
        # Not x - sign(x) (excess - log_excess): that cancels to 0 for huge x.
        z = torch.where(excess > 0, x.sign() * (self.bound + log_excess), x)
        return z, -log_excess.sum(-1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # Past MAX_TAIL units out, exp saturates (as in PiecewiseLinear).
        excess = (z.abs() - self.bound).clamp(min=0, max=PiecewiseLinear.MAX_TAIL)
        x = torch.where(excess > 0, z.sign() * (self.bound + torch.expm1(excess)), z)
        return x, excess.sum(-1)


class Permutation(Transform):
    """Reorder features; volume preserving."""

    perm: Tensor
    inv_perm: Tensor

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        check_permutation(perm, len(perm), "Permutation perm")
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


# The stepwise solve of an autoregressive inverse saves arithmetic but runs D
# rounds of small operations. One CPU thread, affine MADE layers, stepwise vs
# D whole passes per layer: it is faster once a whole pass over the batch is
# this many multiply-adds (rows times weights; 10 features and (64, 64) hidden
# units: 0.72 vs 0.56 ms at 100 rows, 1.3 vs 2.0 ms at 1,000; 20 features and
# (128, 128): 1.4 vs 1.7 ms at 100 rows, 2.9 vs 10 ms at 1,000), and under
# autograd (IAF training) from this many features (batch 256: 10 features
# 2.8 ms either way, 20 features with (128, 128) 5.9 vs 10.4 ms).
_STEPWISE_MIN_WORK = 2**21
_STEPWISE_MIN_FEATURES_WITH_GRAD = 16


def _compiling() -> bool:
    # torch.compile traces the fixed-point iteration into one static graph;
    # the stepwise solve's cached plan would break it.
    check = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(check()) if check is not None else bool(torch._dynamo.is_compiling())


class MaskedAutoregressive(Transform):
    """Autoregressive layer: coordinate ``i`` is transformed with parameters
    computed by a MADE from the coordinates before it in ``order`` (default:
    ``0 .. i-1``; Papamakarios et al. 2017).

    ``forward`` (density direction) is one network pass; ``inverse``
    (sampling) solves the coordinates in at most ``D`` sequential steps,
    which together cost about one pass
    (:meth:`~skflow.engine.nn.MADE.autoregress`); for small batches, under
    ``torch.compile``, and under autograd with few features, ``D`` whole
    passes, which are fewer and larger operations, are faster.
    """

    def __init__(
        self,
        n_features: int,
        transformer: ElementwiseTransformer,
        hidden_units: Sequence[int],
        order: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.made = MADE(n_features, transformer.n_params, hidden_units, order=order)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = self.transformer.forward(x, self.made(x))
        return z, ladj.sum(-1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        rows = z.numel() // max(z.shape[-1], 1)
        stepwise = (
            rows * self.made.n_weights >= _STEPWISE_MIN_WORK
            and (not torch.is_grad_enabled() or z.shape[-1] >= _STEPWISE_MIN_FEATURES_WITH_GRAD)
            and not _compiling()
        )
        if not stepwise:
            # After pass k the first k coordinates (in the MADE's order) are
            # exact, so D passes suffice.
            x = torch.zeros_like(z)
            for _ in range(z.shape[-1]):
                x, ladj = self.transformer.inverse(z, self.made(x))
            return x, ladj.sum(-1)

        def solve(features: Tensor, params: Tensor) -> Tensor:
            return self.transformer.inverse(z.index_select(-1, features), params)[0]

        x, ladj = self.transformer.inverse(z, self.made.autoregress(solve, z))
        return x, ladj.sum(-1)


def _as_slice(idx: Tensor) -> slice | None:
    """``idx`` as a slice when its values are evenly spaced and increasing."""
    values = idx.tolist()
    if not values:
        return None
    step = values[1] - values[0] if len(values) > 1 else 1
    if step < 1 or values != list(range(values[0], values[-1] + 1, step)):
        return None
    return slice(values[0], values[-1] + 1, step)


class Coupling(Transform):
    """Coupling layer (Dinh et al. 2014, 2016): coordinates where ``mask`` is
    True pass unchanged and condition the transform of the others.

    Both directions take one network pass. The conditioner is ``net`` when
    given (it must map the conditioning coordinates to ``n_params`` values
    per transformed coordinate, e.g. a convolutional net for images), else an
    MLP with ``hidden_units``.
    """

    idx_cond: Tensor
    idx_trans: Tensor

    def __init__(
        self,
        mask: Tensor,
        transformer: ElementwiseTransformer,
        hidden_units: Sequence[int] = (),
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        mask = mask.bool()
        self.register_buffer("idx_cond", torch.nonzero(mask).flatten())
        self.register_buffer("idx_trans", torch.nonzero(~mask).flatten())
        self._derive_views()
        self.transformer = transformer
        self.n_trans = n_trans = len(self.idx_trans)
        self.n_params = transformer.n_params
        if net is None:
            net = MLP(len(self.idx_cond), n_trans * self.n_params, hidden_units)
        self.net = net

    def _derive_views(self) -> None:
        # Evenly spaced coordinates (alternating or half masks) are read and
        # written through strided views: 25% cheaper per layer than indexing
        # with the index tensors, forward and backward.
        self._cond_cols = _as_slice(self.idx_cond)
        self._trans_cols = _as_slice(self.idx_trans)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        # The loaded index buffers define the layer, not the views derived
        # from the mask it was built with.
        self._derive_views()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._derive_views()  # (pickles of skflow 0.1.0 predate the views)

    def _couple(self, x: Tensor, forward: bool) -> tuple[Tensor, Tensor]:
        cond_cols = self.idx_cond if self._cond_cols is None else self._cond_cols
        trans_cols = self.idx_trans if self._trans_cols is None else self._trans_cols
        params = self.net(x[:, cond_cols]).view(x.shape[0], self.n_trans, self.n_params)
        step = self.transformer.forward if forward else self.transformer.inverse
        y, ladj = step(x[:, trans_cols], params)
        if functorch_active():
            # (vmap over stacked parameters batches y but not x: no in-place write.)
            return x.index_copy(1, self.idx_trans, y), ladj.sum(-1)
        out = x.clone()
        out[:, trans_cols] = y
        return out, ladj.sum(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, forward=True)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(z, forward=False)


class AdditiveTransformer:
    """``z = x + t``: volume preserving (NICE's additive coupling, Dinh et al. 2014)."""

    n_params = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z - params[..., 0], torch.zeros_like(z)


class SigmoidAffineTransformer:
    """Glow's coupling map ``z = (x + t) * sigmoid(s + 2)`` (Kingma & Dhariwal 2018).

    The scale lies in ``(0, 1)``: the data -> latent direction only
    contracts, so a row far from the training data cannot be blown up by
    compounding scales (an exp scale sent one held-out uci_concrete row to
    -15,000 nats); volume grows through ActNorm and the linear mixing.
    """

    n_params = 2

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        return shift, nn.functional.logsigmoid(raw + 2.0)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return (x + shift) * torch.exp(log_scale), log_scale

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return z * torch.exp(-log_scale) - shift, -log_scale


def _by_channel(x: Tensor, n_channels: int) -> Tensor:
    """View flat rows as ``(batch, channels, positions)``: a vector has one
    position per channel, a flattened ``(C, H, W)`` image ``H * W``."""
    # (Not -1 for the positions: an empty batch has no size to infer it from.)
    return x.reshape(x.shape[0], n_channels, x.shape[-1] // n_channels)


class ElementwiseAffine(Transform):
    """Learned per-channel affine map ``z = (x - loc) * exp(-log_scale)``.

    On vectors there is one channel per feature; on flattened ``(C, H, W)``
    images one ``loc``/``log_scale`` per channel is shared by the ``H * W``
    positions (log|det| counts each position). Starts as the identity; NICE's
    final diagonal scaling layer.
    """

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(n_channels, 1))
        self.log_scale = nn.Parameter(torch.zeros(n_channels, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = _by_channel(x, self.loc.shape[0])
        z = (h - self.loc) * torch.exp(-self.log_scale)
        return z.flatten(1), (-h.shape[2] * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h = _by_channel(z, self.loc.shape[0])
        x = h * torch.exp(self.log_scale) + self.loc
        return x.flatten(1), (h.shape[2] * self.log_scale.sum()).expand(z.shape[0])


class ActNorm(ElementwiseAffine):
    """Activation normalization (Kingma & Dhariwal 2018, arXiv:1807.03039).

    An :class:`ElementwiseAffine` whose ``loc`` and ``log_scale`` are set from
    the first batch it sees in training mode, so that this batch leaves the
    layer with zero mean and unit variance per channel; afterwards both are
    ordinary parameters. The ``initialized`` buffer is part of the
    ``state_dict``, so a reloaded layer is not initialized again. Before
    initialization (e.g. scoring an untrained flow) it is the affine map its
    current parameters define, a valid bijection like any other.
    """

    # torch 2.13's compiler crashed the process on Glow's ActNorm + LU stack.
    compilable = False

    initialized: Tensor

    def __init__(self, n_channels: int) -> None:
        super().__init__(n_channels)
        self.register_buffer("initialized", torch.tensor(False))
        # A host-side copy of ``initialized`` once it is True: reading the
        # buffer at every training step would sync with a GPU each time.
        self._known_initialized = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # (getattr: layers pickled before the flag existed lack it.)
        # (An empty batch has no statistics: it would set loc to NaN for good.)
        if self.training and x.shape[0] and not getattr(self, "_known_initialized", False):
            if not bool(self.initialized):
                self._initialize(x)
            self._known_initialized = True
        return super().forward(x)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # read the loaded buffer again

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        h = _by_channel(x, self.loc.shape[0]).transpose(0, 1).flatten(1)
        std = h.std(dim=1, correction=0, keepdim=True)
        self.loc.copy_(h.mean(dim=1, keepdim=True))
        # A constant channel has no spread to normalize by; keep its scale.
        self.log_scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).log())
        self.initialized.fill_(True)


class LULinear(Transform):
    """Invertible linear map ``z = W x`` with ``W = P L U`` (Kingma & Dhariwal 2018).

    ``P`` is a fixed permutation, ``L`` unit lower-triangular and ``U`` upper
    triangular with diagonal ``sign * exp(log_diag)`` (fixed signs), so
    ``log|det W| = sum(log_diag)`` costs ``O(D)`` and the inverse is two
    triangular solves. On flattened ``(C, H, W)`` images ``W`` mixes the
    channels at every position: Glow's invertible 1x1 convolution, with
    ``log|det| = H * W * sum(log_diag)``. Starts at a random rotation, as
    in Glow, or with ``rotation=False`` at the identity.
    """

    compilable = False  # see ActNorm

    perm: Tensor
    sign: Tensor

    def __init__(self, n_channels: int, rotation: bool = True) -> None:
        super().__init__()
        start = torch.randn(n_channels, n_channels) if rotation else torch.eye(n_channels)
        perm, lower, upper = torch.linalg.lu(torch.linalg.qr(start).Q)
        diag = upper.diagonal()
        self.register_buffer("perm", perm)
        self.register_buffer("sign", diag.sign())
        # Full square parameters; only the strict triangles are used.
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_diag = nn.Parameter(diag.abs().log())

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(len(self.sign), dtype=self.sign.dtype, device=self.sign.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_diag.exp())
        return lower, upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = _by_channel(x, len(self.sign))
        lower, upper = self._factors()
        z = self.perm @ (lower @ (upper @ h))
        return z.flatten(1), (h.shape[2] * self.log_diag.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h = _by_channel(z, len(self.sign))
        lower, upper = self._factors()
        h = torch.linalg.solve_triangular(lower, self.perm.T @ h, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, h, upper=True)
        return x.flatten(1), (-h.shape[2] * self.log_diag.sum()).expand(z.shape[0])


class BatchNormFlow(Transform):
    """Batch normalization as a bijection (Dinh et al. 2016, arXiv:1605.08803;
    Papamakarios et al. 2017): ``z = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta``.

    In training mode ``m`` and ``v`` are the mean and (biased) variance of the
    current batch, gradients flow through them, and the running averages are
    updated (``momentum``); a one-row batch has no variance and uses the
    running averages. In eval mode (scoring, sampling) they are the running
    averages, so the layer is a fixed elementwise affine map and its forward,
    inverse and log-det are exact. In training mode the reported log-det is
    that of each row's map with the batch statistics held fixed, as in the
    papers: the map of the whole batch, with the statistics as functions of
    it, is not invertible (it forgets the batch's mean and spread).
    ``inverse`` always uses the running averages: a latent row has no batch.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, n_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(n_features))
        self.beta = nn.Parameter(torch.zeros(n_features))
        self.register_buffer("running_mean", torch.zeros(n_features))
        self.register_buffer("running_var", torch.ones(n_features))

    def _log_scale(self, var: Tensor) -> Tensor:
        return self.log_gamma - 0.5 * torch.log(var + self.eps)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and x.shape[0] > 1:
            mean, var = x.mean(0), x.var(0, correction=0)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self._log_scale(var)
        z = (x - mean) * torch.exp(log_scale) + self.beta
        return z, log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_scale = self._log_scale(self.running_var)
        x = (z - self.beta) * torch.exp(-log_scale) + self.running_mean
        return x, (-log_scale.sum()).expand(z.shape[0])


def batch_normed(layer: Transform, n_features: int, enabled: bool) -> Transform:
    """``layer`` followed by a ``BatchNormFlow`` when ``enabled`` (the
    ``batch_norm`` option of the maf, realnvp and nice kinds)."""
    if not isinstance(enabled, (bool, np.bool_)):
        raise ValueError(f"batch_norm must be True or False, got {enabled!r}.")
    enabled = bool(enabled)
    return Compose(layer, BatchNormFlow(n_features)) if enabled else layer


class Split(Transform):
    """Multi-scale factoring out (Dinh et al. 2016): ``transform`` acts on the
    first ``n_keep`` features only; the others leave the flow here unchanged
    and go straight to the latent space. The base distribution is an
    independent ``N(0, I)`` over all dimensions, so this is exact: the
    factored-out coordinates are modeled as standard normal at this scale.
    """

    def __init__(self, transform: Transform, n_keep: int) -> None:
        super().__init__()
        self.transform = transform
        self.n_keep = n_keep

    def _on_kept(
        self, x: Tensor, step: Callable[[Tensor], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        y, ladj = step(x[:, : self.n_keep])
        return torch.cat([y, x[:, self.n_keep :]], dim=1), ladj

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._on_kept(x, self.transform.forward)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._on_kept(z, self.transform.inverse)
