"""Continuous normalizing flows (kind="cnf"): exactness, estimators, training."""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.stats import multivariate_normal
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from skflow import FlowDensity
from skflow.engine import Flow, StandardNormal, build_transform, ode
from skflow.engine.flows import cnf as cnf_module
from skflow.engine.ode import Dynamics, TimeMLP, draw_probes, ot_pairing
from skflow.engine.transforms import Compose


def _cnf(d: int, **options) -> torch.nn.Module:
    return build_transform("cnf", d, n_layers=1, hidden_units=(), **options).double()


def _set_linear_field(cnf, A: torch.Tensor, b: torch.Tensor | None = None) -> None:
    """With no hidden layers the field is ``f(x, t) = W [x, t] + c``: make it ``A x``."""
    d = A.shape[0]
    out = cnf.blocks[0].field.out
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:, :d] = A
        out.bias.zero_()
        if b is not None:
            out.bias.copy_(b)


def _random_field_cnf(d: int, scale: float = 0.3, n_layers: int = 1, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    cnf = build_transform("cnf", d, n_layers=n_layers, hidden_units=(16, 16), **options)
    cnf = cnf.double()
    with torch.no_grad():
        for p in cnf.parameters():
            p.copy_(scale * torch.randn_like(p))
    return cnf.eval()


def test_linear_field_matches_analytic_density():
    # dx/dt = A x  =>  x(1) = expm(A) x(0), so z = expm(-A) x and
    # log p(x) = log N(z) - tr(A), exactly.
    d = 3
    rng = np.random.default_rng(0)
    A = rng.normal(scale=0.7, size=(d, d))
    cnf = _cnf(d, rtol=1e-10, atol=1e-10).eval()
    _set_linear_field(cnf, torch.tensor(A))
    flow = Flow(cnf, StandardNormal(d)).double()
    x = rng.normal(size=(50, d)) * 2
    z_true = x @ expm(-A).T
    logp_true = multivariate_normal(np.zeros(d)).logpdf(z_true) - np.trace(A)
    with torch.no_grad():
        z, _ = cnf(torch.tensor(x))
        logp = flow.log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(z.numpy(), z_true, atol=1e-7)
    np.testing.assert_allclose(logp, logp_true, atol=1e-7)


def test_regularizers_match_analytic_integrals():
    # For f = A x with A = diag(a), integrating from the data x at t = 1:
    # x(t) = exp(a (t - 1)) x, kinetic energy int_0^1 |f|^2 dt =
    # sum a^2 x^2 (1 - exp(-2a)) / (2a), and |df/dx|_F^2 = sum a^2 at all t.
    a = torch.tensor([0.5, -0.3], dtype=torch.float64)
    cnf = _cnf(2, training="mle", trace="exact", kinetic_energy=0.7, jacobian_norm=0.2)
    _set_linear_field(cnf, torch.diag(a))
    x = torch.tensor([[1.0, -2.0], [0.3, 0.4]], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    cnf.train()
    loss = cnf.training_loss(x, zero)
    cnf.eval()
    nll = cnf.training_loss(x, zero)  # eval mode: the likelihood, unregularized
    kinetic = (a**2 * x**2 * (1 - torch.exp(-2 * a)) / (2 * a)).sum(-1)
    expected = nll + 0.7 * kinetic + 0.2 * (a**2).sum()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    # Mean of many single-probe estimates vs the exact divergence, row by row:
    # a z-test at 4.5 standard errors (fails for any bias of that size).
    torch.manual_seed(1)
    d = 4
    field = TimeMLP(d, (32, 32)).double()
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    dyn = Dynamics(field)
    x = torch.randn(6, d, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    exact = dyn(t, (x, x.new_zeros(6)))[1]
    n_draws = 4000
    probes = draw_probes(n_draws, x, probe)
    # One estimate per probe: E[eps^T J eps] with a single eps.
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        f = field(t, xg)
        (vjp,) = torch.autograd.grad(f, xg, probes, is_grads_batched=True)
    single = (vjp * probes).sum(-1)  # (n_draws, rows)
    mean, sem = single.mean(0), single.std(0) / math.sqrt(n_draws)
    assert torch.all((mean - exact).abs() < 4.5 * sem), (mean, exact, sem)
    # Dynamics averages its probes into the same estimator.
    torch.testing.assert_close(dyn(t, (x, x.new_zeros(6)), probes)[1], mean)
    # A real check: the estimates vary (so the test above can fail).
    assert torch.all(sem > 0)


def test_hutchinson_scoring_is_deterministic_and_close_to_exact():
    x = torch.randn(8, 3, dtype=torch.float64)
    exact = _random_field_cnf(3)(x)[1]
    hutch = _random_field_cnf(3, trace="hutchinson", score_probes=256)
    first, second = hutch(x)[1], hutch(x)[1]
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.equal(first, exact)  # it is an estimate...
    torch.testing.assert_close(first, exact, atol=0.3, rtol=0)  # ...with 256 probes
    # "auto" switches to Hutchinson above exact_max_dim.
    auto = _random_field_cnf(3, exact_max_dim=2, score_probes=256)
    torch.testing.assert_close(auto(x)[1], first)


def test_large_scoring_calls_are_solved_in_chunks(monkeypatch):
    x = torch.randn(12, 3, dtype=torch.float64)
    cnf = _random_field_cnf(3, solver="rk4", n_steps=8)
    with torch.no_grad():
        whole = cnf(x)
        nfe_whole = cnf.nfe["last_solve"]
        monkeypatch.setattr(cnf_module, "_SOLVE_ROWS", 5)
        chunked = cnf(x)
    # A fixed-step solve is row-independent, so chunks change nothing...
    torch.testing.assert_close(chunked, whole, atol=1e-12, rtol=0)
    # ...but cost three solves' evaluations.
    assert cnf.nfe["last_solve"] == 3 * nfe_whole


@pytest.mark.parametrize(
    "options",
    [
        {"trace": "hutchinson", "score_probes": 8},
        {"trace": "hutchinson", "score_probes": 8, "probe": "gaussian"},
        {"augment_dims": 2, "augment_samples": 8},
    ],
)
def test_a_rows_estimate_does_not_depend_on_the_rows_beside_it(options, monkeypatch):
    # Hutchinson probes and augmentation noise are drawn from each row's own
    # values: with a fixed-step solver, a row scores the same alone, in any
    # order, in any chunking; and the draws still vary from row to row.
    flow = Flow(_random_field_cnf(3, solver="rk4", n_steps=6, **options), StandardNormal(3))
    flow = flow.double()
    x = torch.randn(9, 3, dtype=torch.float64)
    with torch.no_grad():
        together = flow.log_prob(x)
        alone = torch.cat([flow.log_prob(x[i : i + 1]) for i in range(9)])
        reversed_ = flow.log_prob(x.flip(0)).flip(0)
        monkeypatch.setattr(cnf_module, "_SOLVE_ROWS", 4)
        chunked = flow.log_prob(x)
        exact = Flow(_random_field_cnf(3, solver="rk4", n_steps=6), StandardNormal(3)).double()
        gap = (together - exact.log_prob(x)).abs()
    for other in (alone, reversed_, chunked):
        torch.testing.assert_close(other, together, atol=1e-10, rtol=0)
    # Estimates, with probes that differ between rows (8 random-sign probes
    # in 3 dimensions can match the exact trace: their cross terms cancel).
    assert int((gap > 1e-4).sum()) >= 5


def test_keyed_draws_have_the_right_distribution():
    from scipy import stats

    rows = torch.randn(4000, 2)
    signs = ode.keyed_draws(rows, 3, 5, "rademacher", seed=11)
    assert signs.shape == (3, 4000, 5) and set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(signs.mean())) < 0.02
    normals = ode.keyed_draws(rows, 3, 5, "gaussian", seed=11).double()
    assert stats.kstest(normals.flatten().numpy(), "norm").pvalue > 1e-3
    # Uncorrelated across draws, coordinates and rows; another seed, others.
    flat = normals.permute(1, 0, 2).reshape(4000, 15)
    corr = np.corrcoef(flat.T.numpy())
    assert np.abs(corr - np.eye(15)).max() < 0.08
    assert abs(float((normals[:, :-1] * normals[:, 1:]).mean())) < 0.03
    other = ode.keyed_draws(rows, 3, 5, "gaussian", seed=12).double()
    assert abs(float((normals * other).mean())) < 0.03


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_gradients_match_backprop(trace, n_layers):
    x = torch.randn(16, 2, dtype=torch.float64)
    grads, nfe = [], []
    for adjoint in (False, True):
        cnf = _random_field_cnf(
            2,
            n_layers=n_layers,
            training="mle",
            trace=trace,
            adjoint=adjoint,
            rtol=1e-8,
            atol=1e-8,
        )
        cnf.train()
        torch.manual_seed(5)  # the same Hutchinson probes in both runs
        cnf.training_loss(x, x.new_zeros(16)).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in cnf.parameters()]))
        nfe.append(cnf.nfe)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    # The adjoint's backward solves are counted with the forward ones.
    forward = nfe[0]["last_solve"]
    assert nfe[0]["fit_total"] == forward
    assert nfe[1]["fit_total"] > nfe[1]["last_solve"] >= forward - 6


