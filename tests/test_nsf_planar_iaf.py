"""Family-specific checks for nsf (splines), planar and iaf, beyond the contract test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from skflow import FlowDensity
from skflow.engine import Flow, StandardNormal, build_transform
from skflow.engine.flows.planar import Planar, solve_planar
from skflow.engine.nn import MADE
from skflow.engine.splines import RationalQuadraticSplineTransformer, _softmax

BOUND = 3.0
# The fits here stop at a small max_iter on purpose (speed); their checks hold anyway.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _randomize(module: torch.nn.Module, scale: float) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))


def _spline_and_params(n: int, dtype: torch.dtype, scale: float = 2.0):
    spline = RationalQuadraticSplineTransformer(n_bins=6, tail_bound=BOUND)
    gen = torch.Generator().manual_seed(1)
    params = scale * torch.randn(n, spline.n_params, generator=gen, dtype=dtype)
    return spline, params


# ----------------------------------------------------------------- splines
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spline_round_trip_inside_outside_and_at_knots(dtype):
    spline, params = _spline_and_params(7, dtype)
    xk, yk, *_ = spline._spline(params)
    # Per row: every knot, random interior points, the boundaries and points
    # just outside them, and far-out values on both sides.
    gen = torch.Generator().manual_seed(2)
    interior = (torch.rand(7, 20, generator=gen, dtype=dtype) * 2 - 1) * BOUND
    edges = torch.tensor([-BOUND - 1e-4, BOUND + 1e-4, -50.0, 50.0, -1e4, 1e4], dtype=dtype)
    x = torch.cat([xk, interior, edges.expand(7, -1)], dim=1)
    p = params[:, None, :].expand(*x.shape, -1)
    z, ladj = spline.forward(x, p)
    x_back, ladj_inv = spline.inverse(z, p)
    # Where the spline is nearly flat, x is determined by z only up to the
    # rounding of z divided by the slope: that is the achievable accuracy.
    # Near the steep end of a strongly curved bin the quadratic's root adds
    # up to ~250 eps of the bin's width (measured on 140,000 random points).
    eps = torch.finfo(dtype).eps
    bin_width = xk.diff(dim=-1).gather(1, spline._bin(xk[:, None, :], x.clamp(-BOUND, BOUND)))
    achievable = 1e-5 + 8 * eps * (1 + z.abs()) * torch.exp(-ladj) + 300 * eps * bin_width
    assert bool(((x_back - x).abs() <= achievable).all())
    # The other direction is well conditioned everywhere: z comes back up to
    # its rounding and the slope times the root's error.
    z_back, ladj_back = spline.forward(x_back, p)
    z_error = 1e-5 + 1e-6 * z.abs() + torch.exp(ladj) * 300 * eps * bin_width
    assert bool(((z_back - z).abs() <= z_error).all())
    # The log-slope changes fast near a curved bin's steep end: float32 moves it by 1e-4 there.
    torch.testing.assert_close(
        ladj_inv, -ladj_back, atol=1e-4 if dtype == torch.float32 else 1e-5, rtol=1e-5
    )
    # Knots map to knots; the interval maps onto itself; the tails are the identity.
    torch.testing.assert_close(z[:, : xk.shape[1]], yk, atol=1e-5, rtol=1e-6)
    assert bool((z[:, :-6].abs() <= BOUND + 1e-4 + 1e-6).all())
    torch.testing.assert_close(z[:, -4:], x[:, -4:])
    assert bool((ladj[:, -4:] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spelled_out_softmax_matches_torch_with_gradients(dtype):
    # Large logits too: the maximum is subtracted before exp (no overflow).
    gen = torch.Generator().manual_seed(0)
    raw = (
        torch.randn(64, 5, 8, generator=gen, dtype=dtype)
        * torch.tensor([1.0, 50.0, 500.0, 1e-3, 10.0], dtype=dtype)[:, None]
    )
    mine = raw.clone().requires_grad_()
    ref = raw.clone().requires_grad_()
    weights = torch.randn(64, 5, 8, generator=gen, dtype=dtype)
    (_softmax(mine) * weights).sum().backward()
    (torch.softmax(ref, dim=-1) * weights).sum().backward()
    torch.testing.assert_close(_softmax(raw), torch.softmax(raw, dim=-1))
    torch.testing.assert_close(mine.grad, ref.grad)


def test_spline_is_smooth_at_the_boundaries():
    # Boundary derivative 1 matches the identity tails: value and slope continuous.
    spline, params = _spline_and_params(5, torch.float64)
    x = torch.tensor([-BOUND - 1e-9, -BOUND, -BOUND + 1e-9, BOUND - 1e-9, BOUND, BOUND + 1e-9])
    x = x.double().expand(5, -1)
    z, ladj = spline.forward(x, params[:, None, :].expand(5, 6, -1))
    torch.testing.assert_close(z, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(ladj[:, [1, 4]], torch.zeros(5, 2, dtype=torch.float64))


def test_spline_zero_parameters_are_the_identity():
    spline, params = _spline_and_params(3, torch.float64)
    x = torch.linspace(-5, 5, 41, dtype=torch.float64).expand(3, -1)
    z, ladj = spline.forward(x, torch.zeros(*x.shape, spline.n_params, dtype=torch.float64))
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj))


@pytest.mark.parametrize("variant", ["autoregressive", "coupling"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("far", [1e4, 1e10])
def test_nsf_far_inputs_have_finite_density_and_gradients(variant, dtype, far):
    d = 4
    t = build_transform("nsf", d, n_layers=3, hidden_units=(16, 16), variant=variant)
    _randomize(t, 0.3)
    flow = Flow(t, StandardNormal(d)).to(dtype)
    x = torch.randn(6, d, dtype=dtype)
    x[0, 0], x[1, 1], x[2, 2], x[3, 3] = far, -far, far, -far
    x[4] = far
    x.requires_grad_(True)
    logp = flow.log_prob(x)
    assert bool(torch.isfinite(logp).all())
    logp.sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    for name, p in flow.named_parameters():
        assert bool(torch.isfinite(p.grad).all()), name


def test_nsf_estimator_scores_far_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    est = FlowDensity(kind="nsf", n_layers=2, hidden_units=16, max_iter=5, random_state=0).fit(X)
    scores = est.score_samples(np.array([[1e10, 0, 0], [0, -1e4, 0], [0.1, 0.2, 0.3]]))
    assert np.isfinite(scores).all()
    assert scores[0] < scores[1] < scores[2]


def test_nsf_options_are_validated():
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match="variant"):
        FlowDensity(kind="nsf", kind_options={"variant": "spline"}).fit(X)
    with pytest.raises(ValueError, match="n_bins"):
        FlowDensity(kind="nsf", kind_options={"n_bins": 1}).fit(X)
    # (The bins' minimum width is no kind option: the message says what to set.)
    with pytest.raises(ValueError, match="n_bins=1000 bins .* use at most 999 bins"):
        FlowDensity(kind="nsf", kind_options={"n_bins": 1000}).fit(X)
    # (1e30: float32 spline bins that wide invert to NaN.)
    for bound in (0, float("inf"), float("nan"), 1e30, 101, True):
        with pytest.raises(ValueError, match=r"tail_bound must be a number in \(0, 100\]"):
            FlowDensity(kind="nsf", kind_options={"tail_bound": bound}).fit(X)


def _check_sample_moments(est, X, mean_atol=0.1):
    S = est.sample(4000, random_state=1)
    std = X.std(0)
    # Tolerances are well above the Monte-Carlo error of 4000 samples (~2% of
    # a std for the mean, ~3% for a variance) and well below what a wrong or
    # badly fitted flow produces (a Gaussian base alone misses the skew and
    # the bimodality, a sampling bug misses everything).
    np.testing.assert_allclose((S.mean(0) - X.mean(0)) / std, 0, atol=mean_atol)
    np.testing.assert_allclose(np.cov(S.T) / np.outer(std, std), np.corrcoef(X.T), atol=0.12)
    return S


@pytest.mark.parametrize("variant", ["autoregressive", "coupling"])
def test_fitted_nsf_samples_match_training_moments(variant):
    # Bimodal first column, a curved (banana) dependence and a different scale
    # and offset per column.
    rng = np.random.default_rng(0)
    a = rng.choice([-2.0, 2.0], size=1500) + 0.5 * rng.normal(size=1500)
    b = 0.5 * a**2 + 0.5 * rng.normal(size=1500)
    c = a - b + rng.normal(size=1500)
    X = np.column_stack([a, b, c]) * [1.0, 2.0, 3.0] + [5, -1, 0]
    est = FlowDensity(
        kind="nsf",
        n_layers=3,
        hidden_units=32,
        max_iter=40,
        random_state=0,
        kind_options={"variant": variant},
    ).fit(X)
    # Three coupling layers leave the banana column's mean 0.08-0.12 std high
    # (measured over seeds, also when trained to convergence); autoregressive
    # layers fit it within the Monte-Carlo error.
    S = _check_sample_moments(est, X, mean_atol=0.15 if variant == "coupling" else 0.1)
    # Bimodality: few samples in the gap between the modes of the first column.
    assert np.mean(np.abs(S[:, 0] - 5) < 0.5) < 0.1


def test_wide_tail_bound_reproduces_a_heavy_tail():
    # An exponential column has ~2% of its rows beyond 3 standard deviations,
    # where the spline is the identity; tail_bound=5 leaves room for them.
    rng = np.random.default_rng(0)
    e = rng.exponential(size=(1500, 1))
    g = rng.normal(size=(1500, 2))
    X = np.hstack([e, g[:, :1] + e, 0.5 * g[:, 1:] - 0.8 * e]) * [1.0, 2.0, 3.0] + [5, -1, 0]
    est = FlowDensity(
        kind="nsf",
        n_layers=3,
        hidden_units=32,
        max_iter=40,
        random_state=0,
        kind_options={"tail_bound": 5.0},
    ).fit(X)
    S = _check_sample_moments(est, X)
    # The exponential's skewness (2; a Gaussian has 0) and its hard floor at 5.
    s0 = (S[:, 0] - S[:, 0].mean()) / S[:, 0].std()
    assert np.mean(s0**3) > 1.2
    assert np.mean(S[:, 0] < 5 - 0.2) < 0.03


# ------------------------------------------------------------------ planar
def _adversarial_planar(d: int, dtype: torch.dtype) -> Planar:
    layer = Planar(d).to(dtype)
    with torch.no_grad():
        layer.w.copy_(torch.linspace(-2, 3, d))
        layer.u.copy_(-40 * layer.w)  # w . u far below -1: invertible only via u_hat
        layer.b.fill_(0.7)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_planar_constraint_keeps_layer_invertible(dtype):
    layer = _adversarial_planar(5, dtype)
    with torch.no_grad():
        u_hat, uw = layer._u_hat()
    assert float(uw) >= -1 + 0.9e-3
    torch.testing.assert_close(uw, layer.w @ u_hat, atol=1e-5, rtol=1e-5)
    # Along the w direction the layer is strictly increasing: f is injective.
    s = torch.linspace(-10, 10, 4001, dtype=dtype)
    x = s[:, None] * layer.w / layer.w.norm()
    z, ladj = layer(x)
    assert bool((torch.diff(z @ layer.w) > 0).all())
    assert bool(torch.isfinite(ladj).all())


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_planar_inverse_is_exact_on_extreme_inputs(dtype, rtol):
    d = 5
    layer = _adversarial_planar(d, dtype)
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([1e-8, 1e-3, 1.0, 10.0, 1e3, 1e6, 1e10], dtype=dtype)
    z = torch.randn(len(scales), 40, d, generator=gen, dtype=dtype) * scales[:, None, None]
    z = z.reshape(-1, d)
    with torch.no_grad():
        x, ladj_inv = layer.inverse(z)
        z_back, ladj = layer(x)
    scale = 1 + z.abs().amax(1, keepdim=True)
    assert float(((z_back - z).abs() / scale).max()) < rtol
    # log-dets agree to the precision the inputs' magnitude allows.
    tol = 1e3 * torch.finfo(dtype).eps * (1 + z.abs().amax(1))
    assert bool(((ladj_inv + ladj).abs() <= tol).all())
    assert bool(torch.isfinite(ladj).all())


def test_planar_solver_refuses_to_return_an_unconverged_root():
    target = torch.zeros(3)
    with pytest.raises(RuntimeError, match="did not converge"):
        solve_planar(target, torch.tensor(float("nan")), torch.tensor(0.0))


# --------------------------------------------------------------------- iaf
def _made_calls(transform: torch.nn.Module) -> list[int]:
    calls = [0]
    for m in transform.modules():
        if isinstance(m, MADE):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("kind", ["iaf", "maf"])
def test_autoregressive_slow_direction_costs_one_pass(kind):
    # The fast direction (IAF's sampling, MAF's density) is one MADE pass
    # per layer. On a batch this large the slow one solves D steps, each
    # computing only the hidden units its inputs allow: their matrix products
    # together cost at most one pass (the D whole passes of a fixed-point
    # iteration, used for small batches, cost D times more).
    d, n_layers, n = 5, 3, 4096
    t = build_transform(kind, d, n_layers=n_layers, hidden_units=(64,))
    _randomize(t, 0.3)
    flow = Flow(t, StandardNormal(d)).double()
    calls = _made_calls(t)
    x = torch.randn(n, d, dtype=torch.float64)
    directions = [lambda: flow.sample(n), lambda: flow.log_prob(x)]
    fast_direction, slow_direction = directions if kind == "iaf" else directions[::-1]
    with torch.no_grad():
        with FlopCounterMode(display=False) as fast:
            fast_direction()
        assert calls[0] == n_layers
        calls[0] = 0
        with FlopCounterMode(display=False) as slow:
            out = slow_direction()
        assert calls[0] == 0
    assert 0 < slow.get_total_flops() <= fast.get_total_flops()
    assert bool(torch.isfinite(out).all())
