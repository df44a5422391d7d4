"""Monotone rational-quadratic splines with linear tails (Durkan et al. 2019,
"Neural Spline Flows", arXiv:1906.04032).

The spline maps ``[-B, B]`` onto itself through ``K`` bins; each bin is a
ratio of two quadratics, set by the bin's width, height and the derivatives
at its two knots. Outside ``[-B, B]`` the map is the identity, and the
derivative at both boundaries is fixed to 1, so the map is continuously
differentiable on the whole real line: any input, however far out, gets a
finite log-density and finite gradients.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor
from torch.nn import functional as F


def _softmax(raw: Tensor) -> Tensor:
    """Softmax over the (short) last dimension.

    Spelled out because torch's CPU softmax kernel is slow on rows of a few
    bins: 5x slower forward and 2x slower forward + backward than these three
    elementwise ops for 8 bins (torch 2.13). The maximum is a constant shift
    (softmax ignores it), so it needs no gradient.
    """
    e = (raw - raw.detach().amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


def _knots(raw: Tensor, bound: float, min_size: float) -> tuple[Tensor, Tensor]:
    """Knot positions ``(..., K + 1)`` spanning ``[-bound, bound]`` and bin sizes ``(..., K)``,
    each bin at least ``min_size`` of the interval."""
    n_bins = raw.shape[-1]
    sizes = min_size + (1 - min_size * n_bins) * _softmax(raw)
    inner = 2 * bound * torch.cumsum(sizes[..., :-1], dim=-1) - bound
    # End knots are set exactly (not through the cumulative sum) so the
    # spline meets the identity tails without a rounding gap.
    ends = inner.new_full(inner.shape[:-1] + (1,), bound)
    knots = torch.cat([-ends, inner, ends], dim=-1)
    return knots, knots.diff(dim=-1)


def _gather(values: Tensor, idx: Tensor) -> Tensor:
    return values.gather(-1, idx[..., None])[..., 0]


MAX_TAIL_BOUND = 100.0


class RationalQuadraticSplineTransformer:
    """Elementwise monotone rational-quadratic spline on ``[-tail_bound, tail_bound]``
    with identity (linear) tails.

    Per coordinate it takes ``3 * n_bins - 1`` unconstrained parameters:
    ``n_bins`` bin widths and ``n_bins`` heights (softmax-normalized) and the
    derivatives at the ``n_bins - 1`` interior knots (softplus); the two
    boundary derivatives are 1 to match the tails. Zero parameters give the
    identity, so a zero-initialized conditioner starts every layer there.

    Parameters
    ----------
    n_bins : int, default=8
        Number of bins ``K``.
    tail_bound : float, default=3.0
        Half-width ``B`` of the interval the spline acts on (standardized units).
    min_bin_width, min_bin_height, min_derivative : float, default=1e-3
        Lower bounds that keep the map and its inverse well conditioned.
    """

    def __init__(
        self,
        n_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        if not isinstance(n_bins, Integral) or isinstance(n_bins, bool) or n_bins < 2:
            raise ValueError(f"n_bins must be an int of at least 2, got {n_bins!r}.")
        # The spline acts on standardized coordinates: beyond a few dozen
        # standard deviations its bins are wider than the data's whole range,
        # and float32 inverses lose their accuracy (a bound of 1e8 already
        # misses round trips by a standard deviation).
        if not (
            isinstance(tail_bound, Real)
            and not isinstance(tail_bound, bool)
            and 0 < tail_bound <= MAX_TAIL_BOUND
        ):
            raise ValueError(
                f"tail_bound must be a number in (0, {MAX_TAIL_BOUND:g}] (standard deviations of "
                f"the standardized data; 3 or 5 are usual), got {tail_bound!r}."
            )
        if min_bin_width * n_bins >= 1 or min_bin_height * n_bins >= 1:
            top = math.ceil(1 / max(min_bin_width, min_bin_height)) - 1
            raise ValueError(
                f"n_bins={n_bins} bins cannot each hold the minimum width {min_bin_width:g} "
                f"and height {min_bin_height:g}: use at most {top} bins (or smaller minimums)."
            )
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must be in (0, 1), got {min_derivative}.")
        self.n_bins: int = n_bins
        self.tail_bound: float = float(tail_bound)
        self.min_bin_width: float = min_bin_width
        self.min_bin_height: float = min_bin_height
        self.min_derivative: float = min_derivative
        # softplus(0 + shift) + min_derivative == 1: zero parameters give slope 1.
        self._derivative_shift: float = math.log(math.expm1(1 - min_derivative))
        self.n_params: int = 3 * n_bins - 1

    def _spline(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Knots ``x_k``, ``y_k`` (``K + 1``), bin widths and heights (``K``) and
        knot derivatives (``K + 1``)."""
        k = self.n_bins
        xk, widths = _knots(params[..., :k], self.tail_bound, self.min_bin_width)
        yk, heights = _knots(params[..., k : 2 * k], self.tail_bound, self.min_bin_height)
        inner = self.min_derivative + F.softplus(params[..., 2 * k :] + self._derivative_shift)
        ones = inner.new_ones(inner.shape[:-1] + (1,))
        return xk, yk, widths, heights, torch.cat([ones, inner, ones], dim=-1)

    def _bin(self, knots: Tensor, v: Tensor) -> Tensor:
        # Index of the bin holding v (v already inside [-B, B]); interior knots only,
        # so the result is in 0 .. K-1 even at the boundaries.
        return (v[..., None] >= knots[..., 1:-1]).sum(-1)

    @staticmethod
    def _log_slope(theta: Tensor, slope: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        """log dy/dx inside a bin at relative position ``theta`` (eq. 5 of the paper)."""
        t1 = theta * (1 - theta)
        denom = slope + (d0 + d1 - 2 * slope) * t1
        num = slope.square() * (d1 * theta.square() + 2 * slope * t1 + d0 * (1 - theta).square())
        return num.log() - 2 * denom.log()

    def _per_bin(self, params: Tensor, v: Tensor, use_y_knots: bool) -> tuple[Tensor, ...]:
        xk, yk, widths, heights, derivs = self._spline(params)
        idx = self._bin(yk if use_y_knots else xk, v)
        w, h = _gather(widths, idx), _gather(heights, idx)
        d0, d1 = _gather(derivs, idx), _gather(derivs[..., 1:], idx)
        return _gather(xk, idx), _gather(yk, idx), w, h, d0, d1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        bound = self.tail_bound
        inside = (x >= -bound) & (x <= bound)
        # The spline branch is evaluated at a clamped copy, so far-out inputs
        # never produce inf/NaN there (torch.where would leak them into gradients).
        xc = x.clamp(-bound, bound)
        x0, y0, w, h, d0, d1 = self._per_bin(params, xc, use_y_knots=False)
        theta = ((xc - x0) / w).clamp(0, 1)
        slope = h / w
        t1 = theta * (1 - theta)
        y = y0 + h * (slope * theta.square() + d0 * t1) / (slope + (d0 + d1 - 2 * slope) * t1)
        log_slope = self._log_slope(theta, slope, d0, d1)
        return torch.where(inside, y, x), torch.where(inside, log_slope, torch.zeros_like(x))

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        bound = self.tail_bound
        inside = (z >= -bound) & (z <= bound)
        zc = z.clamp(-bound, bound)
        x0, y0, w, h, d0, d1 = self._per_bin(params, zc, use_y_knots=True)
        slope = h / w
        # theta solves a*theta^2 + b*theta + c = 0 with its root in [0, 1]; the
        # form 2c / (-b - sqrt(b^2 - 4ac)) avoids the cancellation of the
        # textbook formula when a is small (nearly linear bins).
        dy = zc - y0
        curv = d0 + d1 - 2 * slope
        a = h * (slope - d0) + dy * curv
        b = h * d0 - dy * curv
        c = -slope * dy
        disc = (b.square() - 4 * a * c).clamp_min(0)
        theta = (2 * c / (-b - disc.sqrt())).clamp(0, 1)
        x = x0 + theta * w
        log_slope = -self._log_slope(theta, slope, d0, d1)
        return torch.where(inside, x, z), torch.where(inside, log_slope, torch.zeros_like(z))