def test_threads_scoring_one_flow_keep_their_own_probes_and_counts():
    # Hutchinson scoring draws probes per call: two threads scoring the same
    # flow at once must each get their single-threaded result.
    from concurrent.futures import ThreadPoolExecutor

    cnf = _random_field_cnf(3, trace="hutchinson", score_probes=8)
    batches = [torch.randn(n, 3, dtype=torch.float64) for n in (5, 9, 5, 9, 7, 11)]
    with torch.no_grad():
        alone = [cnf(b)[1] for b in batches]
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda b: cnf(b)[1], batches * 4))
    # (Equal up to rounding: BLAS may sum in another order in another thread;
    # another call's probes would move scores by about 0.1.)
    for got, want in zip(together, alone * 4, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_augmented_density_integrates_to_one():
    # Noise-padded augmentation: the importance-weighted estimate is a density
    # on the data space (a zero-padded joint density would not be).
    cnf = _random_field_cnf(1, augment_dims=1, augment_samples=64, scale=0.5)
    flow = Flow(cnf, StandardNormal(1)).double()
    grid = torch.linspace(-9, 9, 361, dtype=torch.float64)[:, None]
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    mass = float(torch.trapezoid(density, grid[:, 0]))
    assert 0.95 < mass < 1.02
    # Unlike N(0, 1): the field moved the mass.
    gaussian = torch.exp(-0.5 * grid[:, 0] ** 2) / math.sqrt(2 * math.pi)
    assert float((density - gaussian).abs().max()) > 0.01


def test_augmented_untrained_flow_is_exact():
    # At initialization the field is zero, a is independent of x, and the
    # importance-weighted estimate equals the exact log N(x).
    cnf = _cnf(3, augment_dims=2).eval()
    flow = Flow(cnf, StandardNormal(3)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), StandardNormal(3).double().log_prob(x))


