"""Behaviour of the public estimator: API, integration with sklearn, errors."""

from __future__ import annotations

import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_wine, make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skflow.engine.device
from skflow import FlowDensity
from skflow.engine import resolve_device

FAST = dict(n_layers=2, hidden_units=16, max_iter=15, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def moons():
    X, _ = make_moons(n_samples=400, noise=0.1, random_state=0)
    return X


@pytest.mark.parametrize("kind", ["maf", "realnvp"])
def test_basic_api(kind, moons):
    est = FlowDensity(kind=kind, **FAST).fit(moons)
    s = est.score_samples(moons)
    assert s.shape == (400,) and s.dtype == np.float64 and np.isfinite(s).all()
    assert est.score(moons) == pytest.approx(s.mean())
    np.testing.assert_allclose(est.decision_function(moons), s - est.offset_)
    pred = est.predict(moons)
    assert set(np.unique(pred)) <= {-1, 1}
    assert est.sample(10, random_state=0).shape == (10, 2)
    assert est.sample(0).shape == (0, 2)
    assert est.n_features_in_ == 2 and est.n_iter_ == len(est.loss_curve_)
    assert len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ >= max(est.validation_scores_)
    if est.best_epoch_:  # else the starting point was kept
        assert est.best_validation_score_ == est.validation_scores_[est.best_epoch_ - 1]
    assert est.device_ == torch.device("cpu")


def test_best_weights_are_restored(moons):
    est = FlowDensity(**{**FAST, "max_iter": 40}).fit(moons)
    # The kept weights are those of the best validation epoch, so rescoring
    # the validation rows reproduces the best validation score.
    rng = np.random.RandomState(0)
    rng.randint(np.iinfo(np.int32).max)
    val = moons[rng.permutation(len(moons))[:40]]
    assert est.score(val) == pytest.approx(est.best_validation_score_, abs=1e-4)


def test_untrained_start_kept_is_reported(moons):
    """With a learning rate so large that no epoch beats the starting point,
    fit says so (pointing at the caller's line, not scikit-learn's), keeps
    the start, and reports its validation score, not a worse epoch's."""
    with pytest.warns(ConvergenceWarning, match="None of the 20 epochs improved") as record:
        est = FlowDensity(learning_rate=1.0, max_iter=60, random_state=0).fit(moons)
    assert {w.filename for w in record} == {__file__}
    # Also from cross-validation's fits, through joblib's frames.
    with pytest.warns(ConvergenceWarning, match="None of the 20 epochs improved") as record:
        cross_val_score(FlowDensity(learning_rate=1.0, max_iter=60, random_state=0), moons, cv=2)
    assert {w.filename for w in record} == {__file__}
    assert est.best_epoch_ == 0
    assert est.best_validation_score_ > max(est.validation_scores_)
    rng = np.random.RandomState(0)
    rng.randint(np.iinfo(np.int32).max)
    val = moons[rng.permutation(len(moons))[:40]]
    assert est.score(val) == pytest.approx(est.best_validation_score_, abs=1e-4)


def test_contamination_sets_training_outlier_fraction(moons):
    est = FlowDensity(contamination=0.1, **FAST).fit(moons)
    assert np.mean(est.predict(moons) == -1) == pytest.approx(0.1, abs=0.01)
    assert np.array_equal(
        FlowDensity(contamination=0.1, **FAST).fit_predict(moons), est.predict(moons)
    )


def test_auto_contamination_flags_few_normal_points_and_far_points(moons):
    est = FlowDensity(**FAST).fit(moons)
    assert np.mean(est.predict(moons) == -1) < 0.05
    assert (est.predict(np.array([[10.0, 10.0], [-8.0, 5.0]])) == -1).all()


def test_determinism(moons):
    a = FlowDensity(**FAST).fit(moons)
    b = FlowDensity(**FAST).fit(moons)
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.score_samples(moons), b.score_samples(moons))
    np.testing.assert_array_equal(a.sample(5, random_state=3), b.sample(5, random_state=3))
    assert not np.array_equal(a.sample(5, random_state=3), a.sample(5, random_state=4))
    c = FlowDensity(**{**FAST, "random_state": 1}).fit(moons)
    assert a.loss_curve_ != c.loss_curve_


def test_fit_does_not_touch_global_torch_rng(moons):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    FlowDensity(**FAST).fit(moons)
    torch.testing.assert_close(torch.rand(3), expected)


