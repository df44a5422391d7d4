"""Maximum-likelihood training loop for flows.

Minibatch Adam over tensors already on the target device (no DataLoader, no
per-step host transfer), early stopping on a validation split with patience,
best-weights restore, gradient clipping and a guard against non-finite
losses. It reports what happened; the estimator layer turns that into
warnings for the user.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import cast

import torch
from torch import Tensor, nn

from skflow.engine.device import EVAL_CHUNK, in_chunks, plain_torch
from skflow.engine.distributions import Flow, OwnObjective
from skflow.engine.ode import SolverUnderflow, underflow_as_error
from skflow.engine.rng import draw, drawing_from
from skflow.engine.rng import noise_generator as current_generator
from skflow.engine.transforms import ActNorm, Compose

ACTNORM_INIT_ROWS = 4096


@dataclass
class TrainingResult:
    """What happened during :func:`train_flow`.

    Attributes
    ----------
    loss_curve : list of float
        Mean training loss of each epoch (negative log-likelihood, unless
        the flow has its own objective: see :meth:`Flow.training_loss`).
    validation_scores : list of float
        Minus the validation loss after each epoch (empty without
        validation data).
    n_iter : int
        Epochs run.
    best_epoch : int
        The epoch whose weights were kept (0: the starting weights, which
        no epoch beat on validation data; without validation data the last
        epoch, or after a divergence the one of lowest training loss).
    best_score : float
        Its monitored score (validation score, or minus its mean training
        loss without validation data).
    stop_reason : str
        ``"converged"``, ``"max_iter"``, ``"max_time"`` or ``"diverged"``.
    compile_error : str or None
        Why ``compile=True`` fell back to eager execution.

    Examples
    --------
    >>> import torch
    >>> from skflow.engine import Flow, StandardNormal, build_transform, train_flow
    >>> _ = torch.manual_seed(0)
    >>> flow = Flow(build_transform("realnvp", 2, n_layers=2, hidden_units=(8,)), StandardNormal(2))
    >>> X = torch.randn(200, 2)
    >>> result = train_flow(flow, X[:160], X[160:], max_iter=3, batch_size=32, learning_rate=1e-3)
    >>> result.n_iter, len(result.loss_curve), len(result.validation_scores)
    (3, 3, 3)
    >>> result.stop_reason
    'max_iter'
    """

    loss_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    n_iter: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf
    stop_reason: str = "max_iter"
    compile_error: str | None = None


@torch.no_grad()
def validation_score(flow: Flow, X: Tensor, weights: Tensor | None = None) -> float:
    """Minus the mean :meth:`Flow.training_loss` of ``X`` in eval mode, in
    chunks: the mean log-likelihood, or for a layer with its own objective
    (flow matching) minus that loss, which is cheaper than a likelihood.
    With ``weights``, the weighted mean."""
    was_training = flow.training
    flow.eval()
    total = X.new_zeros(())

    def step(start: int, stop: int) -> None:
        nonlocal total
        loss = flow.training_loss(X[start:stop])
        total = total - (loss.sum() if weights is None else (loss * weights[start:stop]).sum())

    in_chunks(X.shape[0], X.device, step)
    flow.train(was_training)
    return float(total) / (X.shape[0] if weights is None else float(weights.sum()))


def _scaled_weights(weights: Tensor) -> Tensor:
    """``weights`` in float64 on the CPU, divided by the largest, so that
    their sum can neither underflow nor overflow; checked."""
    w = weights.detach().cpu().double()
    if w.ndim != 1 or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative, one per row.")
    if not bool((w > 0).any()):
        raise ValueError("weights must not all be zero.")
    return w / w.max()


class _WeightedDraws:
    """An epoch's rows for weighted training: ``n`` draws by systematic
    resampling (one uniform offset, ``n`` evenly spaced points on the
    cumulative weights), in random order. A row of weight ``w`` is drawn
    ``n w / sum(w)`` times rounded up or down, so equal weights give every
    row once (a permutation, as unweighted training) and nearly equal ones
    nearly that, with less noise than independent draws."""

    def __init__(self, weights: Tensor) -> None:
        cdf = torch.cumsum(_scaled_weights(weights), 0)
        self.cdf = cdf / cdf[-1]  # ends at exactly 1

    def epoch(self, generator: torch.Generator | None) -> Tensor:
        n = self.cdf.shape[0]
        offset = torch.rand(1, generator=generator, dtype=torch.float64)
        # Points in [0, 1] (1 only by rounding): the cdf ends at exactly 1,
        # so searchsorted never returns n.
        points = (torch.arange(n, dtype=torch.float64) + offset) / n
        rows = torch.searchsorted(self.cdf, points)
        return rows[torch.randperm(n, generator=generator)]


@torch.no_grad()
def _initialize_actnorm(
    flow: Flow, X: Tensor, generator: torch.Generator | None, draws: _WeightedDraws | None
) -> None:
    """ActNorm initializes from the first batch it sees in training mode. One
    minibatch makes a noisy start (about ``D / rows`` nats per layer, which
    training must first undo), so hand it a random sample of up to
    ``ACTNORM_INIT_ROWS`` rows instead (drawn by weight, if rows have one)."""
    if not any(isinstance(m, ActNorm) and not m.initialized for m in flow.modules()):
        return
    if draws is None:
        rows = torch.randperm(X.shape[0], generator=generator)[:ACTNORM_INIT_ROWS]
    else:
        rows = draws.epoch(generator)[:ACTNORM_INIT_ROWS]
    flow.train()
    flow.transform(X[rows.to(X.device)])


class _FusedAdamW:
    """AdamW (torch's defaults: betas 0.9 / 0.999, eps 1e-8) as one call of
    torch's fused kernel per step, bit for bit what
    ``torch.optim.AdamW(fused=True)`` computes.

    ``torch.optim`` wraps that kernel in per-step Python work that grows with
    the number of parameter tensors (state lookups, grouping by device and
    dtype, one step-count increment per tensor): about 230 us of a small
    flow's 2.7 ms step on a CPU, 10% of maf training in ``benchmarks/speed.py``.
    Here the lists are built once and every tensor shares one step count
    while all of them get gradients (in a flow they do). Once a step finds a
    parameter without a gradient, each tensor keeps its own count and those
    without a gradient are skipped, as torch does. :func:`_make_optimizer`
    probes the kernel first and falls back to ``torch.optim`` if this torch
    lacks it or changed its signature.
    """

    def __init__(self, params: Sequence[Tensor], lr: float, weight_decay: float) -> None:
        self.params = params
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        # float32 on the parameters' device, as torch.optim keeps it for the
        # fused kernel: incrementing it never waits for a GPU.
        shared_step = torch.zeros((), dtype=torch.float32, device=params[0].device)
        self.shared_step: Tensor | None = shared_step
        self.steps: list[Tensor] = [shared_step] * len(params)
        self.options = {
            "lr": lr,
            "beta1": 0.9,
            "beta2": 0.999,
            "weight_decay": weight_decay,
            "eps": 1e-8,
            "amsgrad": False,
            "maximize": False,
        }

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if self.shared_step is not None and all(g is not None for g in grads):
            self.shared_step.add_(1)
            # A private kernel whose stub wants lists or tuples and a typed
            # keyword per option, not a dict of floats and bools; grads holds
            # no None here, which the checker cannot see.
            torch._fused_adamw_(  # type: ignore[call-overload]
                self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps, **self.options
            )
            return
        if self.shared_step is not None:
            self.steps = [self.shared_step.clone() for _ in self.params]
            self.shared_step = None
        keep = [i for i, g in enumerate(grads) if g is not None]
        if not keep:
            return
        lists = (self.params, grads, self.exp_avgs, self.exp_avg_sqs, self.steps)
        params, grads, exp_avgs, exp_avg_sqs, steps = ([seq[i] for i in keep] for seq in lists)
        # (Tensors from self.steps: the tuple's grads widen the type to None.)
        torch._foreach_add_(cast("list[Tensor]", steps), 1)
        # (As above: the kept grads hold no None.)
        torch._fused_adamw_(  # type: ignore[call-overload]
            params, grads, exp_avgs, exp_avg_sqs, [], steps, **self.options
        )


def _fused_kernel_works(like: Tensor) -> bool:
    """One step of :class:`_FusedAdamW` on a scratch tensor shaped like a
    parameter: False if this torch lacks the kernel or changed it."""
    scratch = like.detach().new_zeros(1).requires_grad_(True)
    scratch.grad = torch.ones_like(scratch)
    try:
        _FusedAdamW([scratch], lr=0.1, weight_decay=0.0).step()
    except (AttributeError, RuntimeError, TypeError):
        return False
    # Adam's first step moves by -lr * sign(grad).
    return abs(float(scratch.detach()) + 0.1) < 1e-4


def _make_optimizer(
    params: Sequence[Tensor], lr: float, weight_decay: float
) -> _FusedAdamW | torch.optim.Optimizer:
    """AdamW, fused into one kernel over all parameters where torch has that
    (CPU and CUDA; see :class:`_FusedAdamW`): the per-parameter Python loop of
    the default implementation costs about 15% of a small flow's step on CPU.
    Mixed devices or dtypes get ``torch.optim.AdamW(fused=True)``; other
    devices (MPS) and torch releases without the kernel the unfused one."""
    if all(p.device.type in ("cpu", "cuda") for p in params):
        same = len({(p.device, p.dtype) for p in params}) == 1
        if same and _fused_kernel_works(params[0]):
            return _FusedAdamW(params, lr, weight_decay)
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _clip_grad_norm(params: Sequence[Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for parameters that share one device
    and dtype (a flow's do), without its grouping of the gradients by device
    and dtype at every call (about 1.5% of a small flow's step on CPU). The
    scale is applied unconditionally: a branch on the norm would wait for a
    GPU at every step."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))


class _ExponentialAverage:
    """Exponential moving average of parameters (Polyak averaging), updated
    after every optimizer step, with the decay warming up from 0.18 (step 1)
    to ``decay``; :meth:`swap` exchanges the live and the averaged values in
    place."""

    def __init__(self, params: Sequence[Tensor], decay: float) -> None:
        # Detached views share the parameters' storage, so they follow the
        # optimizer's in-place steps: made once, not at every update.
        self.params = [p.detach() for p in params]
        self.average = [p.clone() for p in self.params]
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        # Warm-up: the decay grows as (1 + k) / (10 + k) towards ``decay``,
        # so that early in training the average is not dominated by the
        # initial weights (a fixed 0.999 lags ~1000 steps behind).
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.average, self.params, 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        for p, a in zip(self.params, self.average, strict=True):
            tmp = p.clone()
            p.copy_(a)
            a.copy_(tmp)


def _snapshot(flow: Flow) -> dict[str, Tensor]:
    # Tensors only (no module uses extra state): cloning them is about three
    # times cheaper than deepcopy, which runs at every improving epoch.
    return {name: value.clone() for name, value in flow.state_dict().items()}


def _params_finite(flow: Flow) -> bool:
    # One host read for all parameters (each read waits for a GPU).
    return bool(torch.stack([torch.isfinite(p).all() for p in flow.parameters()]).all())


def _dequantized(x: Tensor, half: Tensor) -> Tensor:
    """``x`` plus fresh uniform noise on ``[-half, half]``."""
    return x + (draw(x.shape, x, normal=False) - 0.5) * 2 * half


def _split_loss(
    flow: Flow, X: Tensor, half: Tensor, noisy: bool
) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], Callable[[Tensor, Tensor], Tensor]]:
    """The training loss of rows ``X[idx]`` in two parts: ``inputs(idx)``
    gives the rows mapped through the fixed layers in front of the flow (no
    parameters: standardization, whitening, marginal Gaussianization) with
    their log-determinant, and ``loss(z, ladj)`` the mean loss of the trained
    layers on them (what ``compile=True`` compiles).

    Without dequantization noise the fixed layers' output never changes, so
    the rows go through them once here instead of at every step (about 15%
    of a small MAF's step). A last layer with an objective of its own (see
    :meth:`Flow.training_loss`) gets the log-determinant of the layers in
    front of it.
    """
    layers = flow.layers
    n_fixed = 0
    while n_fixed < len(layers) - 1 and next(layers[n_fixed].parameters(), None) is None:
        n_fixed += 1
    fixed = Compose(*layers[:n_fixed])
    trained = layers[n_fixed:]
    own = flow.own_objective
    own_loss = None if own is None else cast(OwnObjective, own).training_loss

    def loss(z: Tensor, ladj: Tensor) -> Tensor:
        for layer in trained if own_loss is None else trained[:-1]:
            z, layer_ladj = layer(z)
            ladj = ladj + layer_ladj
        if own_loss is None:
            return -(flow.base.log_prob(z) + ladj).mean()
        return own_loss(z, ladj).mean()

    @torch.no_grad()
    def mapped(x: Tensor) -> tuple[Tensor, Tensor]:
        return fixed(x) if n_fixed else (x, x.new_zeros(x.shape[0]))

    if noisy:
        return lambda idx: mapped(_dequantized(X[idx], half[idx])), loss
    parts = [mapped(X[i : i + EVAL_CHUNK]) for i in range(0, X.shape[0], EVAL_CHUNK)]
    Z = torch.cat([z for z, _ in parts])
    fixed_ladj = torch.cat([ladj for _, ladj in parts])
    return lambda idx: (Z[idx], fixed_ladj[idx]), loss


def _compile_soft(
    loss: Callable[[Tensor, Tensor], Tensor],
    inputs: tuple[Tensor, Tensor],
    flow: nn.Module,
    result: TrainingResult,
) -> Callable[[Tensor, Tensor], Tensor]:
    """``torch.compile`` of the training loss, or the loss itself (with the
    reason in ``result.compile_error``) when compiling fails on this machine
    (no C++ compiler, an unsupported platform or operation). Compilation
    happens at the first forward and backward pass, so both are tried here
    on one minibatch, which must leave no trace: its gradients are dropped
    and the buffers it moved (batch norm's running averages) restored."""
    buffers = [b.detach().clone() for b in flow.buffers()]
    try:
        with warnings.catch_warnings():
            # torch's compiler stack warns about its own deprecated internals.
            warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*")
            compiled = torch.compile(loss)
            compiled(*inputs).backward()
    except Exception as exc:  # any failure inside torch's compiler stack
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        result.compile_error = f"torch.compile failed ({type(exc).__name__}: {first_line})"
        compiled = loss
    for p in flow.parameters():
        p.grad = None
    with torch.no_grad():
        for b, saved in zip(flow.buffers(), buffers, strict=True):
            b.copy_(saved)
    return compiled


@contextmanager
def _draws_undone(device: torch.device) -> Iterator[None]:
    """Within the block, the engine's noise draws (see ``drawing_from``)
    leave no trace: the generator, or torch's global one, is restored."""
    generator = current_generator()
    if generator is None:
        gpu = device.type in ("cuda", "mps")
        with torch.random.fork_rng(
            devices=[device] if gpu else [], device_type=device.type if gpu else "cuda"
        ):
            yield
        return
    state = generator.get_state()
    try:
        yield
    finally:
        generator.set_state(state)


def _noise_half_widths(
    flow: Flow,
    X_train: Tensor,
    X_val: Tensor | None,
    noise: tuple[Tensor, Tensor | None] | None,
) -> tuple[Tensor, Tensor | None]:
    """Half-widths of the dequantization noise of each training and
    validation entry: ``noise`` checked, or else half the flow's widths."""
    if noise is None:
        half = flow.dequantization / 2
        return half.expand_as(X_train), half.expand_as(X_val) if X_val is not None else None
    if not (isinstance(noise, tuple | list) and len(noise) == 2):
        raise ValueError("noise must be a pair (training half-widths, validation ones or None).")
    half, half_val = noise
    for widths in (half, half_val):
        if widths is not None and (widths.dtype, widths.device) != (X_train.dtype, X_train.device):
            raise ValueError(
                f"noise half-widths must be in X_train's dtype and on its device "
                f"({X_train.dtype}, {X_train.device}); got {widths.dtype} on {widths.device}."
            )
    if half.shape != X_train.shape or (
        X_val is not None and (half_val is None or half_val.shape != X_val.shape)
    ):
        raise ValueError(
            "noise must hold half-widths shaped like X_train and X_val: got "
            f"{tuple(half.shape)} and "
            f"{None if half_val is None else tuple(half_val.shape)} for "
            f"{tuple(X_train.shape)} and {None if X_val is None else tuple(X_val.shape)}."
        )
    return half, half_val


def _checked_weights(
    X_train: Tensor, X_val: Tensor | None, weights: tuple[Tensor, Tensor | None] | None
) -> tuple[Tensor | None, Tensor | None]:
    """``weights`` as (training, validation), each None or one per row."""
    if weights is not None and not (isinstance(weights, tuple | list) and len(weights) == 2):
        raise ValueError("weights must be a pair (training weights, validation weights or None).")
    w_train, w_val = weights if weights is not None else (None, None)
    if (w_train is not None and w_train.shape != X_train.shape[:1]) or (
        w_val is not None and (X_val is None or w_val.shape != X_val.shape[:1])
    ):
        raise ValueError(
            "weights must hold one weight per row of X_train and X_val: got "
            f"{tuple(w_train.shape) if w_train is not None else None} and "
            f"{tuple(w_val.shape) if w_val is not None else None}."
        )
    return w_train, w_val


def _run_epoch(
    step: Callable[[Tensor], Tensor],
    perm: Tensor,
    batch_size: int,
    n_batches: int,
    deadline: float | None,
) -> tuple[float, bool]:
    """One epoch of ``step(idx)`` (an optimizer step on rows ``idx``,
    returning its detached loss) over the first ``n_batches`` minibatches of
    ``perm``. Returns the mean loss of the steps taken and whether
    ``deadline`` (a :func:`time.monotonic` time) passed, which ends the epoch
    early. The loss stays on the device until the epoch ends (one read per
    epoch)."""
    total = None
    for b in range(n_batches):
        try:
            loss = step(perm[b * batch_size : (b + 1) * batch_size])
        except SolverUnderflow:
            # A continuous flow's field blew up: divergence, caught by the
            # checks at the end of the epoch.
            return math.nan, False
        total = loss if total is None else total + loss
        if deadline is not None and time.monotonic() > deadline:
            return float(total) / (b + 1), True
    # (n_batches >= 1: the loop set total.)
    return float(cast(Tensor, total)) / n_batches, False


# Each setting's type and allowed range: (integer?, lowest, lowest allowed?,
# infinity allowed? (no clipping, no patience limit, no time limit)).
_SETTINGS = {
    "batch_size": (True, 1, True, False),
    "max_iter": (True, 0, True, False),
    "n_iter_no_change": (True, 1, True, True),
    "learning_rate": (False, 0.0, False, False),
    "weight_decay": (False, 0.0, True, False),
    "tol": (False, 0.0, True, False),
    "clip_grad": (False, 0.0, False, True),
    "max_time": (False, 0.0, False, True),
}


def _check_settings(**settings: object) -> None:
    """Refuse settings of the wrong type or range (a negative learning
    rate or ``clip_grad`` trains uphill)."""
    for name, value in settings.items():
        integer, lowest, closed, unbounded = _SETTINGS[name]
        if value is None and name == "max_time":
            continue
        if unbounded and value == math.inf:
            continue
        kind = Integral if integer else Real
        number = float(value) if isinstance(value, kind) and not isinstance(value, bool) else None
        if number is None or not (
            math.isfinite(number) and (number >= lowest if closed else number > lowest)
        ):
            bound = f"{'>=' if closed else '>'} {lowest}"
            what = "an int" if integer else "a finite number"
            what += " (or inf)" if unbounded else ""
            raise ValueError(f"train_flow's {name} must be {what} {bound}, got {value!r}.")


def train_flow(
    flow: Flow,
    X_train: Tensor,
    X_val: Tensor | None,
    *,
    max_iter: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    n_iter_no_change: int = 10,
    tol: float = 1e-4,
    clip_grad: float = 5.0,
    generator: torch.Generator | None = None,
    max_time: float | None = None,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
    compile: bool = False,
    noise: tuple[Tensor, Tensor | None] | None = None,
    weights: tuple[Tensor, Tensor | None] | None = None,
    noise_generator: torch.Generator | None = None,
) -> TrainingResult:
    """Fit ``flow`` to ``X_train`` by maximum likelihood, in place.

    With ``X_val``, training stops once the validation mean log-likelihood has
    not improved by more than ``tol`` for ``n_iter_no_change`` epochs, and the
    weights of the best validation epoch are restored. Without it, the same
    rule applies to the training loss and the final weights are kept. A
    non-finite loss or parameter stops training and restores the best weights
    seen so far (``stop_reason="diverged"``). ``compile=True`` runs the
    training loss through ``torch.compile`` (a one-off compilation, then
    faster steps), falling back to eager execution if that fails.

    Dequantization: every step adds fresh uniform noise to the training rows,
    on ``[-h, h]`` with ``h`` from ``noise`` (half-widths shaped like
    ``X_train`` and ``X_val``), or else half the flow's per-feature
    ``dequantization`` widths; the validation rows get one fixed draw, so
    epochs compare.

    ``weights`` (non-negative, per row of ``X_train`` and ``X_val``, not all
    zero) fit the weighted distribution: each epoch's minibatches are ``n``
    rows resampled in proportion to the weights (see ``_WeightedDraws`` in the source),
    and the validation score is a weighted mean. Resampling rather than
    weighting each row's loss keeps the objective of layers that pair rows
    within a minibatch (flow matching's optimal-transport pairing between
    noise and data) right.

    Randomness: ``generator`` (a CPU generator) draws the minibatch orders;
    ``noise_generator`` (on the training device or the CPU) the noise drawn
    while training: dequantization and the layers' own draws (flow
    matching's noise and times, Hutchinson probes). None: torch's global
    generators, which threads share (see :mod:`skflow.engine.rng`).

    Parameters
    ----------
    flow : Flow
        The flow to train, on the device of ``X_train``.
    X_train, X_val : Tensor
        Training and validation rows, ``(n, D)`` in the flow's dtype;
        ``X_val`` None trains without early stopping on held-out rows.
    max_iter : int
        Most epochs.
    batch_size : int
        Rows per minibatch (at most ``n``; a ragged last batch is dropped
        unless it is the only one).
    learning_rate, weight_decay : float
        AdamW's step size and decoupled weight decay.
    n_iter_no_change : int, default=10
        Epochs without an improvement of more than ``tol`` before stopping.
    tol : float, default=1e-4
        Improvement in mean log-likelihood (nats per row) that counts.
    clip_grad : float, default=5.0
        Largest gradient norm (all parameters together) of a step.
    generator : torch.Generator or None
        CPU generator of the minibatch orders.
    max_time : float or None
        Budget in seconds; the epoch in progress ends when it runs out.
    on_epoch : callable or None
        Called after each epoch as ``on_epoch(epoch, train_loss, val_score)``.
    compile : bool, default=False
        Train through ``torch.compile`` where the layers allow it.
    noise : (Tensor, Tensor or None) or None
        Dequantization half-widths shaped like ``X_train`` and ``X_val``.
    weights : (Tensor, Tensor or None) or None
        Row weights of ``X_train`` and ``X_val``.
    noise_generator : torch.Generator or None
        Source of the noise drawn while training.

    Returns
    -------
    TrainingResult
        Epochs run, loss and validation curves, best epoch and score, why
        training stopped.

    Examples
    --------
    >>> import torch
    >>> from skflow.engine import Flow, StandardNormal, build_transform, train_flow
    >>> _ = torch.manual_seed(0)
    >>> flow = Flow(build_transform("maf", 2, n_layers=3, hidden_units=(32,)), StandardNormal(2))
    >>> X = torch.randn(1000, 2) * torch.tensor([1.0, 0.1])  # a narrow Gaussian
    >>> result = train_flow(flow, X[:800], X[800:], max_iter=50, batch_size=100, learning_rate=1e-2)
    >>> # Untrained (a standard normal): -2.34 nats per row; the truth: -0.54.
    >>> result.best_score > -0.7
    True
    """
    for name, rows in (("X_train", X_train), ("X_val", X_val)):
        if rows is None:
            continue
        flow.check_rows(rows, f"train_flow's {name}")
        if rows.shape[0] == 0:
            raise ValueError(f"train_flow's {name} has no rows.")
        if not bool(torch.isfinite(rows).all()):
            # (Training would only say "diverged".)
            raise ValueError(
                f"train_flow's {name} holds NaN or infinite values: drop or impute those rows."
            )
    _check_settings(
        batch_size=batch_size,
        max_iter=max_iter,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        n_iter_no_change=n_iter_no_change,
        tol=tol,
        clip_grad=clip_grad,
        max_time=max_time,
    )
    with plain_torch(training=True), drawing_from(noise_generator):
        result = TrainingResult()
        params = [p for p in flow.parameters() if p.requires_grad]
        if not params:  # nothing to learn (e.g. a purely fixed transform)
            result.stop_reason = "converged"
            return result
        optimizer = _make_optimizer(params, learning_rate, weight_decay)
        n = X_train.shape[0]
        batch_size = min(batch_size, n)
        # Drop a ragged last batch unless it is the only one: tiny batches give
        # noisy steps and break batch-statistics layers.
        n_batches = max(n // batch_size, 1)
        start_time = time.monotonic()
        half, half_val = _noise_half_widths(flow, X_train, X_val, noise)
        noisy = bool((half > 0).any())
        if noisy and X_val is not None:
            # (half_val is None only without X_val.)
            X_val = _dequantized(X_val, cast(Tensor, half_val))
        w_train, w_val = _checked_weights(X_train, X_val, weights)
        batch_inputs, batch_loss = _split_loss(flow, X_train, half, noisy)
        draws = None if w_train is None else _WeightedDraws(w_train)
        if w_val is not None:
            # The largest is 1 in the loss's dtype: the weighted mean's
            # denominator is at least 1 (tinier weights may round to 0).
            # (w_val is None without X_val: _checked_weights.)
            X_val = cast(Tensor, X_val)
            w_val = _scaled_weights(w_val).to(device=X_val.device, dtype=X_val.dtype)
        ema = _ExponentialAverage(params, flow.ema_decay) if flow.ema_decay else None
        _initialize_actnorm(
            flow, _dequantized(X_train, half) if noisy else X_train, generator, draws
        )
        blocking = sorted(
            {type(m).__name__ for m in flow.modules() if not getattr(m, "compilable", True)}
        )
        if compile and blocking:
            result.compile_error = (
                f"torch.compile is not supported for {', '.join(blocking)} layers"
            )
        elif compile:
            flow.train()
            # The warm-up's draws (dequantization noise, flow matching's)
            # are given back: compiling changes round-off, not the fit.
            with _draws_undone(X_train.device):
                first = batch_inputs(torch.arange(batch_size, device=X_train.device))
                batch_loss = _compile_soft(batch_loss, first, flow, result)
        try:
            best_score = (
                validation_score(flow, X_val, weights=w_val) if X_val is not None else -math.inf
            )
        except SolverUnderflow:
            best_score = -math.inf
        if not math.isfinite(best_score) and X_val is not None:
            best_score = -math.inf
        best_state = _snapshot(flow)
        stall = 0
        deadline = start_time + max_time if max_time is not None else None

        def step(idx: Tensor) -> Tensor:
            # (An ODE solve can fail in backward too: the adjoint's.)
            with underflow_as_error():
                loss = batch_loss(*batch_inputs(idx))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            _clip_grad_norm(params, clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update()
            return loss.detach()

        flow.train()
        try:
            for epoch in range(1, max_iter + 1):
                perm = (
                    torch.randperm(n, generator=generator)
                    if draws is None
                    else draws.epoch(generator)
                )
                train_loss, out_of_time = _run_epoch(
                    step, perm.to(X_train.device), batch_size, n_batches, deadline
                )
                result.n_iter = epoch
                result.loss_curve.append(train_loss)
                if ema is not None:
                    ema.swap()  # validate (and keep as best) the averaged weights
                try:
                    val_score = (
                        validation_score(flow, X_val, weights=w_val) if X_val is not None else None
                    )
                except SolverUnderflow:
                    val_score = math.nan

                monitored = val_score if val_score is not None else -train_loss
                if not (
                    math.isfinite(train_loss) and math.isfinite(monitored)
                ) or not _params_finite(flow):
                    result.stop_reason = "diverged"
                    result.loss_curve[-1] = train_loss if math.isfinite(train_loss) else math.nan
                    if val_score is not None:
                        result.validation_scores.append(
                            val_score if math.isfinite(val_score) else math.nan
                        )
                    flow.load_state_dict(best_state)
                    break
                if val_score is not None:
                    result.validation_scores.append(val_score)
                if on_epoch is not None:
                    on_epoch(epoch, train_loss, val_score)

                if monitored > best_score + tol:
                    stall = 0
                else:
                    stall += 1
                if monitored > best_score:
                    best_score = monitored
                    result.best_epoch = epoch
                    best_state = _snapshot(flow)
                if ema is not None:
                    ema.swap()
                if out_of_time:
                    result.stop_reason = "max_time"
                    break
                if stall >= n_iter_no_change:
                    result.stop_reason = "converged"
                    break
        except BaseException:
            # Interrupted (Ctrl-C, an error in on_epoch, out of memory): the
            # best weights so far, in eval mode, as a time budget leaves them.
            if X_val is not None:
                flow.load_state_dict(best_state)
            flow.eval()
            raise
        result.best_score = best_score
        if X_val is None and result.stop_reason != "diverged" and result.loss_curve:
            # Without validation data the last epoch's weights are kept.
            result.best_epoch = result.n_iter
            result.best_score = -result.loss_curve[-1]
        if X_val is not None and result.stop_reason != "diverged":
            flow.load_state_dict(best_state)
        elif ema is not None and result.stop_reason != "diverged":
            ema.swap()  # without validation, keep the averaged final weights
        flow.eval()
        return result