def _moons(n, seed):
    return make_moons(n, noise=0.05, random_state=seed)[0]


@pytest.mark.parametrize("training", ["flow_matching", "mle"])
def test_fit_reports_nfe_and_round_trips(training):
    X = _moons(400, 0)
    est = FlowDensity(
        "cnf",
        n_layers=1,
        hidden_units=(32, 32),
        max_iter=4,
        kind_options={"training": training},
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    assert est.nfe_["last_solve"] > 0
    if training == "mle":
        assert est.nfe_["fit_total"] > 0 and est.nfe_["fit_per_solve"] > 0
    else:  # simulation-free: no ODE solved in training
        assert est.nfe_["fit_total"] == 0
    # Default tolerances: data -> latent -> data within 1e-3.
    assert est.reconstruction_error_ <= 1e-3
    assert np.all(np.isfinite(est.score_samples(X[:20])))
    assert est.sample(5, random_state=0).shape == (5, 2)
    np.testing.assert_array_equal(est.sample(5, random_state=0), est.sample(5, random_state=0))


@pytest.mark.parametrize("training", ["flow_matching", "mle"])
def test_augmented_fit_scores_and_samples(training):
    X = _moons(200, 0)
    est = FlowDensity(
        "cnf",
        n_layers=1,
        hidden_units=16,
        max_iter=2,
        kind_options={"training": training, "augment_dims": 2, "augment_samples": 4},
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    scores = est.score_samples(X[:10])
    assert np.all(np.isfinite(scores))
    np.testing.assert_array_equal(scores, est.score_samples(X[:10]))  # fixed draws
    samples = est.sample(6, random_state=1)
    assert samples.shape == (6, 2)
    np.testing.assert_array_equal(samples, est.sample(6, random_state=1))
    assert not np.array_equal(samples, est.sample(6, random_state=2))


def test_refit_as_another_kind_drops_nfe():
    X = _moons(100, 0)
    est = FlowDensity("cnf", n_layers=1, hidden_units=8, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert "fit_total" in est.fit(X).nfe_
        assert not hasattr(est.set_params(kind="maf").fit(X), "nfe_")


def test_fit_is_reproducible():
    X = _moons(200, 0)
    est = FlowDensity("cnf", n_layers=1, hidden_units=16, max_iter=2, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = est.fit(X).score_samples(X[:10])
        b = est.fit(X).score_samples(X[:10])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"training": "sgd"}, "training"),
        ({"solver": "rk45"}, "solver"),
        ({"rtol": 0}, "rtol"),
        ({"rtol": float("inf")}, r"rtol must be a number in \(0, 1\]"),
        ({"training": "mle", "kinetic_energy": float("inf")}, "kinetic_energy must be finite"),
        # Finer than float32 resolves: fit never returned at 1e-20.
        ({"rtol": 1e-20, "atol": 1e-20}, r"more precision than torch.float32 holds: .*4.8e-07"),
        ({"augment_dims": -1}, "augment_dims"),
        ({"kinetic_energy": 0.1}, "flow matching"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"coupling": "sinkhorn"}, "coupling"),
        ({"adjoint": "no"}, "adjoint must be True or False"),
        # Settings that do nothing alongside the others: likely mistaken.
        ({"training": "flow_matching", "adjoint": True}, "adjoint has no effect with training="),
        ({"solver": "rk4", "rtol": 1e-3}, "rtol has no effect with the fixed-step solver 'rk4'"),
        ({"n_steps": 8}, "n_steps has no effect with the adaptive solver 'dopri5'"),
        ({"augment_samples": 4}, "augment_samples has no effect with augment_dims=0"),
        ({"training": "mle", "coupling": "ot"}, "coupling has no effect with training='mle'"),
        ({"adjoint": 2}, "adjoint must be True or False"),
    ],
)
def test_bad_options_say_what_to_do(options, match):
    with pytest.raises(ValueError, match=match):
        FlowDensity("cnf", kind_options=options).fit(np.random.default_rng(0).normal(size=(20, 2)))