def test_pickle_and_joblib_round_trip(moons, tmp_path):
    est = FlowDensity(**FAST).fit(moons)
    expected = est.score_samples(moons)
    loaded = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(loaded.score_samples(moons), expected)
    joblib.dump(est, tmp_path / "m.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "m.joblib").score_samples(moons), expected)


def test_unpickle_without_the_fitted_device_falls_back_to_cpu(moons):
    est = FlowDensity(**FAST).fit(moons)
    state = est.__getstate__()
    state["device_"] = torch.device("cuda:7") if not torch.cuda.is_available() else state["device_"]
    new = FlowDensity.__new__(FlowDensity)
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.warns(UserWarning, match="not available here"):
        new.__setstate__(state)
    assert new.device_ == torch.device("cpu")
    np.testing.assert_array_equal(new.score_samples(moons), est.score_samples(moons))


def test_pipeline_clone_and_cross_val(moons):
    pipe = make_pipeline(StandardScaler(), FlowDensity(**FAST))
    scores = cross_val_score(pipe, moons, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    est = clone(FlowDensity(kind="realnvp", **FAST))
    assert est.get_params()["kind"] == "realnvp" and not hasattr(est, "flow_")


def _torch_threads(estimator, X, y=None):
    return float(torch.get_num_threads())


def test_grid_search_parallel_over_kinds(moons):
    grid = GridSearchCV(
        FlowDensity(**FAST),
        {"kind": ["maf", "realnvp"], "n_layers": [1, 2]},
        cv=2,
        n_jobs=2,
        scoring={"loglik": lambda est, X, y=None: est.score(X), "threads": _torch_threads},
        refit="loglik",
    ).fit(moons)
    assert grid.best_params_["kind"] in {"maf", "realnvp"}
    assert np.isfinite(grid.cv_results_["mean_test_loglik"]).all()
    # joblib's loky workers start with OMP_NUM_THREADS = cpus // n_jobs, which
    # torch follows: parallel fits do not oversubscribe the cores.
    assert (grid.cv_results_["mean_test_threads"] == max(1, joblib.cpu_count() // 2)).all()


def test_pandas_feature_names(moons):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(moons, columns=["a", "b"])
    est = FlowDensity(**FAST).fit(df)
    assert list(est.feature_names_in_) == ["a", "b"]
    np.testing.assert_allclose(est.score_samples(df), est.score_samples(moons))
    with pytest.warns(UserWarning, match="feature names"):
        est.score_samples(moons)
    with pytest.raises(ValueError, match="feature names"):
        est.score_samples(df.rename(columns={"a": "z"}))


def test_without_early_stopping(moons):
    est = FlowDensity(early_stopping=False, **FAST).fit(moons)
    assert est.validation_scores_ is None and est.best_validation_score_ is None
    assert np.isfinite(est.score(moons))


def test_divergence_is_caught_and_model_still_scores():
    X = load_wine().data
    with pytest.warns(ConvergenceWarning, match="diverged"):
        est = FlowDensity(learning_rate=1e6, n_layers=3, max_iter=30, random_state=0).fit(X)
    assert np.isfinite(est.score_samples(X)).all()


def test_max_iter_warning(moons):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning, match="max_iter"):
            FlowDensity(n_layers=1, hidden_units=4, max_iter=1, random_state=0).fit(moons)
    # Stopped by max_iter before any epoch beat the start: both are said.
    # (A learning rate too small to move the weights.)
    with pytest.warns(ConvergenceWarning, match=r"increasing max_iter .*\. No epoch has beaten"):
        est = FlowDensity(kind="realnvp", learning_rate=1e-12, **FAST).fit(moons)
    assert est.best_epoch_ == 0


def test_max_time_stops_training(moons):
    with pytest.warns(ConvergenceWarning, match="time budget"):
        est = FlowDensity(max_time=1e-4, n_iter_no_change=1000, random_state=0).fit(moons)
    assert est.n_iter_ == 1 and np.isfinite(est.score(moons))


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(kind="nope"), "kind"),
        (dict(n_layers=0), "n_layers"),
        (dict(hidden_units=(8, 0)), "hidden_units"),
        (dict(hidden_units="wide"), "hidden_units"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(contamination=0.7), "contamination"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(device="tpu"), "device"),
        (dict(dtype="float16"), "dtype"),
        (dict(kind_options={"no_such_option": 1}), "kind_options"),
        (dict(kind_options={"n_bins": 3}), r"no option 'n_bins'; its options are \['batch_norm'\]"),
        (dict(kind_options={"n_layers": 3}), "n_layers is a FlowDensity parameter"),
        (dict(kind_options={"batch_norm": "yes"}), "batch_norm must be True or False"),
    ],
)
def test_invalid_parameters_raise_clear_errors(params, match, moons):
    with pytest.raises((ValueError, TypeError), match=match):
        FlowDensity(**{**FAST, **params}).fit(moons)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_raises(moons):
    with pytest.raises(ValueError, match="CUDA is not available"):
        FlowDensity(device="cuda", **FAST).fit(moons)


