"""The engine as a researcher uses it directly: layers built, loaded and
trained by hand must either behave or refuse clearly, never compute
something else."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from skflow.engine import KINDS, Flow, StandardNormal, build_transform, train_flow
from skflow.engine.transforms import (
    Affine,
    AffineTransformer,
    Coupling,
    MaskedAutoregressive,
    Permutation,
    PiecewiseLinear,
)


def _flow(kind: str, d: int = 3, **options) -> Flow:
    torch.manual_seed(0)
    options = {"n_layers": 2, "hidden_units": (8,), **options}
    return Flow(build_transform(kind, d, **options), StandardNormal(d))


@pytest.mark.parametrize("assign", [False, True])
def test_coupling_follows_the_index_buffers_it_loads(assign):
    # A layer built with one mask and loaded with another's state must be
    # that other layer (its strided views re-derived), not a mix of both.
    torch.manual_seed(0)
    source = Coupling(torch.tensor([True, True, False, True]), AffineTransformer(), (8,))
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.5)
    target = Coupling(torch.tensor([True, False, True, True]), AffineTransformer(), (8,))
    target.load_state_dict(source.state_dict(), assign=assign)
    x = torch.randn(20, 4)
    z, ladj = target(x)
    expected_z, expected_ladj = source(x)
    torch.testing.assert_close(z, expected_z, rtol=0, atol=0)
    torch.testing.assert_close(ladj, expected_ladj, rtol=0, atol=0)
    torch.testing.assert_close(target.inverse(z)[0], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_takes_empty_batches(kind):
    flow = _flow(kind).eval()
    assert flow.log_prob(torch.randn(0, 3)).shape == (0,)
    with torch.no_grad():
        assert flow.sample(0, torch.Generator().manual_seed(0)).shape == (0, 3)


def test_orders_and_permutations_must_be_permutations():
    repeated = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match=r"MADE order must be a permutation of 0..2"):
        MaskedAutoregressive(3, AffineTransformer(), (8,), order=repeated)
    with pytest.raises(ValueError, match=r"Permutation perm must be a permutation of 0..2"):
        Permutation(repeated)
    with pytest.raises(ValueError, match="permutation of 0..2"):
        MaskedAutoregressive(3, AffineTransformer(), (8,), order=torch.tensor([0, 1]))
    layer = Permutation(torch.tensor([2, 0, 1]))
    x = torch.randn(4, 3)
    torch.testing.assert_close(layer.inverse(layer(x)[0])[0], x)


def test_affine_keeps_its_dtype_and_refuses_a_full_matrix():
    loc = torch.randn(3, dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 3.0]]))
    layer = Affine(loc, chol.double())
    assert layer.tril.dtype == layer.inv_tril.dtype == torch.float64
    x = torch.randn(5, 3, dtype=torch.float64)
    z, ladj = layer(x)
    torch.testing.assert_close(layer.inverse(z)[0], x, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(ladj, -torch.logdet(chol.double()).expand(5), rtol=1e-14, atol=0)
    # A covariance is not its Cholesky factor: refused, not lower-triangled.
    with pytest.raises(ValueError, match="lower triangular .*torch.linalg.cholesky"):
        Affine(loc, chol @ chol.T)
    # A non-finite entry is reported as such, in a matrix (where the upper
    # triangle of inf * 0 would read NaN) as in a vector.
    for bad in (torch.diag(torch.tensor([1.0, math.inf, 1.0])), torch.tensor([1.0, math.nan, 1.0])):
        with pytest.raises(ValueError, match="must be finite with a strictly positive diagonal"):
            Affine(loc, bad)
    with pytest.raises(ValueError, match="strictly positive diagonal"):
        Affine(loc, torch.tensor([1.0, 0.0, 1.0]))


def test_constructors_refuse_empty_shapes():
    for kind in sorted(KINDS):
        with pytest.raises(ValueError, match="n_layers >= 1, got 0"):
            build_transform(kind, 3, n_layers=0, hidden_units=(8,))
        with pytest.raises(ValueError, match="n_features >= 1, got 0"):
            build_transform(kind, 0, n_layers=1, hidden_units=(8,))
        for units in [(0,), (8.5,), 8, (8, True)]:
            with pytest.raises(ValueError, match="hidden_units as a sequence of positive ints"):
                build_transform(kind, 3, n_layers=1, hidden_units=units)
        with pytest.raises(ValueError, match="needs n_layers"):
            build_transform(kind, 3, hidden_units=(8,))
    with pytest.raises(ValueError, match="at least 2 knots"):
        PiecewiseLinear(torch.zeros(2, 1), torch.zeros(2, 1))
    # Distinct in float64, one value in the layer's float32: refused, not a
    # 0/0 slope (a NaN log-determinant).
    knots = torch.tensor([[0.0, 1e12, 1e12 + 1.0]], dtype=torch.float64)
    z = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    layer = PiecewiseLinear(z.float(), z.float())  # (float32 buffers)
    with pytest.raises(ValueError, match="x_knots must be finite and strictly increasing in"):
        layer.reset(knots, z)


def test_train_flow_refuses_bad_rows_and_settings():
    flow = _flow("maf")
    X = torch.randn(64, 3)
    kw = dict(max_iter=1, batch_size=16, learning_rate=1e-3)
    for X_train, X_val, match in [
        (torch.randn(64, 4), None, r"X_train takes rows of shape \(n, 3\)"),
        (torch.randn(64), None, r"got shape \(64,\)"),
        (X.double(), None, "in torch.float64"),
        (X, torch.randn(8, 2), r"X_val takes rows of shape \(n, 3\)"),
        (X[:0], None, "X_train has no rows"),
        (X, X[:0], "X_val has no rows"),
        (torch.cat([X, torch.full((1, 3), math.nan)]), None, "X_train holds NaN or infinite"),
    ]:
        with pytest.raises(ValueError, match=match):
            train_flow(flow, X_train, X_val, **kw)
    # Settings out of range: a negative learning rate or clip_grad trained
    # uphill and reported "converged"; 16.0 rows per batch failed in range().
    for name, value in [
        ("batch_size", 0),
        ("batch_size", 16.0),
        ("max_iter", True),
        ("learning_rate", -0.01),
        ("learning_rate", math.inf),
        ("clip_grad", -5.0),
        ("weight_decay", -1.0),
        ("tol", -1.0),
        ("n_iter_no_change", 0),
        ("max_time", 0.0),
    ]:
        with pytest.raises(ValueError, match=f"train_flow's {name} must be"):
            train_flow(flow, X, None, **{**kw, name: value})
    # inf means no clipping, no patience or time limit; any pair will do.
    unlimited = dict(clip_grad=math.inf, max_time=math.inf, n_iter_no_change=math.inf)
    assert train_flow(flow, X, None, **kw, **unlimited, weights=[torch.ones(64), None]).n_iter == 1
    for bad, match in [
        (dict(weights=torch.ones(64)), "weights must be a pair"),
        (dict(noise=(torch.zeros(64, 3, dtype=torch.float64), None)), "noise half-widths must"),
    ]:
        with pytest.raises(ValueError, match=match):
            train_flow(flow, X, None, **kw, **bad)
    # Rows that are no tensor, or on another device, fail here, not in a layer.
    with pytest.raises(TypeError, match="takes a torch.Tensor, got ndarray"):
        flow.log_prob(X.numpy())
    with pytest.raises(ValueError, match="on the flow's device cpu; got meta"):
        flow.log_prob(X.to("meta"))
    for n in (-1, 2.5):
        with pytest.raises(ValueError, match="non-negative int"):
            flow.sample(n)
    with pytest.raises(ValueError, match="positive int"):
        StandardNormal(-1)
    with pytest.raises(ValueError, match="needs hidden_units"):
        build_transform("maf", 3, n_layers=2)


def test_interrupted_training_keeps_the_best_weights_in_eval_mode():
    from skflow.engine.training import validation_score

    torch.manual_seed(0)
    X = torch.randn(256, 3) * torch.tensor([1.0, 0.1, 3.0])
    flow = _flow("maf", batch_norm=True)
    start = validation_score(flow, X[200:])
    states, scores = [], []

    def interrupt(epoch: int, loss: float, val: float | None) -> None:
        if epoch == 3:  # (before epoch 3 can count as the best)
            raise KeyboardInterrupt
        states.append({k: v.clone() for k, v in flow.state_dict().items()})
        scores.append(val)

    with pytest.raises(KeyboardInterrupt):
        train_flow(
            flow,
            X[:200],
            X[200:],
            max_iter=10,
            batch_size=32,
            learning_rate=1e-2,
            on_epoch=interrupt,
        )
    # (Batch-statistics layers in train mode scored rows by their batch.)
    assert not flow.training
    assert max(scores) > start
    best = states[scores.index(max(scores))]
    for name, value in flow.state_dict().items():
        torch.testing.assert_close(value, best[name], rtol=0, atol=0)


def test_train_flow_without_validation_reports_the_kept_last_epoch():
    torch.manual_seed(0)
    X = torch.randn(128, 3) * 2 + 1
    flow = _flow("maf")
    result = train_flow(flow, X, None, max_iter=6, batch_size=32, learning_rate=0.1)
    # (A run whose last epoch is not its lowest training loss.)
    assert min(result.loss_curve) < result.loss_curve[-1]
    assert result.n_iter == 6 and result.best_epoch == 6
    assert result.best_score == -result.loss_curve[-1]


def test_trial_compile_pass_leaves_batch_norm_statistics_alone(monkeypatch):
    # compile=True tries one forward and backward pass before training; in
    # train mode that would move batch norm's running averages.
    monkeypatch.setattr(torch, "compile", lambda fn, *args, **kwargs: fn)
    X = torch.randn(256, 3) * 3 + 2
    states = []
    for compile in (False, True):
        flow = _flow("maf", batch_norm=True)
        train_flow(flow, X, X[:32], max_iter=0, batch_size=64, learning_rate=1e-3, compile=compile)
        states.append({k: v.clone() for k, v in flow.state_dict().items()})
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"cnf"}))
def test_torch_func_gradients_match_autograd(kind):
    # The API docs promise torch.func's transforms for every kind but cnf.
    flow = _flow(kind).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(flow.log_prob(x).sum(), x)
    per_row = torch.func.vmap(torch.func.grad(lambda row: flow.log_prob(row[None])[0]))
    with warnings.catch_warnings():
        # (vmap warns when an operation lacks a batching rule and loops.)
        warnings.simplefilter("error", UserWarning)
        got = per_row(x.detach())
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"cnf"}))
def test_vmap_over_stacked_parameters(kind):
    # Ensembling by torch.func.stack_module_state: coupling layers wrote a
    # batched y into an unbatched x in place, which vmap refuses.
    import copy

    from torch.func import functional_call, stack_module_state

    flows = []
    for seed in range(3):
        flows.append(_flow(kind).double().eval())
        torch.manual_seed(seed)
        with torch.no_grad():  # (away from the zero-initialized identity)
            for p in flows[-1].parameters():
                p.add_(0.1 * torch.randn_like(p))
    params, buffers = stack_module_state(flows)
    skeleton = copy.deepcopy(flows[0]).to("meta")
    x = torch.randn(5, 3, dtype=torch.float64)
    got = torch.func.vmap(lambda p, b: functional_call(skeleton, (p, b), (x,)))(params, buffers)
    want = torch.stack([f.log_prob(x) for f in flows])
    torch.testing.assert_close(got, want)
    assert not torch.allclose(want[0], want[1])


def test_vmap_of_the_planar_inverse():
    # Its Newton solve stops on a value test, which vmap cannot trace: under
    # torch.func it runs its fixed iteration budget instead.
    layers = build_transform("planar", 3, n_layers=2).double()
    z = torch.randn(6, 3, dtype=torch.float64)
    x, ladj = layers.inverse(z)
    got = torch.func.vmap(lambda v: layers.inverse(v[None])[0][0])(z)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: layers.inverse(v[None])[0][0]))(z)
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj, rtol=1e-10, atol=1e-10)


def test_torch_func_through_the_marginal_map():
    # The estimator's flows start with a PiecewiseLinear layer: vmap must
    # batch its knot search (both paths: per row, searchsorted; per chunk
    # of 2,000 rows, the binary search), not fall back to a loop.
    torch.manual_seed(0)
    knots = torch.sort(torch.randn(3, 16, dtype=torch.float64), dim=1).values
    layer = PiecewiseLinear(knots, torch.linspace(-2, 2, 16, dtype=torch.float64).expand(3, 16))
    x = torch.randn(4000, 3, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(layer(xg)[1].sum(), xg)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*batching rule.*")
        per_row = torch.func.vmap(torch.func.grad(lambda row: layer(row[None])[1][0]))(x)
        per_chunk = torch.func.vmap(torch.func.grad(lambda rows: layer(rows)[1].sum()))(
            x.view(2, 2000, 3)
        )
    torch.testing.assert_close(per_row, expected)
    torch.testing.assert_close(per_chunk.reshape(4000, 3), expected)


def test_torch_func_on_a_continuous_flow_says_to_use_autograd():
    flow = _flow("cnf").eval()
    x = torch.randn(4, 3)
    with pytest.raises(NotImplementedError, match="kind='cnf' does not support torch.func"):
        torch.func.vmap(torch.func.grad(lambda row: flow.log_prob(row[None])[0]))(x)
    with pytest.raises(NotImplementedError, match="Use torch.autograd instead"):
        torch.func.jacrev(flow.log_prob)(x)
    # Plain autograd works.
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(flow.log_prob(xg).sum(), xg)
    assert grad.shape == (4, 3) and bool(torch.isfinite(grad).all())


def test_stepwise_plan_made_in_inference_mode_serves_autograd():
    """Scoring and sampling run in inference mode; the stepwise solve's
    cached plan built there must not make later autograd calls fail."""
    torch.manual_seed(0)
    layer = MaskedAutoregressive(16, AffineTransformer(), (64, 64))
    z = torch.randn(2048, 16)  # enough work for the stepwise solve
    with torch.inference_mode():
        expected, _ = layer.inverse(z)
    x, _ = layer.inverse(z.requires_grad_())
    x.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    torch.testing.assert_close(x.detach(), expected)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_training_steps_use_the_loss_validation_reports(kind):
    """Training maps rows through the fixed layers once and computes the
    trained layers' loss apart (_split_loss); that must be the same loss as
    Flow.training_loss, which validation reports."""
    import numpy as np

    from skflow import FlowDensity
    from skflow.engine.training import _split_loss

    options = {"solver": "rk4", "n_steps": 4} if kind == "cnf" else None
    X = np.random.RandomState(0).normal(size=(64, 4))
    est = FlowDensity(kind, n_layers=2, hidden_units=8, max_iter=1, kind_options=options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flow = est.fit(X).flow_.eval()
    rows = torch.tensor(X - est.center_, dtype=torch.float32)
    inputs, loss = _split_loss(flow, rows, torch.zeros_like(rows), noisy=False)
    idx = torch.arange(0, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(loss(*inputs(idx)), flow.training_loss(rows[idx]).mean())


def test_chunks_halve_on_a_gpu_that_runs_out_of_memory(monkeypatch):
    from skflow.engine.device import EVAL_CHUNK, in_chunks

    # The fixed chunk size cannot know a flow's activations (an image Glow
    # needs gigabytes for 65,536 rows): out of memory retries in halves.
    done: list[tuple[int, int]] = []

    def step(start: int, stop: int) -> None:
        if stop - start > 10_000:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        done.append((start, stop))

    in_chunks(100_000, torch.device("cuda", 0), step)
    sizes = {stop - start for start, stop in done}
    assert sizes == {EVAL_CHUNK // 8} | {100_000 % (EVAL_CHUNK // 8)}
    assert [start for start, _ in done] == list(range(0, 100_000, EVAL_CHUNK // 8))
    # MPS says so in a plain RuntimeError.
    done.clear()

    def mps_step(start: int, stop: int) -> None:
        if stop - start > 5:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)")
        done.append((start, stop))

    in_chunks(12, torch.device("mps"), mps_step)
    assert done[-1][1] == 12 and all(stop - start <= 5 for start, stop in done)

    # A retried chunk draws the failed one's noise again: the same numbers
    # as chunks of the smaller size from the start.
    from skflow.engine.rng import drawing_from, noise_generator

    def noisy(limit: int, out: list):
        def step(start: int, stop: int) -> None:
            noise = torch.randn(stop - start, generator=noise_generator())
            if stop - start > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            out.append(noise)

        return step

    retried, small = [], []
    with drawing_from(torch.Generator().manual_seed(0)):
        in_chunks(100_000, torch.device("cuda", 0), noisy(10_000, retried))
    import skflow.engine.device as device_module

    monkeypatch.setattr(device_module, "eval_chunk", lambda device: EVAL_CHUNK // 8)
    with drawing_from(torch.Generator().manual_seed(0)):
        in_chunks(100_000, torch.device("cuda", 0), noisy(10_000, small))
    torch.testing.assert_close(torch.cat(retried), torch.cat(small), rtol=0, atol=0)

    # Other errors, a CPU's memory and a single row that does not fit stay errors.
    def failing(exc: Exception):
        def step(start: int, stop: int) -> None:
            raise exc

        return step

    with pytest.raises(RuntimeError, match="shape"):
        in_chunks(10, torch.device("cuda", 0), failing(RuntimeError("shape")))
    with pytest.raises(RuntimeError, match="out of memory"):
        in_chunks(10, torch.device("cpu"), failing(RuntimeError("out of memory")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        in_chunks(3, torch.device("cuda", 0), failing(torch.cuda.OutOfMemoryError("out of memory")))