@pytest.mark.parametrize(
    "options, cause",
    [
        ({"training": "mle", "solver": "euler", "n_steps": 2}, "the fixed-step solver 'euler'"),
        ({"training": "mle", "rtol": 0.1, "atol": 0.1}, "tolerances rtol=0.1"),
    ],
)
def test_maximum_likelihood_through_a_coarse_solve_warns(options, cause):
    # Training exploits the solver's error: a thin ring's held-out
    # log-likelihood came out at +3.3 nats per row (-1.4 with dopri5), its
    # density integrating to 5e10, and no warning said so.
    X = np.random.default_rng(0).normal(size=(40, 2))
    est = FlowDensity("cnf", n_layers=1, hidden_units=8, max_iter=1, kind_options=options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match=f"maximum likelihood with {cause}.*too high"):
            est.fit(X)


def _pair_cost(x0, x1):
    return (x0 - x1).square().sum(-1)


def test_ot_pairing_is_the_optimal_assignment_within_each_group():
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen)
    paired = x0[ot_pairing(x0, x1, group=6)]
    for rows in (slice(0, 6), slice(6, 12)):
        # The same noise rows, reordered within the group...
        assert sorted(map(tuple, paired[rows].tolist())) == sorted(map(tuple, x0[rows].tolist()))
        # ...at the smallest total squared distance of all 720 orders.
        best = min(
            _pair_cost(x0[rows][list(order)], x1[rows]).sum()
            for order in itertools.permutations(range(6))
        )
        torch.testing.assert_close(_pair_cost(paired[rows], x1[rows]).sum(), best)


