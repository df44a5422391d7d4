"""Continuous normalizing flows: FFJORD and flow matching.

The flow is the solution of an ODE ``dx/dt = f(x, t)`` on ``t in [0, 1]``,
with the standard normal at ``t = 0`` and the data at ``t = 1``; ``f`` is a
time-conditioned MLP (``skflow.engine.ode.TimeMLP``). The log-density
is the base log-density plus the integral of the divergence ``tr(df/dx)``
along the trajectory (Chen et al. 2018, arXiv:1806.07366). ODEs are solved by
torchdiffeq (adaptive ``dopri5`` by default, fixed-step solvers, and the
adjoint method to train in constant memory).

Two training methods:

* ``"mle"`` -- FFJORD (Grathwohl et al. 2018, arXiv:1810.01367): maximum
  likelihood through the ODE solve, with Hutchinson's trace estimator during
  training, optionally regularized by the kinetic energy and Jacobian
  Frobenius norm of "How to train your neural ODE" (Finlay et al. 2020,
  arXiv:2002.02798). Every training step solves the ODE (tens to hundreds of
  network evaluations forward, as many backward), so it is slow.
* ``"flow_matching"`` -- conditional flow matching (Lipman et al. 2022,
  arXiv:2210.02747) with the linear (optimal-transport) path
  ``x_t = (1 - (1 - sigma_min) t) x_0 + t x_1`` from noise ``x_0`` to data
  ``x_1``: regress ``f(x_t, t)`` on ``x_1 - (1 - sigma_min) x_0``. Training
  is simulation-free -- one network evaluation per row, no ODE -- and the
  model is still a CNF, so its exact log-likelihood is computed by the same
  ODE at scoring time. This is the default: it reaches a better held-out
  log-likelihood per second of training (``benchmarks/cnf.py``). By default
  (``coupling="ot"``) each minibatch pairs noise and data rows by an exact
  optimal-transport assignment (Tong et al. 2023, arXiv:2302.00482) instead
  of at random: the paths cross less, so the regression target is less noisy
  and the learned field straighter. The data reach the ODE already
  Gaussianized and whitened, so the paired noise lies close to its data row
  and the field stays small. On ``benchmarks/cnf.py`` this raised the held-out
  log-likelihood at every time budget but one (wine's shortest), despite
  doubling the cost of a step, and cut the scoring solve from 32-44 to 26-32
  evaluations. ``"independent"`` restores random pairs, with no per-step CPU
  work (the pairing moves each minibatch to the CPU: a host sync per step on
  a GPU).

Scoring (eval mode) uses the exact trace -- ``D`` vector-Jacobian products
batched into one backward pass -- up to ``exact_max_dim`` dimensions, and
above that Hutchinson's estimate with ``score_probes`` probes. The probes
(and the augmentation noise below) are drawn from each row's own values
(rounded to about 5e-4 relative, so round-off in the layers in front almost
never changes them) and a seed fixed when the flow is built, so repeated
scores are identical and a row's estimate does not depend on the rows
scored beside it. An adaptive
solver picks one step sequence for the whole batch, so a row's score can
still move within the tolerance with the rows scored beside it; the
fixed-step solvers make scores batch-invariant.

``n_layers`` CNF blocks split the time interval into equal slices, each with
its own vector-field MLP of widths ``hidden_units`` (FFJORD's stacked
blocks); one block is often enough, and every block adds one ODE solve.

Augmentation (Dupont et al. 2019, arXiv:1904.01681) appends ``augment_dims``
coordinates to the state so trajectories can pass each other. Zero padding,
as in the paper, puts the data on a subspace where a flow's joint density is
degenerate, which gives no valid likelihood for ``x``; here the extra
coordinates are instead padded with independent standard normal noise ``a``
(variational augmentation, Huang et al. 2020, arXiv:2002.07101). The flow is
exact for the joint density ``p(x, a)``; ``log p(x)`` is estimated by
importance sampling over ``augment_samples`` draws of ``a`` (a lower bound
in expectation, tight as the draws grow and exact when the model makes ``a``
independent of ``x``), and ``mle`` trains on the one-draw bound. Without
augmentation (the default) every reported log-density is exact up to the ODE
tolerances.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from skflow.engine.distributions import std_normal_log_prob
from skflow.engine.ode import (
    Dynamics,
    SolveDynamics,
    TimeMLP,
    draw_probes,
    keyed_draws,
    ot_pairing,
    underflow_as_error,
)
from skflow.engine.rng import draw
from skflow.engine.transforms import Transform, log_det_wanted, refuse_functorch


def _refuse_functorch() -> None:
    refuse_functorch("kind='cnf'", "its adaptive ODE solve branches on tensor values")


ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
FIXED_SOLVERS = ("euler", "midpoint", "heun3", "rk4")
TRAININGS = ("mle", "flow_matching")
COUPLINGS = ("ot", "independent")
TRACES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
# Flow-matching validation loss: draws of (time, noise) per validation row,
# fixed by the flow's seed so epochs compare on the same draws.
_FM_VALIDATION_DRAWS = 8
# Flow matching validates and keeps an exponential moving average of its
# weights (decay per step): the raw weights' noisy regression steps stalled
# early stopping after ~7 s, 0.47 / 0.56 nats per row lower on uci_airfoil /
# uci_concrete (uci_wine 0.03 higher) than 24-s fits with the average
# (benchmarks/cnf.py settings, optimal-transport pairing).
FM_EMA_DECAY = 0.999
# Memoized pairings of fixed validation draws, one per validation chunk (of
# 4,096 rows on a CPU); beyond this many the oldest are dropped.
_MAX_FIXED_PAIRINGS = 64
# Above this rtol or atol, an adaptive solve's error is large enough for
# maximum-likelihood training to exploit (rtol=atol=0.1 reported -1.51 nats
# per row where a 1e-6 solve of the same weights gives -2.33).
LOOSE_TOLERANCE = 1e-3
# Rows per ODE solve when nothing is differentiated (scoring, sampling).
_SOLVE_ROWS = 4096


def _is_number(value: object) -> bool:
    """A real number (numpy's included), not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_options(
    training: str,
    solver: str,
    rtol: float,
    atol: float,
    n_steps: int,
    adjoint: bool,
    trace: str,
    probe: str,
    n_probes: int,
    score_probes: int,
    exact_max_dim: int,
    kinetic_energy: float,
    jacobian_norm: float,
    sigma_min: float,
    coupling: str,
    augment_dims: int,
    augment_samples: int,
    ema_decay: float | None,
) -> None:
    """Raise ValueError, saying what to change, for an invalid option."""
    # (A string such as "no" would silently count as True.)
    if not (
        isinstance(adjoint, (bool, np.bool_))
        or (isinstance(adjoint, Integral) and adjoint in (0, 1))
    ):
        raise ValueError(f"kind='cnf' option adjoint must be True or False, got {adjoint!r}.")
    choices = {
        "training": (training, TRAININGS),
        "coupling": (coupling, COUPLINGS),
        "trace": (trace, TRACES),
        "probe": (probe, PROBES),
        "solver": (solver, ADAPTIVE_SOLVERS + FIXED_SOLVERS),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"kind='cnf' option {name}={value!r} is not one of {list(allowed)}.")
    for name, tolerance in {"rtol": rtol, "atol": atol}.items():
        if not (_is_number(tolerance) and 0 < tolerance <= 1):
            raise ValueError(
                f"kind='cnf' option {name} must be a number in (0, 1], got {tolerance!r}."
            )
    positive = {
        "n_steps": n_steps,
        "n_probes": n_probes,
        "score_probes": score_probes,
        "augment_samples": augment_samples,
    }
    non_negative = {"exact_max_dim": exact_max_dim, "augment_dims": augment_dims}
    for name, count in {**positive, **non_negative}.items():
        if not isinstance(count, Integral) or isinstance(count, bool) or count < (name in positive):
            kind = "positive" if name in positive else "non-negative"
            raise ValueError(f"kind='cnf' option {name} must be a {kind} int, got {count!r}.")
    for name, weight in {"kinetic_energy": kinetic_energy, "jacobian_norm": jacobian_norm}.items():
        if not (_is_number(weight) and 0 <= weight < math.inf):
            raise ValueError(f"kind='cnf' option {name} must be finite and >= 0, got {weight!r}.")
        if weight > 0 and training != "mle":
            raise ValueError(
                f"kind='cnf' option {name} regularizes the ODE solved in training='mle'; "
                "flow matching solves none (its straight paths need no such penalty). "
                "Set training='mle' or remove the option."
            )
    if not (_is_number(sigma_min) and 0 <= sigma_min < 1):
        raise ValueError(f"kind='cnf' option sigma_min must be in [0, 1), got {sigma_min!r}.")
    if ema_decay is not None and not (_is_number(ema_decay) and 0 <= ema_decay < 1):
        raise ValueError(
            f"kind='cnf' option ema_decay must be None (auto) or in [0, 1) (0 = no averaging), "
            f"got {ema_decay!r}."
        )


