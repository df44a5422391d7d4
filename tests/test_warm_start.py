"""``warm_start=True``: a refit continues the fitted flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from skflow import FlowDensity

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
FAST = dict(n_layers=2, hidden_units=16, max_iter=5, random_state=0)


@pytest.fixture(scope="module")
def cancer():
    X, _ = load_breast_cancer(return_X_y=True)
    return train_test_split(X, test_size=0.3, random_state=0)


def test_short_fits_continue_to_the_full_fit(cancer):
    """Eight warm fits of 10 epochs each climb to the held-out log-likelihood
    of one full default fit (39.8 against 40.0 nats per row); a cold 10-epoch fit stays
    near its first value."""
    X_train, X_test = cancer
    est = FlowDensity(max_iter=10, warm_start=True, random_state=0)
    scores = [est.fit(X_train).score(X_test) for _ in range(8)]
    assert est.n_iter_ == len(est.loss_curve_) == len(est.validation_scores_) == 80
    assert scores[-1] > scores[0] + 1.0 and scores[-1] > 39.5
    cold = FlowDensity(max_iter=10, random_state=0)
    assert cold.fit(X_train).fit(X_train).score(X_test) == pytest.approx(scores[0])


def test_continues_after_max_time(cancer):
    X_train, _ = cancer
    # A budget far below convergence, with patience that never ends a fit.
    est = FlowDensity(max_time=0.05, n_iter_no_change=1000, warm_start=True, random_state=0)
    with pytest.warns(ConvergenceWarning, match="max_time"):
        est.fit(X_train)
    first = est.n_iter_
    est.set_params(max_time=None, max_iter=7, learning_rate=5e-4)  # training params may change
    est.fit(X_train)
    assert est.n_iter_ == first + 7 and len(est.loss_curve_) == first + 7


def test_fixed_layers_stay_and_new_rows_train(cancer):
    """Fine-tuning on other rows keeps the first fit's fixed layers (so the
    density stays exact) and moves the learned ones towards the new rows."""
    X_train, X_test = cancer
    est = FlowDensity(warm_start=True, **FAST).fit(X_train)
    center, cells = est.center_.copy(), est.dequantization_cells_
    first = est.flow_.transform.transforms[0].x_knots.clone()
    before = est.score(X_test)
    est.set_params(max_iter=60).fit(X_test)
    np.testing.assert_array_equal(est.center_, center)
    assert est.dequantization_cells_ is cells
    assert torch.equal(est.flow_.transform.transforms[0].x_knots, first)
    assert est.score(X_test) > before + 1.0


def test_changes_that_reshape_the_flow_are_refused(cancer):
    X_train, _ = cancer
    est = FlowDensity(warm_start=True, **FAST).fit(X_train)
    for params in ({"n_layers": 3}, {"kind": "nsf"}, {"dtype": "float64"}, {"whiten": False}):
        with pytest.raises(ValueError, match="warm_start=True continues the fitted flow"):
            FlowDensity(warm_start=True, **FAST).fit(X_train).set_params(**params).fit(X_train)
    with pytest.raises(ValueError, match="features"):
        est.fit(X_train[:, :5])
    # The fitted widths named another way are no change.
    auto = FlowDensity(warm_start=True, **{**FAST, "hidden_units": "auto"}).fit(X_train)
    for same in ((32, 32), [32, 32], 32, "auto"):
        assert auto.set_params(hidden_units=same, max_iter=1).fit(X_train).hidden_units_ == (32, 32)
    with pytest.raises(ValueError, match="hidden_units changed"):
        auto.set_params(hidden_units=16).fit(X_train)
    # Equal values of other types are no change either (numpy scalars, a
    # shape as an array, a tuple or a list): an array crashed in numpy.
    for first, same in (
        ({"kind": "maf"}, {"kind": np.str_("maf")}),
        ({"whiten": True}, {"whiten": np.True_}),
        ({"kind": "glow", "kind_options": {"image_shape": np.array([1, 2, 2]), "n_levels": 1}}, {}),
        (
            {"kind": "glow", "kind_options": {"image_shape": (1, 2, 2), "n_levels": 1}},
            {"kind_options": {"image_shape": [1, 2, 2], "n_levels": 1}},
        ),
    ):
        grid = X_train[:, :4]
        fitted = FlowDensity(warm_start=True, **{**FAST, **first}).fit(grid)
        fitted.set_params(**same, max_iter=1).fit(grid)
        assert fitted.n_iter_ == FAST["max_iter"] + 1
    with pytest.raises(ValueError, match="kind_options changed"):
        fitted.set_params(kind_options={"image_shape": [4, 1, 1], "n_levels": 1}).fit(grid)
    # warm_start=False fits anew, whatever changed.
    assert est.set_params(warm_start=False, n_layers=3).fit(X_train[:, :5]).n_features_in_ == 5


def test_failed_warm_fit_keeps_the_model(cancer, monkeypatch):
    """Training works on a copy: an interrupt after it changed the weights
    leaves the fitted flow as it was."""
    import skflow._estimator

    X_train, X_test = cancer
    est = FlowDensity(warm_start=True, **FAST).fit(X_train)
    state = {k: v.clone() for k, v in est.flow_.state_dict().items()}
    scores, n_iter = est.score_samples(X_test), est.n_iter_

    def interrupted_training(flow, *args, **kwargs):
        for p in flow.parameters():
            p.data.zero_()
        raise KeyboardInterrupt

    monkeypatch.setattr(skflow._estimator, "train_flow", interrupted_training)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X_train)
    assert est.n_iter_ == n_iter
    assert all(torch.equal(v, est.flow_.state_dict()[k]) for k, v in state.items())
    np.testing.assert_array_equal(est.score_samples(X_test), scores)


def test_warm_start_from_a_saved_model(cancer, tmp_path):
    """A saved model continues, on the first fit's validation rows even with
    random_state=None (the file keeps the split: CLI fit --resume relies on it)."""
    X_train, _ = cancer
    est = FlowDensity(n_layers=2, hidden_units=16, max_iter=5).fit(X_train)
    est.save(tmp_path / "m.skflow")
    loaded = FlowDensity.load(tmp_path / "m.skflow").set_params(warm_start=True, max_iter=3)
    loaded.fit(X_train)
    assert loaded.n_iter_ == est.n_iter_ + 3
    loaded = FlowDensity.load(tmp_path / "m.skflow")
    loaded.set_params(warm_start=True, max_iter=2, learning_rate=1e-12).fit(X_train)
    assert loaded.offset_ == pytest.approx(est.offset_, rel=1e-6)


def test_warm_fits_keep_the_validation_rows(cancer):
    """Even with random_state=None a warm fit validates on the first fit's
    validation rows: with the weights unchanged (a vanishing learning rate)
    its validation score and offset stay those of the first fit."""
    X_train, _ = cancer
    est = FlowDensity(n_layers=2, hidden_units=16, max_iter=5, warm_start=True).fit(X_train)
    score, offset = est.best_validation_score_, est.offset_
    est.set_params(learning_rate=1e-12, max_iter=2).fit(X_train)
    # offset_ is the validation rows' 1% quantile; rows trained on before
    # moved it from -88 to 20 (and the validation score by 6 nats, which
    # fresh dequantization noise on the table's zeros moves by about 1%).
    assert est.offset_ == pytest.approx(offset, rel=1e-6)
    assert est.best_validation_score_ == pytest.approx(score, rel=0.05)


def test_epoch_records_line_up(cancer):
    X_train, _ = cancer
    est = FlowDensity(early_stopping=False, warm_start=True, **FAST).fit(X_train)
    assert est.validation_scores_ is None and est.best_epoch_ == est.n_iter_ == 5
    est.set_params(early_stopping=True, max_iter=3).fit(X_train)
    assert len(est.validation_scores_) == len(est.loss_curve_) == est.n_iter_ == 8
    assert np.isnan(est.validation_scores_[:5]).all()
    assert np.isfinite(est.validation_scores_[5:]).all()
    # A warm fit without validation keeps the scores so far (NaN for its own).
    before = list(est.validation_scores_)
    est.set_params(early_stopping=False, max_iter=2).fit(X_train)
    np.testing.assert_array_equal(est.validation_scores_[:8], before)  # (NaN equal NaN)
    assert np.isnan(est.validation_scores_[8:]).all()
    assert len(est.validation_scores_) == len(est.loss_curve_) == est.n_iter_ == 10


def test_new_rows_off_the_fitted_values_warn():
    rng = np.random.RandomState(0)
    first = np.c_[rng.normal(size=(300, 2)), rng.randint(0, 6, 300)]
    later = np.c_[rng.normal(size=(300, 2)), rng.randint(5, 11, 300)]
    est = FlowDensity(warm_start=True, **FAST).fit(first)
    with pytest.warns(UserWarning, match=r"in columns \['x2'\]"):
        est.fit(later)


def test_old_pickle_without_warm_start_refits(cancer):
    """Estimators pickled before a parameter existed take its default."""
    import pickle

    from sklearn.base import clone

    X_train, _ = cancer
    est = FlowDensity(**FAST).fit(X_train)
    del est.__dict__["warm_start"]  # as pickled before warm_start existed
    old = pickle.loads(pickle.dumps(est))
    assert old.get_params()["warm_start"] is False and "FlowDensity" in repr(old)
    assert clone(old).fit(X_train).n_iter_ == 5
    assert old.set_params(warm_start=True).fit(X_train).n_iter_ == 10


def test_dataframe_dtypes_survive_a_warm_array_fit():
    import pandas as pd

    rng = np.random.RandomState(0)
    df = pd.DataFrame({"a": rng.normal(size=300), "n": rng.randint(0, 5, 300)})
    est = FlowDensity(warm_start=True, **FAST).fit(df)
    est.fit(df.to_numpy())
    assert est.sample(5, random_state=0, as_frame=True)["n"].dtype == df["n"].dtype


def test_a_second_warm_fit_on_moved_rows_still_warns(cancer):
    """The check is against the first fit's range, which warm fits keep."""
    X_train, _ = cancer
    est = FlowDensity(warm_start=True, **FAST).fit(X_train)
    low = est.lattice_range_.copy()
    moved = X_train + 6 * X_train.std(axis=0)
    for _ in range(2):
        with pytest.warns(UserWarning, match="leave them"):
            est.fit(moved)
    np.testing.assert_array_equal(est.lattice_range_, low)


def test_validation_rows_kept_when_early_stopping_turns_on(cancer):
    X_train, _ = cancer
    est = FlowDensity(early_stopping=False, warm_start=True, **FAST).fit(X_train)
    with pytest.warns(UserWarning, match="first fit trained on every row"):
        est.set_params(early_stopping=True).fit(X_train)