def test_ot_pairing_splits_large_batches_into_balanced_blocks(monkeypatch):
    monkeypatch.setattr(ode, "OT_BLOCK", 4)
    gen = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(10, 2, generator=gen), torch.randn(10, 2, generator=gen)
    paired = x0[ot_pairing(x0, x1, group=10)]
    # Blocks of 4, 3, 3 rows (no remainder block of 2): each row keeps its block.
    for rows in (slice(0, 4), slice(4, 7), slice(7, 10)):
        assert sorted(map(tuple, paired[rows].tolist())) == sorted(map(tuple, x0[rows].tolist()))
    # Pairing by transport shortens the noise-to-data paths flow matching regresses on.
    assert _pair_cost(paired, x1).sum() < _pair_cost(x0, x1).sum()


def test_flow_matching_coupling_option_reaches_the_loss(monkeypatch):
    calls = []

    def counted(x0, x1, group):
        calls.append(group)
        return torch.arange(len(x0))

    monkeypatch.setattr(cnf_module, "ot_pairing", counted)
    X = _moons(64, 0)
    for coupling, expected in (("independent", 0), ("ot", 1)):
        calls.clear()
        est = FlowDensity("cnf", hidden_units=8, max_iter=1, batch_size=64, early_stopping=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.set_params(kind_options={"coupling": coupling}).fit(X)
        assert len(calls) == expected, coupling


def test_validation_pairings_are_computed_once(monkeypatch):
    calls = []

    def counted(x0, x1, group):
        calls.append(group)
        return ot_pairing(x0, x1, group)

    monkeypatch.setattr(cnf_module, "ot_pairing", counted)
    torch.manual_seed(0)
    flow = _cnf(2).eval()
    x = torch.randn(30, 2, dtype=torch.float64)
    first = flow.training_loss(x, torch.zeros(30, dtype=torch.float64))
    torch.testing.assert_close(flow.training_loss(x, torch.zeros(30, dtype=torch.float64)), first)
    assert len(calls) == 1  # the same rows and draws: paired once
    flow.training_loss(x + 1, torch.zeros(30, dtype=torch.float64))
    assert len(calls) == 2  # other rows: paired anew
    flow.train().training_loss(x, torch.zeros(30, dtype=torch.float64))
    flow.training_loss(x, torch.zeros(30, dtype=torch.float64))
    assert len(calls) == 4  # training draws are fresh at every step
    flow.eval()
    flow.seed.fill_(int(flow.seed) + 1)
    flow.training_loss(x, torch.zeros(30, dtype=torch.float64))
    assert len(calls) == 5  # another seed draws other noise: paired anew
    # The memo is not carried into copies and pickles.
    assert flow._fixed_pairings and not copy.deepcopy(flow)._fixed_pairings
    assert not pickle.loads(pickle.dumps(flow))._fixed_pairings


def test_flow_matching_keeps_the_weight_average(monkeypatch):
    # Training validates and keeps the exponential average of the weights:
    # over a few steps the average lags behind the raw weights, towards the
    # zero-initialized output layer.
    from skflow.engine import training as training_module

    X = np.random.default_rng(0).normal(size=(200, 2)) * [1.0, 3.0]
    swaps = []
    swap = training_module._ExponentialAverage.swap
    monkeypatch.setattr(
        training_module._ExponentialAverage, "swap", lambda self: swaps.append(1) or swap(self)
    )

    def last_layer_norm(decay, early_stopping=True):
        est = FlowDensity(
            "cnf",
            n_layers=1,  # (one block: every epoch improves on this seed)
            max_iter=5,
            early_stopping=early_stopping,
            random_state=0,
            kind_options={"ema_decay": decay},
        ).fit(X)
        field = est.flow_.transform.transforms[-1].blocks[0].field
        return float(list(field.parameters())[-2].detach().norm())

    averaged, raw = last_layer_norm(0.999), last_layer_norm(0.0)
    assert len(swaps) == 2 * 5  # to the average and back, every epoch, only when asked
    assert averaged < 0.95 * raw
    # Without validation the final weights are kept: the averaged ones.
    swaps.clear()
    averaged, raw = last_layer_norm(0.999, False), last_layer_norm(0.0, False)
    assert len(swaps) == 2 * 5 + 1
    assert averaged < 0.95 * raw


def test_a_bare_continuous_flow_keeps_its_objective_and_average():
    # A Flow over the continuous flow itself (no Compose around it) trains
    # it the same way: its own loss and its moving average.
    from skflow.engine import train_flow

    cnf = build_transform("cnf", 2, n_layers=1, hidden_units=(8, 8))
    for flow in (Flow(cnf, StandardNormal(2)), Flow(Compose(cnf), StandardNormal(2))):
        assert flow.own_objective is cnf and flow.ema_decay == cnf.ema_decay > 0
    X = torch.randn(64, 2)
    result = train_flow(
        Flow(cnf, StandardNormal(2)), X, None, max_iter=2, batch_size=32, learning_rate=1e-3
    )
    assert result.n_iter == 2 and cnf.nfe["fit_total"] == 0  # flow matching: no solve


def test_ema_average_and_swap():
    from skflow.engine.training import _ExponentialAverage

    p = torch.nn.Parameter(torch.zeros(3))
    ema = _ExponentialAverage([p], decay=0.5)
    with torch.no_grad():
        p.fill_(4.0)
    ema.update()  # decay min(0.5, 2/11) = 2/11: average 4 * 9/11
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.full((3,), 4 * 9 / 11))
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.full((3,), 4.0))


