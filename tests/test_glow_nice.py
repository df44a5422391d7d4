"""Glow and NICE kinds and their layers: ActNorm, LULinear, BatchNormFlow, multi-scale."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skflow import FlowDensity
from skflow.engine.flows.glow import _conv_coupling, _squeeze, build_glow
from skflow.engine.transforms import ActNorm, BatchNormFlow, LULinear, Split
from tests.test_transforms import _jacobian_logdet


def _fit(X: np.ndarray, **params) -> FlowDensity:
    # Short fits: the tests check the API and the fit, not convergence.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FlowDensity(random_state=0, **params).fit(X)


def _randomize(module: torch.nn.Module, scale: float = 0.3) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))


def test_vector_glow_starts_without_mixing():
    # Table columns are not exchangeable: the mixing starts unrotated, so the
    # untrained flow only scales each column (by sigmoid(2) per coupling).
    t = build_glow(5, n_layers=3, hidden_units=(8,)).double().eval()
    x = torch.randn(1, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda r: t(r)[0], x)[0, :, 0]
    torch.testing.assert_close(jac, torch.diag(jac.diagonal()))
    assert torch.all(jac.diagonal() <= 1)


# ---------------------------------------------------------------- image glow
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"image_shape": (1, 4, 5)}, "holds 20 values but X has 16 features"),
        ({"image_shape": (4, 2, 2)}, "divisible by 2 \\*\\* n_levels = 4"),
        ({"image_shape": (1, 4, 4), "n_levels": 3}, "divisible by 2 \\*\\* n_levels = 8"),
        ({"image_shape": (4, 4)}, "three positive ints"),
        ({"image_shape": 16}, r"three positive ints .*got 16 "),
        ({"image_shape": "1x4x4"}, "three positive ints .*got '1x4x4'"),
        ({"image_shape": (1, 4, 4), "n_levels": 0}, "n_levels must be a positive int"),
        # (n_levels=2, the image default, is accepted: saved models hold it.)
        ({"n_levels": 3}, r"n_levels=3 sets the scales of image Glow: pass image_shape"),
    ],
)
def test_image_shape_validation(options, match):
    X = np.random.default_rng(0).normal(size=(20, 16))
    with pytest.raises(ValueError, match=match):
        FlowDensity(kind="glow", kind_options=options, max_iter=1).fit(X)


def test_squeeze_is_space_to_depth():
    x = torch.randn(3, 2 * 4 * 6)
    z, ladj = _squeeze(2, 4, 6)(x)
    expected = torch.nn.functional.pixel_unshuffle(x.view(3, 2, 4, 6), 2)
    torch.testing.assert_close(z, expected.flatten(1))
    assert torch.all(ladj == 0)


@pytest.mark.parametrize(("image_shape", "n_levels"), [((1, 4, 4), 2), ((2, 4, 8), 2)])
def test_multiscale_round_trip_and_logdet(image_shape, n_levels):
    d = int(np.prod(image_shape))
    t = build_glow(d, n_layers=2, hidden_units=(8,), image_shape=image_shape, n_levels=n_levels)
    t = t.double()
    _randomize(t, 0.1)
    t.eval()
    # The outer level factors out half of the coordinates.
    assert isinstance(t.transforms[-1], Split) and t.transforms[-1].n_keep == d // 2
    x = torch.randn(32, d, dtype=torch.float64)
    z, ladj = t(x)
    x_back, ladj_inv = t.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(ladj_inv, -ladj)
    torch.testing.assert_close(ladj[:3], _jacobian_logdet(t, x[:3]))


def test_conv_coupling_is_local():
    # Two 3x3 convolutions see 2 pixels away: farther pixels must not matter.
    torch.manual_seed(0)
    coupling = _conv_coupling(torch.tensor([True, False]), 8, 8, (8,)).double()
    _randomize(coupling)
    x = torch.randn(1, 2 * 64, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda r: coupling(r)[0], x)[0, :, 0]
    out_pixel = 64 + 3 * 8 + 3  # channel 1 (transformed), row 3, column 3
    dependence = jac[out_pixel, :64].view(8, 8).abs()  # on channel 0 (conditioning)
    assert dependence[1:6, 1:6].min() > 0
    assert dependence[6:, :].max() == 0 and dependence[:, 6:].max() == 0


def test_lu_linear_on_images_is_a_1x1_convolution():
    torch.manual_seed(0)
    layer = LULinear(3).double()
    _randomize(layer)
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64)
    z, ladj = layer(x.flatten(1))
    lower, upper = layer._factors()
    weight = layer.perm @ lower @ upper
    expected = torch.nn.functional.conv2d(x, weight[:, :, None, None])
    torch.testing.assert_close(z, expected.flatten(1))
    torch.testing.assert_close(ladj, 10 * torch.linalg.slogdet(weight).logabsdet.expand(4))


# ------------------------------------------------------------------ ActNorm
def test_actnorm_initializes_from_first_training_batch():
    torch.manual_seed(0)
    layer = ActNorm(3)
    x = torch.randn(200, 3) * torch.tensor([0.5, 2.0, 7.0]) + torch.tensor([1.0, -3.0, 10.0])
    layer.eval()
    z_eval, _ = layer(x)
    torch.testing.assert_close(z_eval, x)  # not initialized: identity
    assert not layer.initialized
    layer.train()
    z, ladj = layer(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(ladj, -x.std(0, correction=0).log().sum().expand(200))
    # A second batch does not re-initialize; a reloaded state is not re-initialized either.
    loc = layer.loc.detach().clone()
    layer(x[:10] * 5)
    torch.testing.assert_close(layer.loc.detach(), loc)
    fresh = ActNorm(3)
    fresh.load_state_dict(layer.state_dict())
    fresh.train()
    fresh(x[:10] * 5)
    assert fresh.initialized
    torch.testing.assert_close(fresh.loc.detach(), loc)
    # Loading an uninitialized state into an initialized layer makes it
    # initialize again (its host-side flag follows the loaded buffer).
    layer.load_state_dict(ActNorm(3).state_dict())
    layer(x)
    torch.testing.assert_close(layer.loc.detach().flatten(), x.mean(0), atol=1e-5, rtol=0)


def test_actnorm_skips_an_empty_batch():
    # An empty batch has no statistics: initializing from it set loc to NaN
    # for good (and every later score with it).
    layer = ActNorm(3).train()
    layer(torch.zeros(0, 3))
    assert not layer.initialized
    x = torch.randn(50, 3) * 4 + 2
    z, _ = layer(x)
    assert layer.initialized and torch.isfinite(z).all()


def test_actnorm_image_statistics_per_channel():
    torch.manual_seed(0)
    layer = ActNorm(2).train()
    x = torch.randn(50, 2, 4, 4) * torch.tensor([3.0, 0.1])[:, None, None]
    z, _ = layer(x.flatten(1))
    z = z.view(50, 2, 16)
    torch.testing.assert_close(z.mean((0, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 2), correction=0), torch.ones(2), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- batch norm
def test_batch_norm_training_mode_is_the_map_with_batch_statistics():
    torch.manual_seed(0)
    bn = BatchNormFlow(3, momentum=0.25).double()
    _randomize(bn)
    x = torch.randn(64, 3, dtype=torch.float64) * 3 + 1
    bn.train()
    z, ladj = bn(x)
    torch.testing.assert_close(z.mean(0), bn.beta.detach())
    torch.testing.assert_close(
        z.std(0, correction=0), bn.log_gamma.detach().exp(), rtol=1e-4, atol=0
    )
    torch.testing.assert_close(bn.running_mean, 0.25 * x.mean(0))
    torch.testing.assert_close(bn.running_var, 0.75 + 0.25 * x.var(0, correction=0))
    # With the running averages set to this batch's statistics, eval mode (whose
    # log-det the contract test checks against autograd) is the same map.
    bn.running_mean.copy_(x.mean(0))
    bn.running_var.copy_(x.var(0, correction=0))
    bn.eval()
    z_eval, ladj_eval = bn(x)
    torch.testing.assert_close(z_eval, z)
    torch.testing.assert_close(ladj_eval, ladj)
    torch.testing.assert_close(ladj[:3], _jacobian_logdet(bn, x[:3]))


def test_batch_norm_whole_batch_map_is_not_invertible():
    # Why the training-mode log-det holds the batch statistics fixed: as a map
    # of the whole batch, batch normalization forgets its mean and spread.
    # (eps=0: with eps > 0 the spread is only nearly forgotten.)
    bn = BatchNormFlow(2, eps=0.0).double().train()
    x = torch.randn(6, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda b: bn(b.view(6, 2))[0].flatten(), x.flatten())
    assert torch.linalg.matrix_rank(jac) == 12 - 2 * 2


def test_batch_norm_single_row_uses_running_averages():
    bn = BatchNormFlow(2).train()
    bn.running_mean.fill_(1.0)
    z, _ = bn(torch.tensor([[3.0, 1.0]]))
    torch.testing.assert_close(z, torch.tensor([[2.0, 0.0]]) / (1 + bn.eps) ** 0.5)


@pytest.mark.parametrize("kind", ["maf", "realnvp", "nice"])
def test_batch_norm_option(kind):
    X = np.random.default_rng(0).normal(size=(300, 3))
    est = _fit(
        X, kind=kind, kind_options={"batch_norm": True}, n_layers=2, hidden_units=16, max_iter=5
    )
    assert any(isinstance(m, BatchNormFlow) for m in est.flow_.modules())
    scores = est.score_samples(X)
    assert np.isfinite(scores).all()
    # Eval mode uses the running averages: a row's score does not depend on its batch.
    np.testing.assert_allclose(est.score_samples(X[:5]), scores[:5], rtol=1e-5)


# ------------------------------------------------------------- fitted kinds
# NICE changes volume only through its final scaling layer, whose few
# parameters Adam moves slowly: it needs more epochs than glow.
@pytest.mark.parametrize(("kind", "max_iter"), [("glow", 30), ("nice", 200)])
def test_samples_match_data_moments(kind, max_iter):
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, -0.5], [0.0, -0.5, 1.0]]) * 4
    X = rng.multivariate_normal([1.0, -2.0, 5.0], cov, size=2000)
    # Without whitening the flow itself must learn the correlations.
    est = _fit(
        X,
        kind=kind,
        n_layers=4,
        hidden_units=32,
        max_iter=max_iter,
        whiten=False,
        gaussianize=False,
    )
    S = est.sample(5000, random_state=0)
    np.testing.assert_allclose(S.mean(0), X.mean(0), atol=0.15)
    np.testing.assert_allclose(np.cov(S.T), np.cov(X.T), atol=0.4)
    # The true density is within reach: held-out fit close to the Gaussian's entropy.
    X_new = rng.multivariate_normal([1.0, -2.0, 5.0], cov, size=2000)
    entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    assert est.score(X_new) > -entropy - 0.1


def test_image_glow_estimator_end_to_end():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2 * 4 * 4)) + np.linspace(0, 3, 32)
    options = {"image_shape": (2, 4, 4)}
    est = _fit(X, kind="glow", kind_options=options, n_layers=2, hidden_units=8, max_iter=3)
    assert np.isfinite(est.score_samples(X)).all()
    assert est.sample(4, random_state=0).shape == (4, 32)


@pytest.mark.parametrize(
    ("kind", "options"), [("glow", {"image_shape": (1, 4, 4)}), ("nice", {"batch_norm": True})]
)
def test_save_load_keeps_layer_state(tmp_path, kind, options):
    # ActNorm's initialized flag, LULinear's random P and signs and batch
    # norm's running averages are buffers: a reload must restore them all.
    # ActNorm is initialized before training starts (on up to 4096 rows, not
    # one minibatch), so even a restored untrained state has it initialized.
    X = np.exp(np.random.default_rng(0).normal(size=(80, 16)))
    est = _fit(X, kind=kind, kind_options=options, n_layers=2, hidden_units=8, max_iter=3)
    est.save(tmp_path / "model.safetensors")
    loaded = FlowDensity.load(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    np.testing.assert_array_equal(loaded.sample(5, random_state=0), est.sample(5, random_state=0))
    for flow in (est.flow_, loaded.flow_):
        assert all(m.initialized for m in flow.modules() if isinstance(m, ActNorm))
