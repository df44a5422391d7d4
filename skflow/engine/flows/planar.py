"""Planar flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing
Flows", arXiv:1505.05770).

A planar layer is ``f(x) = x + u_hat * tanh(w . x + b)``: a push along the
direction ``u_hat`` by an amount that depends on one projection ``w . x``,
i.e. a rank-one change of the identity. Its log-determinant is closed form,
``log|1 + tanh'(w . x + b) u_hat . w|``, and invertibility holds when
``u_hat . w >= -1``; ``u_hat`` is a reparametrization of a free ``u`` that
enforces it strictly.

Here the layers run in the data -> latent direction, so densities are exact
and cost one pass. Sampling needs the inverse, which has no closed form but
reduces to a monotone scalar equation per layer and row (see
``solve_planar``), solved to machine precision by bracketed Newton.

Planar flows were designed for variational posteriors, not density
estimation: each layer bends the space along a single hyperplane, so a
planar flow typically needs many layers (tens) and still trails MAF or NSF
on tabular data. They have no conditioner network, so ``hidden_units`` is
ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from skflow.engine.transforms import Compose, Transform, functorch_active

# u_hat . w = m(w . u) with m(a) = MIN_SLOPE - 1 + softplus(a + _SHIFT), which
# maps R onto (MIN_SLOPE - 1, inf) with m(0) = 0: u_hat = u whenever w . u = 0,
# so u = 0 makes the layer the identity. The floor MIN_SLOPE (rather than the
# paper's -1) survives rounding: softplus underflows to 0 for w . u << 0, and
# a derivative of exactly 0 would mean -inf log-densities and no inverse.
MIN_SLOPE = 1e-3
_SHIFT = math.log(math.expm1(1 - MIN_SLOPE))
MAX_NEWTON_ITER = 200


def solve_planar(target: Tensor, c: Tensor, b: Tensor) -> Tensor:
    """Solve ``alpha + c * tanh(alpha + b) = target`` elementwise, for ``c > -1``.

    The left side is strictly increasing in ``alpha`` and within ``|c|`` of
    ``alpha``, so the root lies in ``[target - |c|, target + |c|]``. Newton
    steps are taken inside that bracket and replaced by bisection whenever
    they leave it or fail to halve the previous step, which guarantees
    convergence; iteration stops once every root is known to a few ulps of
    ``1 + |target| + |c|``. Raises ``RuntimeError`` rather than returning an
    unconverged root. Under torch.func transforms (``vmap``), which cannot
    branch on values, all ``MAX_NEWTON_ITER`` iterations run unchecked
    (bisection alone converges in fewer).
    """
    traced = functorch_active()
    c = c.expand_as(target)
    lo, hi = target - c.abs(), target + c.abs()
    tol = 8 * torch.finfo(target.dtype).eps * (1 + target.abs() + c.abs())
    alpha = target.clone()
    last_step = hi - lo
    for _ in range(MAX_NEWTON_ITER):
        th = torch.tanh(alpha + b)
        g = alpha + c * th - target
        dg = 1 + c * (1 - th.square())
        lo = torch.where(g < 0, alpha, lo)
        hi = torch.where(g > 0, alpha, hi)
        newton = g / dg
        bisect = (
            (alpha - newton <= lo) | (alpha - newton >= hi) | (2 * newton.abs() > last_step.abs())
        )
        step = torch.where(bisect, alpha - (lo + hi) / 2, newton)
        alpha = alpha - step
        last_step = step
        if not traced and bool(((step.abs() <= tol) | (hi - lo <= tol) | (g == 0)).all()):
            return alpha
    if traced:
        return alpha
    raise RuntimeError(
        f"Planar inverse did not converge in {MAX_NEWTON_ITER} iterations; "
        "the layer parameters are probably non-finite."
    )


class Planar(Transform):
    """One planar layer ``z = x + u_hat * tanh(w . x + b)`` (data -> latent)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.zeros(n_features))
        self.w = nn.Parameter(torch.randn(n_features) / math.sqrt(n_features))
        self.b = nn.Parameter(torch.zeros(()))

    def _u_hat(self) -> tuple[Tensor, Tensor]:
        """``u_hat`` and ``u_hat . w = m(w . u) >= MIN_SLOPE - 1``.

        The dot product is returned from its formula, not recomputed, so the
        log-determinant and the inverse see the guaranteed bound exactly.
        """
        wu = self.w @ self.u
        uw = F.softplus(wu + _SHIFT) + (MIN_SLOPE - 1)
        # With w = 0, uw = m(0) = 0 = w . u already: the clamp only avoids 0 / 0.
        w_sq = self.w.square().sum().clamp_min(torch.finfo(self.w.dtype).tiny)
        return self.u + (uw - wu) * self.w / w_sq, uw

    @staticmethod
    def _log_slope(pre: Tensor, uw: Tensor) -> Tensor:
        return torch.log1p(uw * (1 - torch.tanh(pre).square()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u_hat, uw = self._u_hat()
        pre = x @ self.w + self.b
        return x + torch.tanh(pre)[:, None] * u_hat, self._log_slope(pre, uw)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        u_hat, uw = self._u_hat()
        target = z @ self.w
        with torch.no_grad():
            root = solve_planar(target, uw, self.b)
        # One Newton step from the (detached) root is exact to rounding and
        # gives alpha the implicit-function gradient w.r.t. z and the parameters.
        th = torch.tanh(root + self.b)
        alpha = root - (root + uw * th - target) / (1 + uw * (1 - th.square()))
        pre = alpha + self.b
        return z - torch.tanh(pre)[:, None] * u_hat, -self._log_slope(pre, uw)


def build_planar(n_features: int, *, n_layers: int, hidden_units: Sequence[int] = ()) -> Transform:
    """Stack of ``n_layers`` planar layers (``hidden_units`` is ignored: no conditioner)."""
    return Compose(*(Planar(n_features) for _ in range(n_layers)))