def _held_out_ll(training, X_train, X_test, **params):
    est = FlowDensity("cnf", kind_options={"training": training}, random_state=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X_train)
    return est.score(X_test)


# Flow matching's loss plateaus within its own noise long before its
# likelihood does: it gets more patience (and more, cheaper epochs).
SLOW_FIT = {
    "flow_matching": {"max_iter": 1000, "n_iter_no_change": 100, "learning_rate": 3e-3},
    "mle": {"max_iter": 60, "learning_rate": 3e-3},
}


@pytest.mark.slow
@pytest.mark.parametrize("training", ["flow_matching", "mle"])
def test_moons_fitted_well(training):
    X_train, X_test = _moons(2000, 0), _moons(1000, 1)
    # Without the fixed marginal map: on 2-D moons its per-feature bands
    # cost ~0.1 nats (maf -0.58 vs -0.47), and this tests the vector field.
    ll = _held_out_ll(
        training,
        X_train,
        X_test,
        n_layers=1,
        hidden_units=(64, 64),
        gaussianize=False,
        **SLOW_FIT[training],
    )
    # The sharp two-moons density: a single Gaussian scores about -1.9 nats
    # and a 4-component mixture -1.06; a fitted flow does clearly better.
    gmm4 = GaussianMixture(4, random_state=0).fit(X_train).score(X_test)
    assert ll > gmm4 + 0.2, (ll, gmm4)


@pytest.mark.slow
@pytest.mark.parametrize("training", ["flow_matching", "mle"])
def test_gaussian_5d_fitted_well(training):
    rng = np.random.default_rng(0)
    L = rng.normal(size=(5, 5)) * 0.5 + np.eye(5)
    mean = rng.normal(size=5) * 3
    X = rng.normal(size=(3000, 5)) @ L.T + mean
    X_train, X_test = X[:2000], X[2000:]
    truth = multivariate_normal(mean, L @ L.T).logpdf(X_test).mean()
    ll = _held_out_ll(
        training, X_train, X_test, n_layers=1, hidden_units=(32, 32), **SLOW_FIT[training]
    )
    assert abs(ll - truth) < 0.1, (ll, truth)


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_flow_matching_blocks_train_on_their_time_slices(coupling):
    """With K blocks, block k regresses on times in [k/K, (k+1)/K] only, on a
    fixed share of the batch (static slices: no boolean masks, which wait
    for a GPU), and every block's weights get a gradient."""
    torch.manual_seed(0)
    cnf = build_transform(
        "cnf", 2, n_layers=3, hidden_units=(8,), training="flow_matching", coupling=coupling
    )
    with torch.no_grad():  # off the zero start, where inner layers get no gradient
        for p in cnf.parameters():
            p.normal_(0.0, 0.3)
    seen: dict[int, list] = {k: [] for k in range(3)}
    for k, block in enumerate(cnf.blocks):
        block.field.register_forward_hook(lambda m, args, out, k=k: seen[k].append(args[0]))
    cnf.train()
    loss = cnf.training_loss(torch.randn(90, 2), torch.zeros(90)).mean()
    loss.backward()
    for k in range(3):
        (t,) = seen[k]
        assert t.shape == (30, 1)
        assert bool(((t >= k / 3) & (t <= (k + 1) / 3)).all())
    for name, p in cnf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("failing_call", [2, 3])
