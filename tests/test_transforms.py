"""Contract test for every layer and every flow kind.

Each case is a bijection with freshly randomized parameters (a zero-initialized
layer is the identity and would make these checks trivially true). Every case
must: round-trip exactly, report a log-determinant equal to ``slogdet`` of the
autograd Jacobian in both directions, and pass gradients to every parameter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skflow.engine import KINDS, Flow, StandardNormal, build_transform
from skflow.engine.flows.glow import build_glow
from skflow.engine.flows.planar import Planar
from skflow.engine.nn import MADE, MLP
from skflow.engine.splines import RationalQuadraticSplineTransformer
from skflow.engine.transforms import (
    ActNorm,
    AdditiveTransformer,
    Affine,
    AffineTransformer,
    BatchNormFlow,
    Compose,
    Coupling,
    Inverse,
    LogTails,
    LULinear,
    MaskedAutoregressive,
    Permutation,
    PiecewiseLinear,
    SigmoidAffineTransformer,
    Split,
    _search,
)

D = 4
HIDDEN = (16, 16)


def _batch_norm_with_running_stats(d: int) -> BatchNormFlow:
    # Non-trivial running averages: the eval-mode map the contract checks.
    bn = BatchNormFlow(d)
    bn.running_mean.copy_(torch.randn(d))
    bn.running_var.copy_(torch.rand(d) + 0.5)
    return bn


LAYERS = {
    "affine": lambda d: Affine(torch.randn(d), torch.rand(d) + 0.5),
    "piecewise_linear": lambda d: PiecewiseLinear(
        torch.cumsum(torch.rand(d, 12) + 0.1, -1) - 3, torch.cumsum(torch.rand(d, 12) + 0.1, -1) - 3
    ),
    "affine_whitening": lambda d: Affine(
        torch.randn(d), torch.tril(torch.randn(d, d), -1) * 0.3 + torch.diag(torch.rand(d) + 0.5)
    ),
    "permutation": lambda d: Permutation(torch.randperm(d)),
    "masked_autoregressive": lambda d: MaskedAutoregressive(d, AffineTransformer(), HIDDEN),
    "masked_autoregressive_reversed": lambda d: MaskedAutoregressive(
        d, AffineTransformer(), HIDDEN, torch.arange(d - 1, -1, -1)
    ),
    "log_tails": lambda d: LogTails(0.5),
    "coupling": lambda d: Coupling(torch.arange(d) % 2 == 0, AffineTransformer(), HIDDEN),
    # Unevenly spaced coordinates (read through index tensors, not strided views).
    "coupling_uneven_mask": lambda d: Coupling(torch.arange(d) == 2, AffineTransformer(), HIDDEN),
    "inverse": lambda d: Inverse(MaskedAutoregressive(d, AffineTransformer(), HIDDEN)),
    "spline_autoregressive": lambda d: MaskedAutoregressive(
        d, RationalQuadraticSplineTransformer(n_bins=5, tail_bound=2.0), HIDDEN
    ),
    "spline_coupling": lambda d: Coupling(
        torch.arange(d) % 2 == 0,
        RationalQuadraticSplineTransformer(n_bins=5, tail_bound=2.0),
        HIDDEN,
    ),
    "planar": lambda d: Planar(d),
    "actnorm": lambda d: ActNorm(d),
    "actnorm_image": lambda d: ActNorm(d // 2),  # 2 positions per channel
    "lu_linear": lambda d: LULinear(d),
    "lu_linear_1x1conv": lambda d: LULinear(d // 2),
    "additive_coupling": lambda d: Coupling(
        torch.arange(d) % 2 == 0, AdditiveTransformer(), HIDDEN
    ),
    "sigmoid_affine_coupling": lambda d: Coupling(
        torch.arange(d) % 2 == 0, SigmoidAffineTransformer(), HIDDEN
    ),
    "batch_norm": _batch_norm_with_running_stats,
    "split": lambda d: Split(LULinear(d // 2), d // 2),
    "glow_image": lambda d: build_glow(
        d, n_layers=2, hidden_units=(8, 8), image_shape=(d // 4, 2, 2), n_levels=1
    ),
    "compose": lambda d: Compose(
        Affine(torch.zeros(d), torch.ones(d) * 2), Permutation(torch.randperm(d))
    ),
}
# Kinds whose maps are computed numerically (ODE solves) are exact only to
# their tolerances, set here far below the tests' 1e-6.
KIND_OPTIONS = {"cnf": {"rtol": 1e-10, "atol": 1e-10}}
KIND_CASES = {
    f"kind={kind}": (
        lambda d, kind=kind: build_transform(
            kind, d, n_layers=3, hidden_units=HIDDEN, **KIND_OPTIONS.get(kind, {})
        )
    )
    for kind in KINDS
}
# The kinds' non-default options.
KIND_CASES.update(
    {
        f"kind={kind} {options}": (
            lambda d, kind=kind, options=options: build_transform(
                kind, d, n_layers=3, hidden_units=HIDDEN, **options
            )
        )
        for kind, options in [
            ("maf", {"batch_norm": True}),
            ("realnvp", {"batch_norm": True}),
            ("nice", {"batch_norm": True}),
            ("nsf", {"variant": "coupling"}),
            ("nsf", {"n_bins": 3, "tail_bound": 1.0}),
            ("cnf", {"solver": "rk4", "n_steps": 40}),
        ]
    }
)
CASES = {**LAYERS, **KIND_CASES}


def _make(name: str, d: int = D) -> torch.nn.Module:
    torch.manual_seed(0)
    t = CASES[name](d).double()
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    t.eval()
    return t


def _jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: fn(r[None])[0][0], row)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
    t = _make(name)
    x = torch.randn(64, D, dtype=torch.float64) * 2
    z, ladj_f = t(x)
    x_back, ladj_i = t.inverse(z)
    assert z.shape == x.shape and ladj_f.shape == (64,)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ladj_i, -ladj_f, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_logdet_matches_autograd(name, direction):
    t = _make(name)
    fn = t if direction == "forward" else t.inverse
    x = torch.randn(5, D, dtype=torch.float64)
    _, ladj = fn(x)
    torch.testing.assert_close(ladj, _jacobian_logdet(fn, x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_reach_every_parameter(name):
    t = _make(name)
    if not list(t.parameters()):
        pytest.skip(f"{name} has no trainable parameters")
    t.train()
    flow = Flow(t, StandardNormal(D)).double()
    loss = -flow.log_prob(torch.randn(32, D, dtype=torch.float64)).mean()
    loss.backward()
    for pname, p in t.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", sorted(KIND_CASES))
@pytest.mark.parametrize("d", [1, 2, 5])
def test_kinds_are_exact_at_any_width(name, d):
    # The contract above at D = 4, again at other widths: one column (no
    # conditioner input), two (a coupling conditions on one), an odd five.
    t = _make(name, d)
    x = torch.randn(4, d, dtype=torch.float64)
    z, ladj = t(x)
    torch.testing.assert_close(t.inverse(z)[0], x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ladj, _jacobian_logdet(t, x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(KIND_CASES))
@pytest.mark.parametrize("d", [1, 2, 5])
def test_kinds_sample_shapes_any_width(name, d):
    flow = Flow(_make(name, d), StandardNormal(d)).double()
    gen = torch.Generator().manual_seed(0)
    x = flow.sample(7, generator=gen)
    assert x.shape == (7, d)
    logp = flow.log_prob(x)
    assert logp.shape == (7,) and torch.isfinite(logp).all()


@pytest.mark.parametrize("name", ["kind=maf", "kind=realnvp"])
def test_chunked_sampling_matches_one_pass_and_backpropagates(name, monkeypatch):
    # Flow.sample inverts in chunks written into one output tensor: the same
    # draws as one pass, and gradients still reach the parameters through it
    # (sampling-based objectives need them).
    import skflow.engine.device as device_module

    flow = Flow(_make(name), StandardNormal(D)).double()

    def draws_and_grads():
        flow.zero_grad()
        x = flow.sample(20, generator=torch.Generator().manual_seed(0))
        x.square().sum().backward()
        return x.detach(), [p.grad.clone() for p in flow.parameters()]

    whole, whole_grads = draws_and_grads()
    monkeypatch.setattr(device_module, "eval_chunk", lambda device: 7)
    chunked, chunked_grads = draws_and_grads()
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for got, want in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert any(bool(g.abs().sum() > 0) for g in chunked_grads)


def test_marginal_cross_validation_mirrors_the_layer():
    # gaussianizing_knots picks each column's map by held-out likelihoods
    # computed in numpy: they must be the layer's, tails included.
    from skflow._preprocessing import LINEAR_TAIL, _log_marginal, _segments

    assert LINEAR_TAIL == PiecewiseLinear.LINEAR_TAIL
    x_knots = np.array([-2.0, -1.0, 0.0, 1.5, 3.0])
    z_knots = np.array([-2.0, -0.5, 0.0, 1.0, 2.0])
    x = np.array([-1e30, -1e6, -100, -30, -3, -2.5, -1, 0, 2, 3, 4, 40, 80, 1e4, 1e8, 1e30])
    expected = _log_marginal(x, x_knots, z_knots, _segments(x, x_knots))
    layer = PiecewiseLinear(torch.tensor(x_knots)[None], torch.tensor(z_knots)[None])
    z, ladj = layer(torch.tensor(x)[:, None])
    got = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi) + ladj
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-9)


def test_log_tails_is_piecewise_linear_with_two_knots():
    # The estimator's heavy-tailed latent: the elementwise LogTails must be
    # the same map as the general PiecewiseLinear with knots at +-bound and
    # no linear stretch past them.
    torch.manual_seed(0)
    x = torch.randn(500, 3, dtype=torch.float64) * 20
    edge = torch.tensor([-5.0, 5.0], dtype=torch.float64).expand(3, 2)
    general, fast = PiecewiseLinear(edge, edge), LogTails(5.0)
    general.linear_tail = 0.0
    for direction in ("forward", "inverse"):
        expected, got = getattr(general, direction)(x), getattr(fast, direction)(x)
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("n_knots", [2, 3, 5, 17, 128, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knot_search_is_searchsorted(n_knots, dtype):
    # The CPU binary search must give searchsorted's index for every value:
    # between knots, on them (ties count as not below), beyond both ends.
    torch.manual_seed(0)
    knots = torch.sort(torch.randn(3, n_knots, dtype=dtype), dim=1).values
    values = torch.cat(
        [
            torch.randn(3, 2000, dtype=dtype) * 2,
            knots,
            torch.nextafter(knots, torch.tensor(math.inf, dtype=dtype)),
            torch.nextafter(knots, torch.tensor(-math.inf, dtype=dtype)),
            torch.tensor([[math.inf, -math.inf]], dtype=dtype).expand(3, 2),
        ],
        dim=1,
    )
    # Large batches take the binary search, small ones searchsorted itself.
    for batch in (values, values[:, ::200]):
        torch.testing.assert_close(
            _search(knots, batch), torch.searchsorted(knots, batch), rtol=0, atol=0
        )


def test_piecewise_linear_passes_nan_through():
    # searchsorted sends NaN past the last knot, the binary search before the
    # first: either way the map must report NaN, not a finite value.
    knots = torch.linspace(-2.0, 2.0, 9).expand(2, 9)
    layer = PiecewiseLinear(knots, knots)
    for direction in (layer.forward, layer.inverse):
        out, ladj = direction(torch.tensor([[math.nan, 0.5]]))
        assert torch.isnan(out[0, 0]) and out[0, 1] == 0.5 and torch.isnan(ladj).all()


def test_flow_refuses_rows_of_another_shape_or_dtype():
    flow = Flow(build_transform("maf", 3, n_layers=2, hidden_units=(8,)), StandardNormal(3))
    flow.log_prob(torch.randn(5, 3))
    expected = r"rows of shape \(n, 3\) in torch.float32; got shape "
    with pytest.raises(ValueError, match=expected + r"\(5, 4\) in torch.float32"):
        flow.log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match=expected + r"\(5, 3\) in torch.float64"):
        flow.log_prob(torch.randn(5, 3, dtype=torch.float64))
    # One row without its batch axis would be read as three rows of one value.
    with pytest.raises(ValueError, match=expected + r"\(3,\) .*one row: x\[None\]"):
        flow.log_prob(torch.randn(3))
    # A base wider than its transform: caught, not silently summed over.
    narrow = Flow(build_transform("maf", 3, n_layers=2, hidden_units=(8,)), StandardNormal(4))
    with pytest.raises(ValueError, match=r"rows of shape \(n, 4\)"):
        narrow.log_prob(torch.randn(5, 3))


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.SiLU, torch.nn.ELU, torch.nn.Tanh])
@pytest.mark.parametrize("network", ["mlp", "made"])
def test_in_place_activations_give_out_of_place_values_and_gradients(network, activation):
    # Conditioners build the default ReLU in place (other activations as
    # given); autograd must see the same function as out of place.
    torch.manual_seed(0)
    make = MLP if network == "mlp" else MADE
    net = make(4, 3, (8, 8), activation=activation).double()
    for p in net.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)

    def value_and_grads():
        out = net(x)
        return [out, *torch.autograd.grad((out * out).sum(), [x, *net.parameters()])]

    got = value_and_grads()
    in_place = [m for m in net.modules() if getattr(m, "inplace", False)]
    assert bool(in_place) == (activation is torch.nn.ReLU)
    for m in in_place:
        m.inplace = False
    for a, b in zip(got, value_and_grads(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_log_tails_keep_huge_inputs_far_out_in_float32():
    x = torch.tensor([[1e30, -1e30, 3e6, 2.0]])
    z, ladj = LogTails(5.0)(x)
    expected = torch.tensor(
        [[5 + math.log1p(1e30 - 5), -5 - math.log1p(1e30 - 5), 5 + math.log1p(3e6 - 5), 2.0]]
    )
    torch.testing.assert_close(z, expected)
    assert torch.isfinite(ladj).all() and ladj.item() < -100


@pytest.mark.parametrize("n_features", [1, 2, 5, 6])
def test_coupling_strided_views_match_index_tensors(n_features):
    # Alternating masks read and write through strided views; the index
    # tensors they replace must give the same map, both directions.
    torch.manual_seed(0)
    layer = Coupling(torch.arange(n_features) % 2 == 0, AffineTransformer(), HIDDEN).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.5)
    x = torch.randn(9, n_features, dtype=torch.float64)
    views = layer(x), layer.inverse(x)
    layer._cond_cols = layer._trans_cols = None
    for got, want in zip(views, (layer(x), layer.inverse(x)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The conditioning (even) coordinates pass unchanged.
    torch.testing.assert_close(views[0][0][:, 0::2], x[:, 0::2], rtol=0, atol=0)


def test_reversed_order_masks_condition_on_later_features():
    # With order reversed, output i depends on features i+1.. only.
    torch.manual_seed(0)
    layer = MaskedAutoregressive(D, AffineTransformer(), HIDDEN, torch.arange(D - 1, -1, -1))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], torch.randn(D))
    assert torch.all(jac.tril(-1) == 0) and torch.all(jac.diagonal() != 0)
    assert torch.any(jac.triu(1) != 0)


def _fixed_point_inverse(layer, z):
    # The plain inverse of a MADE layer: after pass k the first k features
    # (in the MADE's order) are exact.
    x = torch.zeros_like(z)
    for _ in range(z.shape[-1]):
        x = layer.transformer.inverse(z, layer.made(x))[0]
    return x


@pytest.mark.parametrize(
    "n_features, hidden", [(1, (8,)), (2, (16, 16)), (5, (3,)), (7, (2, 9)), (20, (40, 7, 25))]
)
@pytest.mark.parametrize("grad", [False, True])
def test_stepwise_autoregressive_solve_matches_fixed_point(n_features, hidden, grad):
    # MADE.autoregress computes each hidden unit once, in the step where its
    # inputs are known, instead of D whole passes; hidden layers narrower than
    # D leave some steps without new units. It must solve the same equations,
    # with and without autograd (IAF trains through it), in any order.
    torch.manual_seed(0)
    spline = RationalQuadraticSplineTransformer(n_bins=4)
    order = torch.randperm(n_features)
    layer = MaskedAutoregressive(n_features, spline, hidden, order).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.5)
    z = torch.randn(3, 5, n_features, dtype=torch.float64)

    def solve(features, params):
        return spline.inverse(z[..., features], params)[0]

    with torch.set_grad_enabled(grad):
        params = layer.made.autoregress(solve, z)
    x = _fixed_point_inverse(layer, z)
    torch.testing.assert_close(params, layer.made(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(spline.inverse(z, params)[0], x, rtol=1e-10, atol=1e-10)
    if grad:
        weights = torch.randn_like(params)
        got = torch.autograd.grad((params * weights).sum(), list(layer.parameters()))
        want = torch.autograd.grad((layer.made(x) * weights).sum(), list(layer.parameters()))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("stepwise", [True, False])
@pytest.mark.parametrize("grad", [False, True])
def test_masked_autoregressive_inverse_is_exact_either_way(stepwise, grad, monkeypatch):
    # The layer picks the stepwise solve or D whole passes by batch size,
    # feature count and autograd; each way must invert forward exactly and
    # report minus its log-determinant.
    import skflow.engine.transforms as transforms

    limit = 0 if stepwise else 10**12
    monkeypatch.setattr(transforms, "_STEPWISE_MIN_WORK", limit)
    monkeypatch.setattr(transforms, "_STEPWISE_MIN_FEATURES_WITH_GRAD", limit)
    torch.manual_seed(0)
    layer = MaskedAutoregressive(6, AffineTransformer(), HIDDEN).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.3)
    passes = [0]
    layer.made.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    x = torch.randn(16, 6, dtype=torch.float64)
    z, ladj = layer(x)
    with torch.set_grad_enabled(grad):
        x_back, ladj_back = layer.inverse(z)
    assert passes[0] == (1 if stepwise else 7)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ladj_back, -ladj, rtol=1e-9, atol=1e-9)


def test_stepwise_plan_is_not_copied_and_follows_new_masks(monkeypatch):
    # The plan is derived from the masks: copies and pickles leave it out (it
    # may hold GPU index tensors), and masks loaded from another network (a
    # reversed order) are followed, not the plan of the old ones.
    import copy
    import pickle

    import skflow.engine.transforms as transforms

    monkeypatch.setattr(transforms, "_STEPWISE_MIN_WORK", 0)
    torch.manual_seed(0)
    layer = MaskedAutoregressive(5, AffineTransformer(), HIDDEN).double()
    other = MaskedAutoregressive(5, AffineTransformer(), HIDDEN, torch.arange(4, -1, -1)).double()
    with torch.no_grad():
        for p in [*layer.parameters(), *other.parameters()]:
            p.normal_(std=0.3)
        z = torch.randn(8, 5, dtype=torch.float64)
        first = copy.deepcopy(layer.state_dict())
        layer.inverse(z)
        assert "_plan_cache" in layer.made.__dict__
        assert "_plan_cache" not in copy.deepcopy(layer.made).__dict__
        assert "_plan_cache" not in pickle.loads(pickle.dumps(layer.made)).__dict__
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer.inverse(z), other.inverse(z), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer(layer.inverse(z)[0])[0], z, rtol=1e-9, atol=1e-9)
        # Masks replaced rather than written into, back to the natural order.
        layer.load_state_dict(first, assign=True)
        torch.testing.assert_close(layer(layer.inverse(z)[0])[0], z, rtol=1e-9, atol=1e-9)
    with torch.inference_mode():
        # Tensors made in inference mode have no version counter.
        fresh = MaskedAutoregressive(5, AffineTransformer(), HIDDEN).double()
        fresh.load_state_dict(first)
        torch.testing.assert_close(fresh(fresh.inverse(z)[0])[0], z, rtol=1e-9, atol=1e-9)


def test_build_transform_names_the_options_of_a_kind():
    import inspect

    from skflow.engine.flows import kind_options
    from skflow.engine.flows.cnf import ContinuousFlow

    with pytest.raises(ValueError, match=r"no option 'n_bins'; its options are \['batch_norm'\]"):
        build_transform("maf", 3, n_layers=1, hidden_units=(4,), n_bins=3)
    with pytest.raises(ValueError, match="Unknown flow kind 'nope'"):
        build_transform("nope", 3)
    # Every listed option is accepted at its default.
    for kind in KINDS:
        target = ContinuousFlow if kind == "cnf" else KINDS[kind]
        defaults = inspect.signature(target).parameters
        options = {name: defaults[name].default for name in kind_options(kind)}
        build_transform(kind, 4, n_layers=1, hidden_units=(4,), **options)
