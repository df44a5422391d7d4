"""Performance properties that can be checked without timing noise: the
training loop does not wait for the device once per step, MAF sampling takes
D network passes per layer, and (on a CUDA machine) a large-batch fit on the
GPU beats the CPU by a wide margin."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from torch.utils.flop_counter import FlopCounterMode

from skflow import FlowDensity
from skflow.engine import Flow, StandardNormal, build_transform, resolve_device, train_flow
from skflow.engine.nn import MADE

# Python-level ways of reading a tensor's value on the host: each one waits
# for a GPU to finish everything queued.
SYNCING = ("item", "tolist", "numpy", "cpu", "__float__", "__bool__", "__int__")


def _count_host_reads(monkeypatch) -> list[int]:
    count = [0]
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


@pytest.mark.parametrize(
    "kind, options",
    [
        ("maf", {}),
        ("realnvp", {}),
        ("nsf", {}),
        ("glow", {}),
        # (The default optimal-transport pairing is solved on the CPU.)
        ("cnf", {"coupling": "independent"}),
    ],
)
def test_training_reads_no_value_per_step(kind, options, monkeypatch):
    """Host reads per epoch must not grow with the number of steps per epoch
    (on a GPU each one is a sync that stalls the queue of kernels)."""

    def host_reads(n_rows: int) -> int:
        torch.manual_seed(0)
        transform = build_transform(kind, 3, n_layers=2, hidden_units=(8,), **options)
        flow = Flow(transform, StandardNormal(3))
        X = torch.randn(n_rows, 3)
        with monkeypatch.context() as m:
            count = _count_host_reads(m)
            train_flow(flow, X, X[:16], max_iter=2, batch_size=16, learning_rate=1e-3)
        return count[0]

    assert host_reads(16 * 20) == host_reads(16 * 2)


def test_continuous_columns_upload_no_noise_widths(monkeypatch):
    """Dequantization widths reach the device once per fit: for continuous
    columns (none) as one broadcast row, not a zero copy of the data."""
    import skflow._estimator as estimator

    seen = []

    def spy(*args, noise, **kwargs):
        seen.append(noise)
        return train_flow(*args, noise=noise, **kwargs)

    monkeypatch.setattr(estimator, "train_flow", spy)
    warnings.simplefilter("ignore", ConvergenceWarning)  # (two epochs; pytest restores filters)
    X = np.random.RandomState(0).normal(size=(300, 3))
    FlowDensity(n_layers=1, max_iter=2, random_state=0).fit(X)
    assert all(h.stride() == (0, 1) and not h.any() for h in seen[-1])
    X[:, 0] = np.round(X[:, 0])  # a discrete column: real widths, per entry
    FlowDensity(n_layers=1, max_iter=2, random_state=0).fit(X)
    assert all(h.stride() == (3, 1) and h[:, 0].all() for h in seen[-1])


@pytest.mark.parametrize("max_norm", [1e-2, 1e6])
def test_gradient_clipping_matches_torch(max_norm):
    """The training loop's clipping (no per-call grouping by device) scales
    the gradients exactly as ``torch.nn.utils.clip_grad_norm_``, whether the
    norm is above the limit or not; parameters without a gradient are left
    alone."""
    from skflow.engine.training import _clip_grad_norm

    torch.manual_seed(0)
    shapes = [(64, 10), (64,), (20, 64), (), (3, 1)]
    ours = [torch.zeros(s, requires_grad=True) for s in shapes]
    ref = [torch.zeros(s, requires_grad=True) for s in shapes]
    for a, b in zip(ours[:-1], ref[:-1], strict=True):
        a.grad = torch.randn(a.shape)
        b.grad = a.grad.clone()
    _clip_grad_norm(ours, max_norm)
    torch.nn.utils.clip_grad_norm_(ref, max_norm)
    for a, b in zip(ours[:-1], ref[:-1], strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    assert ours[-1].grad is None
    _clip_grad_norm(ours[-1:], max_norm)  # nothing to clip: no error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adamw_steps_exactly_like_torch(dtype):
    """The training loop's AdamW (one fused-kernel call, one shared step
    count) moves the parameters bit for bit like
    ``torch.optim.AdamW(fused=True)``, with weight decay, and still does once
    a parameter misses its gradient (it keeps its state, as in torch)."""
    from skflow.engine.training import _fused_kernel_works, _FusedAdamW, _make_optimizer

    if not _fused_kernel_works(torch.zeros(1, dtype=dtype)):
        pytest.skip("this torch has no fused AdamW kernel on the CPU (torch.optim is used)")
    torch.manual_seed(0)
    shapes = [(6, 3), (6,), (2, 6)]
    ours = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    ref = [p.detach().clone().requires_grad_(True) for p in ours]
    optimizer = _make_optimizer(ours, 1e-2, 0.1)
    assert isinstance(optimizer, _FusedAdamW)
    reference = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, fused=True)
    for step in range(12):
        optimizer.zero_grad()
        reference.zero_grad()
        # From step 6 on, the last parameter gets a gradient every other step.
        with_grad = range(len(shapes) - (step >= 6 and step % 2 == 0))
        for i in with_grad:
            ours[i].grad = torch.randn(shapes[i], dtype=dtype)
            ref[i].grad = ours[i].grad.clone()
        optimizer.step()
        reference.step()
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(a, b), step
    # Like torch.optim: zero the gradients in place, or drop them.
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in ours[:2])
    optimizer.zero_grad()
    assert all(p.grad is None for p in ours)


def test_fit_raises_no_torch_warning():
    """Nothing in a plain fit warns (e.g. the optimizer's probe of the fused
    kernel), so ``-W error::UserWarning`` users can fit."""
    X = np.random.default_rng(0).normal(size=(200, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        FlowDensity(kind="maf", n_layers=2, hidden_units=8, max_iter=3, random_state=0).fit(X)


def test_optimizer_falls_back_without_the_fused_kernel(monkeypatch):
    from skflow.engine import training

    def changed(*args, **kwargs):
        raise TypeError("unexpected keyword argument")

    monkeypatch.setattr(torch, "_fused_adamw_", changed)
    params = [torch.zeros(3, requires_grad=True)]
    assert isinstance(training._make_optimizer(params, 1e-3, 0.0), torch.optim.AdamW)
    monkeypatch.delattr(torch, "_fused_adamw_")
    assert isinstance(training._make_optimizer(params, 1e-3, 0.0), torch.optim.AdamW)


def test_train_flow_takes_per_entry_noise():
    """Per-entry dequantization half-widths (what FlowDensity's cells give)
    train; wrongly shaped ones are refused with a message, not a broadcast
    error deep inside a step."""
    torch.manual_seed(0)
    flow = Flow(build_transform("maf", 3, n_layers=1, hidden_units=(8,)), StandardNormal(3))
    X = torch.randn(64, 3)
    kw = dict(max_iter=2, batch_size=16, learning_rate=1e-3)
    result = train_flow(flow, X, X[:8], noise=(torch.full((64, 3), 0.1), torch.zeros(8, 3)), **kw)
    assert result.n_iter == 2 and np.isfinite(result.loss_curve).all()
    with pytest.raises(ValueError, match="shaped like X_train and X_val"):
        train_flow(flow, X, X[:8], noise=(torch.zeros(64, 3), None), **kw)
    with pytest.raises(ValueError, match="shaped like X_train and X_val"):
        train_flow(flow, X, None, noise=(torch.zeros(3), None), **kw)


def test_maf_sampling_costs_no_more_than_scoring():
    # Issue 7 asks for at most D + 1 network calls per layer when sampling a
    # MAF; on a large draw its stepwise solve does better: no whole pass, and
    # matrix products costing no more than scoring as many rows (D passes
    # would cost ~D times).
    d, n = 6, 4096
    X = np.random.default_rng(0).standard_normal((n, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FlowDensity(kind="maf", n_layers=2, hidden_units=64, max_iter=1, random_state=0)
        est.fit(X)
    mades = [m for m in est.flow_.modules() if isinstance(m, MADE)]
    calls = [0]
    for made in mades:
        made.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with FlopCounterMode(display=False) as sampling:
        est.sample(n, random_state=0)
    assert calls == [0]
    with FlopCounterMode(display=False) as scoring:
        est.score_samples(X)
    assert calls == [len(mades)]
    assert 0 < sampling.get_total_flops() <= scoring.get_total_flops()


def _steps_per_second(device: torch.device, X: torch.Tensor, epochs: int = 2) -> float:
    """Training throughput of a 5-layer MAF (hidden 64, 64) at batch 4096."""
    torch.manual_seed(0)
    flow = Flow(
        build_transform("maf", X.shape[1], n_layers=5, hidden_units=(64, 64)),
        StandardNormal(X.shape[1]),
    ).to(device)
    X = X.to(device)
    kwargs = dict(batch_size=4096, learning_rate=1e-3, n_iter_no_change=epochs + 1)
    train_flow(flow, X[:8192], None, max_iter=1, **kwargs)  # warm-up: context, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_flow(flow, X, None, max_iter=epochs, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * (X.shape[0] // 4096) / (time.perf_counter() - start)


@pytest.mark.gpu
def test_cuda_training_throughput_at_batch_4096():
    """The GPU target: with device="auto" on a CUDA machine, at least 20 times
    the steps per second of two CPU threads."""
    X = torch.randn(4096 * 25, 10)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cpu = _steps_per_second(torch.device("cpu"), X)
    finally:
        torch.set_num_threads(before)
    auto = resolve_device("auto")
    assert auto.type == "cuda"
    gpu = _steps_per_second(auto, X)
    assert gpu >= 20 * cpu, f"{gpu:.0f} steps/s on {auto} vs {cpu:.0f} on 2 CPU threads"


def test_float32_rows_are_mapped_without_a_float64_copy(monkeypatch):
    """Scoring and the latent maps shift and cast rows chunk by chunk: a
    float32 input is not first copied whole to float64, and the results are
    those of its float64 copy."""
    X = np.random.RandomState(0).normal(size=(500, 3))
    est = FlowDensity(n_layers=1, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    X32 = X.astype(np.float32)
    expected = {
        "score_samples": est.score_samples(X32.astype(np.float64)),
        "transform": est.transform(X32.astype(np.float64)),
        "inverse_transform": est.inverse_transform(X32.astype(np.float64)),
    }
    seen = []
    original = FlowDensity._map_rows

    def spy(self, rows, *args, **kwargs):
        seen.append(rows)
        return original(self, rows, *args, **kwargs)

    monkeypatch.setattr(FlowDensity, "_map_rows", spy)
    for method, want in expected.items():
        got = getattr(est, method)(X32)
        assert np.shares_memory(seen[0], X32), method
        assert got.dtype == np.float64 and np.array_equal(got, want), method
        seen.clear()
