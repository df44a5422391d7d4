"""Progress display (``verbose``) and pandas input/output of FlowDensity."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_moons
from tqdm.auto import tqdm

import skflow._progress
from skflow import FlowDensity
from skflow._progress import epoch_progress

FAST = dict(n_layers=2, hidden_units=8, max_iter=6, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def moons():
    X, _ = make_moons(n_samples=200, noise=0.1, random_state=0)
    return X


def test_silent_by_default(moons, capfd):
    FlowDensity(**FAST).fit(moons)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_verbose_shows_a_bar_with_epoch_and_losses(moons, capfd):
    est = FlowDensity(verbose=1, **FAST).fit(moons)
    out, err = capfd.readouterr()
    assert out == ""
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "FlowDensity('maf')" in final
    assert f"{est.n_iter_}/{FAST['max_iter']}" in final
    assert f"train loss={est.loss_curve_[-1]:.4f}" in final
    assert f"val loss={-est.validation_scores_[-1]:.4f}" in final


def test_verbose_2_writes_a_line_per_epoch(moons, capfd):
    est = FlowDensity(verbose=2, early_stopping=False, **FAST).fit(moons)
    _, err = capfd.readouterr()
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("epoch")]
    assert len(lines) == est.n_iter_
    assert "val loss" not in err  # no validation split without early stopping


@pytest.fixture
def bars(monkeypatch):
    """Record every progress bar the estimator creates."""
    made = []

    class RecordingBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(skflow._progress, "tqdm", RecordingBar)
    return made


def test_bar_is_closed_on_early_stopping(moons, bars, capfd):
    est = FlowDensity(verbose=1, **{**FAST, "max_iter": 200, "n_iter_no_change": 1}).fit(moons)
    assert est.n_iter_ < 200  # stopped early
    (bar,) = bars
    assert bar.n == est.n_iter_ and bar.total == 200
    assert bar.disable  # tqdm marks a closed bar as disabled


def test_bar_is_closed_when_training_raises(bars, capfd):
    with pytest.raises(RuntimeError, match="boom"), epoch_progress(1, 10, "t") as on_epoch:
        on_epoch(1, 0.5, -0.5)
        raise RuntimeError("boom")
    (bar,) = bars
    assert bar.n == 1 and bar.disable


def test_verbose_zero_yields_no_callback():
    with epoch_progress(0, 10, "t") as on_epoch:
        assert on_epoch is None


def test_sample_as_frame_keeps_the_column_names(moons):
    df = pd.DataFrame(moons, columns=["width", "height"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*valid feature names")
        est = FlowDensity(**FAST).fit(df)
        est.score_samples(df)
    np.testing.assert_array_equal(est.feature_names_in_, ["width", "height"])
    out = est.sample(7, random_state=0, as_frame=True)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["width", "height"] and out.shape == (7, 2)
    np.testing.assert_array_equal(out.to_numpy(), est.sample(7, random_state=0))


def test_sample_as_frame_restores_the_column_dtypes(tmp_path):
    """Integer, boolean and float32 columns come back with their dtypes:
    integer draws are whole numbers within the type's range (also for a
    column with too many values to be treated as discrete), booleans are
    True/False; nullable pandas types stay float64. The dtypes survive
    saving, and a refit on an array forgets them."""
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame(
        {
            "count": rng.poisson(3, n),
            "flag": rng.random(n) > 0.3,
            "wide": rng.integers(0, 60_000, n).astype(np.uint16),
            "value": rng.normal(size=n).astype(np.float32),
            "nullable": pd.array(rng.integers(0, 4, n), dtype="Int64"),
        }
    )
    est = FlowDensity(**FAST).fit(df)
    assert est.feature_dtypes_ == ["int64", "bool", "uint16", "float32", None]
    path = tmp_path / "model.safetensors"
    est.save(path)
    for model in (est, FlowDensity.load(path)):
        out = model.sample(500, random_state=0, as_frame=True)
        expected = ["int64", "bool", "uint16", "float32", "float64"]
        assert [str(t) for t in out.dtypes] == expected
        assert set(out["flag"]) == {True, False}
        assert set(out["count"]) <= set(df["count"])  # discrete: training values only
        assert out["wide"].between(0, 65_535).all()
        # The numbers are the array's, rounded where the type is integer.
        raw = model.sample(500, random_state=0)
        np.testing.assert_array_equal(out["count"], raw[:, 0])
        np.testing.assert_allclose(out["wide"], np.clip(np.round(raw[:, 2]), 0, 65_535))
    est.fit(df.to_numpy(dtype=float))
    assert not hasattr(est, "feature_dtypes_")
    assert (est.sample(3, as_frame=True).dtypes == np.float64).all()
    with pytest.raises(TypeError, match="as_frame must be True or False"):
        est.sample(3, as_frame="yes")


def test_sample_as_frame_integer_columns_never_wrap(monkeypatch):
    df = pd.DataFrame({"big": np.arange(300, dtype=np.int64) * 7, "small": np.arange(300) % 2})
    est = FlowDensity(**FAST).fit(df)
    draws = np.array([[1e30, 1.0], [-np.inf, 0.0], [np.nan, 1.0], [12.4, 0.0]])
    monkeypatch.setattr(est, "_snap_to_lattice", lambda x: draws)
    out = est.sample(4, as_frame=True)
    # A non-finite draw keeps its column float64, as in the array...
    assert str(out["big"].dtype) == "float64" and np.isnan(out["big"][2])
    assert str(out["small"].dtype) == "int64"
    finite = draws[[0, 3]]
    monkeypatch.setattr(est, "_snap_to_lattice", lambda x: finite)
    out = est.sample(2, as_frame=True)
    # ...and a huge one saturates at the type's limit instead of wrapping around.
    assert str(out["big"].dtype) == "int64"
    assert out["big"][0] > 9e18 and out["big"][1] == 12


def test_sample_as_frame_without_names_uses_x_columns(moons):
    est = FlowDensity(**FAST).fit(moons)
    assert not hasattr(est, "feature_names_in_")
    assert list(est.sample(2, as_frame=True).columns) == ["x0", "x1"]