def test_ffjord_solver_underflow_is_divergence_not_a_crash(failing_call, monkeypatch):
    """When the field blows up, torchdiffeq's adaptive solver asserts
    "underflow in dt"; in a training step (call 2, after the starting
    point's validation) or a validation solve (call 3) that becomes the
    usual divergence: best weights restored, a ConvergenceWarning, a usable
    model."""
    calls = [0]
    original = cnf_module.odeint

    def odeint(*args, **kwargs):
        calls[0] += 1
        if calls[0] == failing_call:
            raise AssertionError("underflow in dt 0.0")
        return original(*args, **kwargs)

    monkeypatch.setattr(cnf_module, "odeint", odeint)
    X = np.random.RandomState(0).randn(40, 2)
    est = FlowDensity(
        "cnf",
        n_layers=1,
        hidden_units=8,
        max_iter=3,
        batch_size=40,
        random_state=0,
        kind_options={"training": "mle"},
    )
    with pytest.warns(ConvergenceWarning, match="diverged"):
        est.fit(X)
    assert np.isfinite(est.score_samples(X)).all()


def test_rows_beyond_the_solver_have_log_density_minus_inf():
    # Beyond 1/eps an adaptive step underflows: such rows skip the solve,
    # with a NaN latent, and Flow.log_prob gives them -inf (not NaN); the
    # rows beside them are scored as if alone.
    flow = Flow(_random_field_cnf(2), StandardNormal(2)).double()
    x = torch.tensor([[1e17, 0.0], [0.5, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        scores = flow.log_prob(x)
        alone = flow.log_prob(x[1:])
    assert scores[0] == -math.inf
    torch.testing.assert_close(scores[1:], alone)


def test_solver_underflow_when_scoring_says_so(monkeypatch):
    """A fitted model whose solve underflows raises a FloatingPointError
    that says what happened, instead of scoring every row of the batch -inf
    (or sampling NaN)."""
    X = np.random.RandomState(0).randn(40, 2)
    est = FlowDensity("cnf", n_layers=1, hidden_units=8, max_iter=2, random_state=0).fit(X)

    def odeint(*args, **kwargs):
        raise AssertionError("underflow in dt 0.0")

    monkeypatch.setattr(cnf_module, "odeint", odeint)
    for call in (lambda: est.score_samples(X), lambda: est.sample(3)):
        with pytest.raises(FloatingPointError, match="step size underflowed.*learning_rate"):
            call()


def test_adjoint_backward_underflow_is_divergence(monkeypatch):
    """With adjoint=True the backward pass solves an ODE of its own, inside
    loss.backward(); its underflow is divergence too."""
    import torchdiffeq._impl.adjoint as adjoint_module

    original = adjoint_module.odeint
    calls = [0]

    def odeint(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the forward solve of step 1 is call 1, its backward call 2
            raise AssertionError("underflow in dt 0.0")
        return original(*args, **kwargs)

    monkeypatch.setattr(adjoint_module, "odeint", odeint)
    X = np.random.RandomState(0).randn(40, 2)
    est = FlowDensity(
        "cnf", n_layers=1, hidden_units=8, max_iter=3, batch_size=40, random_state=0,
        kind_options={"training": "mle", "adjoint": True},
    )  # fmt: skip
    with pytest.warns(ConvergenceWarning, match="diverged"):
        est.fit(X)
    assert calls[0] >= 2 and np.isfinite(est.score_samples(X)).all()


def test_underflow_outside_training_steps_does_not_lose_the_fit(monkeypatch):
    """An underflow in the starting point's validation solve is an
    unusable start (training goes on), and one in the post-fit round trip
    is an infinite reconstruction error (an InvertibilityWarning): neither
    makes fit fail and throw the trained model away."""
    from skflow.exceptions import InvertibilityWarning

    original = cnf_module.odeint
    X = np.random.RandomState(0).randn(40, 2)

    def fit_with(fails):
        calls = [0]

        def odeint(func, y0, t, **kwargs):
            calls[0] += 1
            if fails(calls[0], t):
                raise AssertionError("underflow in dt 0.0")
            return original(func, y0, t, **kwargs)

        monkeypatch.setattr(cnf_module, "odeint", odeint)
        est = FlowDensity(
            "cnf", n_layers=1, hidden_units=8, max_iter=2, batch_size=40, random_state=0,
            kind_options={"training": "mle"},
        )  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(X)
        return est, [w.category for w in caught]

    est, _ = fit_with(lambda call, t: call == 1)  # the starting point's validation
    assert est.best_epoch_ >= 1 and np.isfinite(est.score_samples(X)).all()
    # Solves towards the data (t increasing) run only in the round-trip check.
    est, caught = fit_with(lambda call, t: bool(t[0] < t[-1]))
    assert est.reconstruction_error_ == np.inf and InvertibilityWarning in caught


def test_flow_matching_batches_hold_a_row_per_block():
    X = np.random.RandomState(0).randn(40, 2)
    with pytest.raises(ValueError, match="3 blocks .* minibatches hold 2 rows: raise batch_size"):
        FlowDensity("cnf", n_layers=3, hidden_units=8, batch_size=2, max_iter=1).fit(X)
    # Batches never exceed the training rows: more rows are the remedy then.
    with pytest.raises(ValueError, match="only 2 training rows .*: train on more rows"):
        FlowDensity("cnf", n_layers=3, hidden_units=8, max_iter=1).fit(X[:3])
    # FFJORD solves each block on every row: no such limit.
    FlowDensity(
        "cnf", n_layers=3, hidden_units=8, batch_size=2, max_iter=1,
        kind_options={"training": "mle", "solver": "rk4", "n_steps": 2},
    ).fit(X[:6])  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_estimator_scores_of_an_augmented_cnf_do_not_depend_on_the_batch(dtype):
    # Through FlowDensity the whitening matmul in front of the cnf rounds a
    # row differently in batches of other sizes: the row's noise must not
    # change with it.
    from sklearn.datasets import load_wine

    X = load_wine().data[:, :3]
    est = FlowDensity(
        "cnf", n_layers=1, hidden_units=8, max_iter=2, random_state=0, dtype=dtype,
        kind_options={"augment_dims": 2, "solver": "rk4", "n_steps": 8},
    ).fit(X)  # fmt: skip
    together = est.score_samples(X[:40])
    alone = np.array([est.score_samples(X[i : i + 1])[0] for i in range(40)])
    tol = 1e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(alone, together, atol=tol, rtol=0)


def test_scores_and_fits_under_anomaly_detection():
    # A user hunting NaNs turns on torch's anomaly detection, whose checks
    # cannot run inside the batched vector-Jacobian products of the exact
    # divergence: the products then run one at a time, to the same values.
    X = make_moons(120, noise=0.1, random_state=0)[0]
    est = FlowDensity(kind="cnf", max_iter=2, random_state=0, hidden_units=(8,)).fit(X)
    with torch.autograd.detect_anomaly():
        scores = est.score_samples(X[:20])
        again = FlowDensity(kind="cnf", max_iter=2, random_state=0, hidden_units=(8,)).fit(X)
    np.testing.assert_allclose(scores, est.score_samples(X[:20]), rtol=1e-5)
    np.testing.assert_allclose(again.loss_curve_, est.loss_curve_, rtol=1e-5)