def test_cuda_resolves_to_the_current_device(monkeypatch):
    """A bare "cuda" is pinned to the device current at fit time, so rows
    scored later (another thread, another torch.cuda.device block) go where
    the weights are."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for device in ("auto", "cuda", torch.device("cuda")):
        assert resolve_device(device) == torch.device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_mps_is_float32_only(monkeypatch, moons):
    """Apple's GPUs have no float64: "auto" passes them over for float64 and
    an explicit "mps" says so, before any torch work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(skflow.engine.device, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("auto", torch.float64) == torch.device("cpu")
    with pytest.raises(ValueError, match="MPS has one device"):
        resolve_device("mps:1")
    with pytest.raises(ValueError, match="MPS has no float64"):
        FlowDensity(device="mps", dtype="float64", **FAST).fit(moons)


def test_bad_sample_and_query_input(moons):
    est = FlowDensity(**FAST).fit(moons)
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(-1)
    with pytest.raises(ValueError, match="features"):
        est.score_samples(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        est.score_samples(np.array([[np.nan, 0.0]]))


@pytest.mark.gpu
def test_cuda_fit_then_cpu_pickle(moons):
    est = FlowDensity(device="cuda", **FAST).fit(moons)
    assert est.device_.type == "cuda"
    expected = est.score_samples(moons)
    state = pickle.dumps(est)
    loaded = pickle.loads(state)
    np.testing.assert_allclose(loaded.score_samples(moons), expected, rtol=1e-5, atol=1e-5)


def test_compile_failure_falls_back_with_a_warning(monkeypatch):
    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found\nlong traceback")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    X = make_moons(n_samples=200, noise=0.1, random_state=0)[0]
    params = dict(n_layers=2, hidden_units=8, max_iter=5, random_state=0)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C.. compiler found"):
        compiled = FlowDensity(compile=True, **params).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        eager = FlowDensity(**params).fit(X)
    # The fallback trains exactly as compile=False does.
    np.testing.assert_allclose(compiled.score_samples(X), eager.score_samples(X), rtol=1e-6)


def test_compile_warm_up_leaves_the_noise_draws(monkeypatch):
    # Compiling runs one step first; its dequantization noise draws were
    # kept, so a compiled fit of a table with discrete columns trained on
    # other noise than the eager one (0.04 nats apart on wine after 3 epochs).
    monkeypatch.setattr(torch, "compile", lambda fn, *args, **kwargs: fn)
    X = load_wine().data
    params = dict(n_layers=2, hidden_units=8, max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        compiled = FlowDensity(compile=True, **params).fit(X)
        eager = FlowDensity(**params).fit(X)
    assert compiled.loss_curve_ == eager.loss_curve_
    np.testing.assert_array_equal(compiled.score_samples(X), eager.score_samples(X))


def test_batch_norm_refuses_tiny_minibatches():
    X = load_wine().data
    est = FlowDensity(n_layers=2, batch_size=2, kind_options={"batch_norm": True})
    with pytest.raises(ValueError, match="2 rows do not estimate .* at least 8 rows"):
        est.fit(X)


def test_training_gone_astray_without_early_stopping_warns():
    # Without validation rows the last epoch's weights are kept: at a far too
    # large learning rate they fit far worse than epoch 1's.
    X = load_wine().data
    est = FlowDensity(n_layers=2, learning_rate=10.0, early_stopping=False, random_state=0)
    with pytest.warns(ConvergenceWarning, match="went astray. Try a smaller learning_rate"):
        est.fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a sane rate: no such warning
        FlowDensity(n_layers=2, early_stopping=False, random_state=0).fit(X)


def test_training_astray_check_reads_likelihood_losses_only():
    # Flow matching's loss is a regression loss that swings by about a nat
    # between epochs (91.1 to 92.7 on digits): no "went astray" there.
    from skflow.engine.training import TrainingResult

    result = TrainingResult(n_iter=3, loss_curve=[91.1, 93.1, 92.7], stop_reason="max_iter")
    est = FlowDensity(early_stopping=False, max_iter=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est._warn_training(result, False, 0, 3, nll=False)
        assert not [w for w in caught if "astray" in str(w.message)]
        est._warn_training(result, False, 0, 3, nll=True)
        assert [w for w in caught if "astray" in str(w.message)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_compiled_training_matches_eager(kind):
    # Same data and seed: the compiled steps compute the same loss up to
    # float reassociation, so the fits end close (not bit-identical).
    X = load_wine().data
    params = dict(kind=kind, n_layers=2, max_iter=30, n_iter_no_change=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # compilation must not fall back
        warnings.simplefilter("ignore", ConvergenceWarning)
        compiled = FlowDensity(compile=True, **params).fit(X)
        eager = FlowDensity(**params).fit(X)
    assert abs(compiled.score(X) - eager.score(X)) < 0.5
    assert compiled.n_iter_ == eager.n_iter_ == 30


@pytest.mark.parametrize(
    "kind, options, layer",
    [("glow", None, "ActNorm"), ("cnf", {"training": "mle"}, "ContinuousFlow")],
)
def test_compile_unsupported_layers_train_eagerly(kind, options, layer, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("torch.compile must not be called for these layers")

    monkeypatch.setattr(torch, "compile", never)
    X = make_moons(n_samples=100, noise=0.1, random_state=0)[0]
    est = FlowDensity(
        kind, n_layers=1, hidden_units=8, max_iter=2, compile=True, kind_options=options
    )
    with pytest.warns(UserWarning, match=f"not supported for .*{layer}"):
        est.fit(X)
    assert np.isfinite(est.score_samples(X)).all()


def test_batch_norm_takes_numpy_bools(moons):
    # (What a value read from a numpy array or a config file may be.)
    est = FlowDensity(kind_options={"batch_norm": np.True_}, **FAST).fit(moons)
    assert any(type(m).__name__ == "BatchNormFlow" for m in est.flow_.modules())