class ContinuousFlow(Transform):
    """A continuous normalizing flow; see the module docstring.

    ``forward`` integrates data (``t = 1``) to latent (``t = 0``) and returns
    ``(z, log|det dz/dx|)``; ``inverse`` integrates the other way. The trace
    is Hutchinson's estimate while training with ``"mle"`` and exact
    otherwise (``trace="auto"``). ``nfe`` reports the number of vector
    field evaluations.

    Options: ``training`` (``"flow_matching"`` or ``"mle"``); ``solver``
    (adaptive: ``dopri5``, ``dopri8``, ``bosh3``, ``adaptive_heun``,
    ``fehlberg2`` with ``rtol``/``atol``; fixed-step: ``euler``,
    ``midpoint``, ``heun3``, ``rk4`` with steps of ``1 / n_steps`` of the unit
    time interval, each of the ``n_layers`` blocks taking at least one over
    its slice of time); ``adjoint`` (backpropagate by solving the adjoint ODE: memory
    independent of the number of steps, more evaluations); ``trace``
    (``"auto"``: Hutchinson when training by ``mle``, exact when scoring up to
    ``exact_max_dim`` dimensions; ``"exact"``; ``"hutchinson"``), ``probe``
    (``"rademacher"`` or ``"gaussian"``), ``n_probes`` per training solve and
    ``score_probes`` per scoring solve; ``kinetic_energy`` and
    ``jacobian_norm`` regularization weights (``mle`` only); ``sigma_min``
    (flow matching path width at the data); ``coupling`` (flow matching
    pairs of noise and data rows: ``"ot"``, an optimal-transport assignment
    within each minibatch, or ``"independent"``); ``augment_dims`` and
    ``augment_samples`` (noise augmentation; see the module docstring);
    ``ema_decay`` (training validates and keeps an exponential moving
    average of the weights with this decay per step; ``None``: 0.999 for
    flow matching, none for ``mle``; 0: no averaging).
    """

    seed: Tensor

    # (Transform's class attribute, read-only here: it follows the training option.)
    @property
    def compilable(self) -> bool:  # type: ignore[override]
        # Flow matching trains on one network pass; FFJORD's adaptive ODE
        # solve is data-dependent control flow that compiling cannot fuse.
        return self.training_method == "flow_matching"

    def __init__(
        self,
        n_features: int,
        *,
        n_blocks: int,
        hidden_units: Sequence[int],
        training: str = "flow_matching",
        solver: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        n_steps: int = 32,
        adjoint: bool = False,
        trace: str = "auto",
        probe: str = "rademacher",
        n_probes: int = 1,
        score_probes: int = 64,
        exact_max_dim: int = 64,
        kinetic_energy: float = 0.0,
        jacobian_norm: float = 0.0,
        sigma_min: float = 0.0,
        coupling: str = "ot",
        augment_dims: int = 0,
        augment_samples: int = 16,
        ema_decay: float | None = None,
    ) -> None:
        _check_options(
            training,
            solver,
            rtol,
            atol,
            n_steps,
            adjoint,
            trace,
            probe,
            n_probes,
            score_probes,
            exact_max_dim,
            kinetic_energy,
            jacobian_norm,
            sigma_min,
            coupling,
            augment_dims,
            augment_samples,
            ema_decay,
        )
        super().__init__()
        self.n_features = n_features
        self.dim = n_features + augment_dims
        self.training_method = training
        self.solver = solver
        self.rtol, self.atol = float(rtol), float(atol)
        self.n_steps = n_steps
        self.adjoint = bool(adjoint)
        self.trace = trace
        self.probe = probe
        self.n_probes, self.score_probes = n_probes, score_probes
        self.exact_max_dim = exact_max_dim
        self.kinetic_energy, self.jacobian_norm = float(kinetic_energy), float(jacobian_norm)
        self.sigma_min = float(sigma_min)
        self.coupling = coupling
        if ema_decay is None:
            ema_decay = FM_EMA_DECAY if training == "flow_matching" else 0.0
        self.ema_decay = float(ema_decay) or None
        self.augment_dims, self.augment_samples = augment_dims, augment_samples
        self.regularize = kinetic_energy > 0 or jacobian_norm > 0
        self.blocks = nn.ModuleList(
            Dynamics(TimeMLP(self.dim, hidden_units)) for _ in range(n_blocks)
        )
        # Seeds the probes and draws of deterministic evaluations; drawn from
        # torch's RNG so the caller's seed fixes it, saved with the weights.
        self.register_buffer("seed", torch.randint(2**31 - 1, ()))
        self._nfe_train = 0
        self._n_train_solves = 0
        self._nfe_last = 0
        self._training_solves: list[SolveDynamics] = []  # see _solve
        # Pairings of the fixed validation draws (see _flow_matching_loss).
        self._fixed_pairings: dict[bytes, Tensor] = {}  # on the CPU, never saved

    # -------------------------------------------------------------- solving
    @property
    def nfe(self) -> dict[str, float]:
        """Vector-field evaluations: ``fit_total`` in training-mode solves
        (0 for flow matching, which solves none; forward solves plus adjoint
        backward solves), ``fit_per_solve`` their mean, and ``last_solve``
        for the most recent forward or inverse call of this layer (summed over
        its chunks of rows; the estimator calls it once per chunk of 4,096
        rows on a CPU, so after ``score_samples`` it counts the last chunk)."""
        total = self._nfe_train + sum(rhs.nfe for rhs in self._training_solves)
        return {
            "fit_total": total,
            "fit_per_solve": total / max(self._n_train_solves, 1),
            "last_solve": self._nfe_last,
        }

    @property
    def min_batch_rows(self) -> int:
        """Flow matching gives block k the rows k, k + K, ... of each batch,
        so a batch of fewer than K rows would leave blocks untrained."""
        return len(self.blocks) if self.training_method == "flow_matching" else 1

    def check_precision(self, dtype: torch.dtype) -> None:
        """Raise ``ValueError`` for solver tolerances that ``dtype`` cannot
        resolve: the adaptive solver would shrink its steps without end
        (rtol=atol=1e-20 never returned; 1e-12 took 36,000 evaluations to
        score 100 float32 rows)."""
        floor = 4 * torch.finfo(dtype).eps
        if self.solver in ADAPTIVE_SOLVERS and min(self.rtol, self.atol) < floor:
            raise ValueError(
                f"kind='cnf' options rtol={self.rtol:g}, atol={self.atol:g} ask for more "
                f"precision than {dtype} holds: use at least {floor:.2g} for both (or "
                "dtype='float64')."
            )

    @property
    def likelihood_bias(self) -> str | None:
        """Why maximum-likelihood training would exploit the solver's error
        (a fixed-step solve or a loose tolerance), or None."""
        if self.training_method != "mle":
            return None
        if self.solver in FIXED_SOLVERS:
            return f"the fixed-step solver {self.solver!r} (n_steps={self.n_steps})"
        if max(self.rtol, self.atol) > LOOSE_TOLERANCE:
            return f"tolerances rtol={self.rtol:g}, atol={self.atol:g}"
        return None

    @property
    def round_trip_tolerance(self) -> float:
        """Expected bound on ``|x - inverse(forward(x))|`` (standardized
        units): solver error, about ``100 * max(rtol, atol)`` for adaptive
        solvers. With augmentation there is none: sampling draws fresh
        augmented coordinates, so forward and inverse do not compose to the
        identity on the data space."""
        if self.augment_dims:
            return math.inf
        if self.solver in FIXED_SOLVERS:
            return 1e-2
        return 100 * max(self.rtol, self.atol)

    def _generator(self) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(int(self.seed))

    def _key(self, salt: int) -> int:
        """A seed for :func:`~skflow.engine.ode.keyed_draws`, one per
        ``salt`` (0: scoring probes, 1: augmentation noise)."""
        return (2 * int(self.seed) + salt) % 2**64

    def _probes(self, x: Tensor) -> Tensor | None:
        """Hutchinson probes for this solve, or None for the exact trace."""
        if self.trace == "exact":
            return None
        if self.training:
            if self.trace == "hutchinson" or self.training_method == "mle":
                return draw_probes(self.n_probes, x, self.probe)
            return None
        if self.trace == "auto" and self.dim <= self.exact_max_dim:
            return None
        # Keyed by each row, not drawn for the batch: a row's estimate does
        # not depend on the rows scored beside it.
        return keyed_draws(x, self.score_probes, x.shape[1], self.probe, self._key(0))

    def _solve(self, x: Tensor, to_data: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Integrate ``x`` through every block; returns the end point, the
        log-determinant of the map and the regularization integral per row."""
        if x.shape[0] == 0:  # (the solver's error norm fails on an empty state)
            self._nfe_last = 0
            return x.clone(), x.new_zeros(0), x.new_zeros(0)
        if torch.is_inference_mode_enabled():
            # The divergence needs autograd, which inference mode forbids.
            with torch.inference_mode(False), torch.no_grad():
                return self._solve(x.clone(), to_data)
        if torch.is_grad_enabled() or x.shape[0] <= _SOLVE_ROWS:
            z, ladj, reg, solves = self._integrate(x, to_data)
        else:
            # The exact trace holds dim x rows x width activations per
            # evaluation: bound the memory of large scoring calls.
            parts = [self._integrate(rows, to_data) for rows in x.split(_SOLVE_ROWS)]
            z, ladj, reg = (torch.cat([cast(Tensor, part[i]) for part in parts]) for i in range(3))
            solves = [rhs for part in parts for rhs in part[3]]
        self._nfe_last = sum(rhs.nfe for rhs in solves)
        if self.training:
            # An adjoint's backward pass evaluates these right-hand sides
            # again later, in the training step: count them at the next solve.
            self._nfe_train += sum(rhs.nfe for rhs in self._training_solves)
            self._training_solves = solves
            self._n_train_solves += 1
        return z, ladj, reg

    def _integrate(
        self, x: Tensor, to_data: bool
    ) -> tuple[Tensor, Tensor, Tensor, list[SolveDynamics]]:
        """:meth:`_solve` in one piece, with the right-hand side of each
        block's solve (their ``nfe`` counts the evaluations)."""
        create_graph = torch.is_grad_enabled()
        log_det = log_det_wanted()
        probes = self._probes(x) if log_det else None
        regularize = self.regularize and self.training and log_det
        state: tuple[Tensor, ...] = (x, x.new_zeros(x.shape[0])) if log_det else (x,)
        if regularize:
            state = (*state, x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0]))
        knots = torch.linspace(0.0, 1.0, len(self.blocks) + 1, dtype=x.dtype, device=x.device)
        order = range(len(self.blocks)) if to_data else reversed(range(len(self.blocks)))
        options: dict = {"step_size": 1.0 / self.n_steps} if self.solver in FIXED_SOLVERS else {}
        if self.solver in ADAPTIVE_SOLVERS and x.device.type == "mps":
            # torchdiffeq keeps adaptive step sizes in float64, which MPS lacks.
            options["dtype"] = torch.float32
        solves = []
        for k in order:
            # (ModuleList yields Module: blocks holds Dynamics.)
            rhs = SolveDynamics(cast(Dynamics, self.blocks[k]), probes, create_graph)
            span = knots[k : k + 2] if to_data else knots[k : k + 2].flip(0)
            kwargs = {"rtol": self.rtol, "atol": self.atol, "method": self.solver}
            with underflow_as_error():
                if self.adjoint and create_graph:
                    kwargs["adjoint_params"] = tuple(self.blocks[k].parameters())
                    ys = odeint_adjoint(rhs, state, span, options=options, **kwargs)
                else:
                    ys = odeint(rhs, state, span, options=options, **kwargs)
            state = tuple(y[-1] for y in ys)
            solves.append(rhs)
        # The divergence integral is the log-det in either direction (from
        # data to latent, time runs backwards); the regularizer integrals
        # pick up a minus sign that way.
        reg = x.new_zeros(x.shape[0])
        if regularize:
            sign = 1.0 if to_data else -1.0
            reg = sign * (self.kinetic_energy * state[2] + self.jacobian_norm * state[3])
        ladj = state[1] if log_det else torch.full_like(reg, math.nan)
        return state[0], ladj, reg, solves

    def _pad(self, x: Tensor, n_draws: int, generator: torch.Generator | None) -> Tensor:
        """Rows of ``x`` repeated ``n_draws`` times with noise augmentation."""
        x = x.repeat(n_draws, 1)
        noise = draw_probes(1, x.new_empty(x.shape[0], self.augment_dims), "gaussian", generator)
        return torch.cat([x, noise[0]], dim=-1)

    # ----------------------------------------------------------- transform
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _refuse_functorch()
        # Adaptive steps shrink like 1/|x|, so beyond 1/eps (8e6 standard
        # deviations in float32, 4e15 in float64) they underflow and one such
        # row would fail its whole batch: those rows skip the solve and get
        # log-density -inf (their true value is below -0.5/eps^2 anyway).
        far = ~(x.abs().amax(-1) < 1 / torch.finfo(x.dtype).eps)
        if not bool(far.any()):
            return self._forward(x)
        # (Their latent is unknown: NaN, never the input passed off as one.)
        z, ladj = torch.full_like(x, math.nan), torch.full_like(x[:, 0], -math.inf)
        if not bool(far.all()):
            z[~far], ladj[~far] = self._forward(x[~far])
        return z, ladj

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.augment_dims:
            z, ladj, _ = self._solve(x, to_data=False)
            return z, ladj
        # log p(x) ~ log mean_k p(x, a_k) / N(a_k); reported as the log-det
        # that makes log N(z) + ladj equal that estimate.
        if self.training:
            n_draws, xa = 1, self._pad(x, 1, None)
        else:
            # Keyed by each row, as the scoring probes are.
            n_draws = self.augment_samples
            noise = keyed_draws(x, n_draws, self.augment_dims, "gaussian", self._key(1))
            xa = torch.cat([x.repeat(n_draws, 1), noise.reshape(-1, self.augment_dims)], dim=-1)
        za, ladj, _ = self._solve(xa, to_data=False)
        log_w = std_normal_log_prob(za) + ladj - std_normal_log_prob(xa[:, self.n_features :])
        log_px = log_w.view(n_draws, x.shape[0]).logsumexp(0) - math.log(n_draws)
        z = za[: x.shape[0], : self.n_features]
        return z, log_px - std_normal_log_prob(z)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        _refuse_functorch()
        if self.augment_dims:
            # Latent augmented coordinates are standard normal, drawn from
            # the thread's noise generator (Flow.sample sets one from its
            # generator); the log-det returned is the joint one.
            z = torch.cat([z, draw((z.shape[0], self.augment_dims), z)], dim=-1)
        x, ladj, _ = self._solve(z, to_data=True)
        return x[:, : self.n_features], ladj

    # ------------------------------------------------------------ training
    def training_loss(self, x: Tensor, ladj: Tensor) -> Tensor:
        """Per-row loss for data ``x`` (already standardized; ``ladj`` is the
        log-determinant of the layers in front of this one).

        ``"mle"``: negative log-likelihood (in training mode, Hutchinson's
        estimate plus the weighted regularizers; in eval mode exact).
        ``"flow_matching"``: the conditional flow-matching loss, on fresh
        random draws in training mode and on draws fixed by :attr:`seed` in
        eval mode, so validation losses of different epochs compare.
        """
        if self.training_method == "mle":
            if not self.augment_dims:
                z, ladj_flow, reg = self._solve(x, to_data=False)
                return -(std_normal_log_prob(z) + ladj_flow + ladj) + reg
            xa = self._pad(x, 1, None)
            za, ladj_flow, reg = self._solve(xa, to_data=False)
            log_q = std_normal_log_prob(xa[:, self.n_features :])
            return -(std_normal_log_prob(za) + ladj_flow - log_q + ladj) + reg
        if self.training:
            return self._flow_matching_loss(x, 1, None)
        per_draw = self._flow_matching_loss(x, _FM_VALIDATION_DRAWS, self._generator())
        return per_draw.view(_FM_VALIDATION_DRAWS, x.shape[0]).mean(0)

    def _flow_matching_loss(
        self, x: Tensor, n_draws: int, generator: torch.Generator | None
    ) -> Tensor:
        x1 = self._pad(x, n_draws, generator) if self.augment_dims else x.repeat(n_draws, 1)
        x0 = draw_probes(1, x1, "gaussian", generator)[0]
        if self.coupling == "ot":
            x0 = x0[self._pairing(x0, x1, x.shape[0], fixed=generator is not None)]
        t = draw((x1.shape[0], 1), x, normal=False, generator=generator)
        n_blocks = len(self.blocks)
        if n_blocks > 1:
            # Block k owns the time slice [k/K, (k+1)/K]; rows k, k + K, ...
            # (rows come in random order) get a time in it. Strided slices of
            # rows, unlike boolean masks, never wait for a GPU. The shares
            # differ by one row when K does not divide the batch, which
            # changes no block's optimum (each regresses on its own slice);
            # batches of fewer than K rows are refused (min_batch_rows).
            block_of = torch.arange(x1.shape[0], device=x.device, dtype=x.dtype) % n_blocks
            t = (block_of[:, None] + t) / n_blocks
        xt = (1 - (1 - self.sigma_min) * t) * x0 + t * x1
        target = x1 - (1 - self.sigma_min) * x0
        if n_blocks == 1:
            velocity = cast(Dynamics, self.blocks[0]).field(t, xt)
        else:
            velocity = torch.empty_like(x1)
            for k, block in enumerate(self.blocks):
                field = cast(Dynamics, block).field
                velocity[k::n_blocks] = field(t[k::n_blocks], xt[k::n_blocks])
        return (velocity - target).square().sum(-1)

    def _pairing(self, x0: Tensor, x1: Tensor, group: int, fixed: bool) -> Tensor:
        """:func:`~skflow.engine.ode.ot_pairing`, memoized for the draws of
        a seeded evaluation: validation rows and their draws are the same at
        every epoch, and pairing them again cost 18% of a small table's fit."""
        if not fixed:
            return ot_pairing(x0, x1, group)
        # The draws follow from the rows and the seed (augmentation noise
        # included), so those identify the pairing.
        key = hashlib.blake2b(x1.detach().cpu().numpy().tobytes(), digest_size=16)
        key.update(str((tuple(x1.shape), x1.dtype, group, int(self.seed))).encode())
        digest = key.digest()
        if digest not in self._fixed_pairings:
            if len(self._fixed_pairings) >= _MAX_FIXED_PAIRINGS:
                del self._fixed_pairings[next(iter(self._fixed_pairings))]
            self._fixed_pairings[digest] = ot_pairing(x0, x1, group).cpu()
        return self._fixed_pairings[digest].to(x0.device)

    def unused_options(self, given: Iterable[str]) -> dict[str, str]:
        """Those of the ``given`` option names that have no effect with this
        layer's other settings, each with the reason: a setting that does
        nothing is likely a mistaken one."""
        fixed, mle = self.solver in FIXED_SOLVERS, self.training_method == "mle"
        unused = {
            "rtol": fixed and f"the fixed-step solver {self.solver!r}",
            "atol": fixed and f"the fixed-step solver {self.solver!r}",
            "n_steps": not fixed and f"the adaptive solver {self.solver!r}",
            "augment_samples": not self.augment_dims and "augment_dims=0",
            "adjoint": (
                not mle
                and self.adjoint
                and "training='flow_matching' (no ODE solve to backpropagate through)"
            ),
            "n_probes": not mle and "training='flow_matching' (no trace)",
            "coupling": mle and "training='mle' (no noise-data pairs)",
            "sigma_min": mle and "training='mle' (no probability paths)",
        }
        return {name: str(reason) for name, reason in unused.items() if name in given and reason}

    def restore_counts(self, nfe: dict) -> None:
        """Carry on the evaluation counts of :attr:`nfe` (as a saved model
        reports them), so a warm fit's ``fit_total`` covers all fits."""
        total, per_solve = float(nfe["fit_total"]), float(nfe["fit_per_solve"])
        last = float(nfe.get("last_solve", 0))
        solves = total / per_solve if per_solve > 0 else 0.0
        if not all(math.isfinite(v) and 0 <= v < 2**62 for v in (total, solves, last)):
            raise ValueError(f"nfe_={nfe!r} holds no evaluation counts")
        self._nfe_train, self._n_train_solves, self._nfe_last = int(total), round(solves), int(last)

    def __getstate__(self) -> dict:
        # Pickling and deepcopy (FlowDensity's pickles) leave the memo and the
        # last training solves (their probes) behind, with their count.
        state = super().__getstate__()
        total = self.nfe["fit_total"]
        return {**state, "_fixed_pairings": {}, "_training_solves": [], "_nfe_train": total}

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_training_solves", [])  # pickled by skflow 0.2.0
        super().__setstate__(state)


def build_cnf(
    n_features: int, *, n_layers: int, hidden_units: Sequence[int], **options: Any
) -> Transform:
    """Continuous normalizing flow with ``n_layers`` vector-field blocks in
    time; ``options`` are those of :class:`ContinuousFlow`."""
    return ContinuousFlow(n_features, n_blocks=n_layers, hidden_units=hidden_units, **options)
