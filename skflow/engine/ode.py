"""Vector fields and ODE right-hand sides for continuous normalizing flows.

A continuous flow moves a point by ``dx/dt = f(x, t)``; the log-density along
the trajectory changes by ``d log p(x(t))/dt = -tr(df/dx)`` (instantaneous
change of variables, Chen et al. 2018, arXiv:1806.07366). :class:`Dynamics`
integrates the divergence ``tr(df/dx)`` next to ``x``, exactly (one
vector-Jacobian product per dimension, batched with ``is_grads_batched``) or
by Hutchinson's estimator ``E[eps^T (df/dx) eps]`` with Rademacher or Gaussian
probes (FFJORD, arXiv:1810.01367), and optionally the two regularizers of
Finlay et al. 2020 (arXiv:2002.02798): kinetic energy ``|f|^2`` and the
squared Frobenius norm of ``df/dx``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from skflow.engine.rng import draw

# Rows per exact assignment in :func:`ot_pairing`: the Hungarian algorithm
# costs O(rows^3) (2.3 ms for 256 rows on one CPU core, 13 ms for 512), so
# larger batches are paired block by block.
OT_BLOCK = 256


class SolverUnderflow(FloatingPointError):
    """An adaptive ODE solve needed a step below the float resolution: the
    vector field blew up. Training treats it as divergence."""


@contextmanager
def underflow_as_error() -> Iterator[None]:
    """Turn torchdiffeq's ``AssertionError("underflow in dt ...")`` (raised
    by a forward solve, or by an adjoint's solve inside ``backward``) into
    :class:`SolverUnderflow`, which says what happened."""
    try:
        yield
    except AssertionError as exc:
        if "underflow in dt" not in str(exc):
            raise
        raise SolverUnderflow(
            "the adaptive ODE solver's step size underflowed: the continuous flow's vector "
            "field has blown up (a diverged fit), or rtol/atol ask for more precision than "
            "the dtype holds, so no density can be computed. Refit with a smaller "
            "learning_rate or looser tolerances (a fixed-step solver never underflows, but "
            "its log-densities are only as accurate as its steps)."
        ) from None


class TimeMLP(nn.Module):
    """Time-conditioned MLP ``f(x, t)``: ``t`` is appended to the input of
    every layer (FFJORD's "concat" layers), so each layer can bend with time.

    Smooth activations (SiLU) keep ``f`` differentiable, which adaptive ODE
    solvers and the divergence (a derivative of ``f``) both need. The output
    layer starts at zero: the untrained flow is the identity.
    """

    def __init__(self, n_features: int, hidden_units: Sequence[int]) -> None:
        super().__init__()
        widths = [n_features, *hidden_units]
        self.hidden = nn.ModuleList(
            nn.Linear(w_in + 1, w_out) for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out = nn.Linear(widths[-1] + 1, n_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.activation = nn.SiLU()

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """``t`` is a scalar (one time for the batch) or of shape ``(batch, 1)``."""
        tt = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        h = x
        for layer in self.hidden:
            h = self.activation(layer(torch.cat([h, tt], dim=-1)))
        return self.out(torch.cat([h, tt], dim=-1))


def draw_probes(
    n_probes: int,
    like: Tensor,
    kind: str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hutchinson probes of shape ``(n_probes, *like.shape)`` with
    ``E[eps eps^T] = I``: Rademacher (random signs, lower variance) or Gaussian.
    Drawn as :func:`~skflow.engine.rng.draw` does: from ``generator``, else
    the thread's noise generator, else torch's global one."""
    eps = draw((n_probes, *like.shape), like, generator=generator)
    return eps.sign() if kind == "rademacher" else eps


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Float32 sign, exponent and the top 11 mantissa bits: what keys a row.
_KEY_MASK = np.uint64(0xFFFFF000)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele et al. 2014): a bijective mix of
    64-bit words whose outputs pass as independent uniform bits."""
    with np.errstate(over="ignore"):  # (uint64 arithmetic wraps, as intended)
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def keyed_draws(rows: Tensor, n: int, width: int, kind: str, seed: int) -> Tensor:
    """Draws of shape ``(n, len(rows), width)`` -- standard normal
    (``kind="gaussian"``) or random signs (``"rademacher"``) -- that depend
    only on each row's values and ``seed``, not on the other rows or the
    row's position: a row's Hutchinson probes and augmentation noise, and so
    its score, are the same whatever it is scored with. Counter-based: each
    row's key is a SplitMix64 hash of its values, rounded to 11 significant
    bits (relative steps of about 5e-4), so that round-off in the layers in
    front (a whitening matmul adds in another order for another batch size)
    almost never changes it; a signs draw takes
    64 signs from each hashed word, a normal one (Box-Muller) its two
    32-bit halves as uniforms."""
    # (+ 0.0 makes -0.0 and 0.0 one key, as they are one value.)
    values = (rows.detach().cpu().float() + 0.0).numpy()
    bits = np.ascontiguousarray(values).view(np.uint32).astype(np.uint64) & _KEY_MASK
    key = _splitmix64(np.full(bits.shape[0], seed, dtype=np.uint64))
    for column in bits.T:
        key = _splitmix64(key ^ column)
    count = n * width
    if kind == "rademacher":
        counters = _splitmix64(np.arange(1, -(-count // 64) + 1, dtype=np.uint64))
        words = _splitmix64(key[:, None] ^ counters)
        bits01 = np.unpackbits(words.view(np.uint8), axis=1, count=count, bitorder="little")
        out = torch.from_numpy(bits01).to(rows.dtype).mul_(2.0).sub_(1.0)
    else:
        counters = _splitmix64(np.arange(1, count + 1, dtype=np.uint64))
        # Each word's two 32-bit halves -> two uniforms in (0, 1] (normals
        # then reach 6.7 standard deviations: plenty for probes and noise).
        halves = _splitmix64(key[:, None] ^ counters).view(np.uint32).astype(np.float64)
        uniform = torch.from_numpy(halves).add_(1.0).mul_(2.0**-32)
        radius = uniform[:, 0::2].log().mul_(-2.0).sqrt_()
        out = radius.mul_(torch.cos(uniform[:, 1::2] * (2 * math.pi))).to(rows.dtype)
    draws = out.view(bits.shape[0], n, width).transpose(0, 1).contiguous()
    return draws.to(rows.device)


@torch.compiler.disable
def ot_pairing(x0: Tensor, x1: Tensor, group: int) -> Tensor:
    """Minibatch optimal-transport coupling (Tong et al. 2023,
    arXiv:2302.00482; Pooladian et al. 2023, arXiv:2304.14772): the order
    of the rows of ``x0`` (an index tensor) that pairs them, within each
    block of consecutive rows, with the rows of ``x1`` at minimal total
    squared distance (an exact assignment, solved on the CPU). Blocks never
    straddle two ``group``-row groups (one group per draw of a validation
    batch) and hold at most :data:`OT_BLOCK` rows, balanced so that no block
    is a small remainder."""
    group = max(group, 1)  # an empty batch has nothing to pair
    a = x1.detach().cpu().double().numpy()
    b = x0.detach().cpu().double().numpy()
    order = np.empty(len(a), dtype=np.int64)
    for start in range(0, len(a), group):
        rows = np.arange(start, min(start + group, len(a)))
        for block in np.array_split(rows, -(-len(rows) // OT_BLOCK)):
            # |a - b|^2 up to the row term |a|^2, which no assignment changes.
            cost = (b[block] ** 2).sum(1) - 2 * a[block] @ b[block].T
            _, cols = linear_sum_assignment(cost)
            order[block] = block[cols]
    return torch.from_numpy(order).to(x0.device)


class Dynamics(nn.Module):
    """Right-hand side of the augmented ODE solved by a continuous flow.

    The state is ``(x, divergence integral[, kinetic, jacobian])``; the
    derivatives are ``(f, tr(df/dx)[, |f|^2, |df/dx|_F^2])`` per row (the
    regularizers when the state carries them). A state ``(x,)`` gets ``(f,)``
    only: mapping points without their density skips the divergence, which
    costs one backward pass per dimension. ``probes`` (shape ``(n_probes,
    batch, dim)``) give Hutchinson's estimate, None the exact trace.
    ``create_graph`` says whether the solve is differentiated (training,
    autograd Jacobians); otherwise each evaluation builds a local graph for
    the divergence only and returns detached values. A solver calls
    :class:`SolveDynamics`, which binds those two for one solve.
    """

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field

    def forward(
        self,
        t: Tensor,
        state: tuple[Tensor, ...],
        probes: Tensor | None = None,
        create_graph: bool = False,
    ) -> tuple[Tensor, ...]:
        x = state[0]
        if len(state) == 1:  # the state alone: no divergence wanted
            return (self.field(t, x),)
        # The first state (the data) and every state of a detached solve
        # carry no graph; the divergence still needs df/dx. Without grad mode
        # (an adjoint's forward solve) nothing differentiates through this
        # call, and x may be a view made there, which autograd cannot trace.
        if not (x.requires_grad and torch.is_grad_enabled()):
            x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self.field(t, x)
            if probes is None:
                eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
                vectors = eye[:, None, :].expand(x.shape[1], *x.shape)
            else:
                vectors = probes
            # vjp[k] = vectors[k]^T df/dx, all vectors in one batched backward
            # (one at a time under anomaly detection, whose NaN checks cannot
            # run batched: a user hunting NaNs turns it on).
            if torch.is_anomaly_enabled():
                grad = partial(
                    torch.autograd.grad, f, x, create_graph=create_graph, retain_graph=True
                )
                vjp = torch.stack([grad(v)[0] for v in vectors])
            else:
                (vjp,) = torch.autograd.grad(
                    f, x, vectors, create_graph=create_graph, is_grads_batched=True
                )
        if probes is None:
            div = torch.einsum("ibi->b", vjp)
        else:
            div = (vjp * vectors).sum(-1).mean(0)
        derivs: tuple[Tensor, ...] = (f, div)
        if len(state) == 4:
            kinetic = f.square().sum(-1)
            # Exact: sum of squared Jacobian rows; Hutchinson: E|eps^T J|^2 = |J|_F^2.
            row_norms = vjp.square().sum(-1)
            frob = row_norms.sum(0) if probes is None else row_norms.mean(0)
            derivs = (*derivs, kinetic, frob)
        if not create_graph:
            derivs = tuple(d.detach() for d in derivs)
        return derivs


class SolveDynamics(nn.Module):
    """The right-hand side of one ODE solve: a :class:`Dynamics` with this
    solve's ``probes`` and ``create_graph``, counting its evaluations in
    :attr:`nfe`. Made afresh for every solve, so threads that score or sample
    the same flow at once never see each other's probes or counts (and an
    adjoint backward pass reuses the probes of its own forward solve)."""

    def __init__(self, dynamics: Dynamics, probes: Tensor | None, create_graph: bool) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.probes = probes
        self.create_graph = create_graph
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        return self.dynamics(t, state, self.probes, self.create_graph)
