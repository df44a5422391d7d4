"""save()/load(): exact round trips, no code execution, clear errors on bad files."""

from __future__ import annotations

import json
import pickle
import struct
import warnings

import joblib
import numpy as np
import pytest
import sklearn
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from sklearn.datasets import load_breast_cancer, make_moons
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from skflow import FlowDensity, _persistence
from skflow.engine import KINDS

FAST = dict(n_layers=2, hidden_units=16, max_iter=10, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

X = make_moons(n_samples=300, noise=0.1, random_state=0)[0]
X = np.c_[X, X[:, :1] ** 2]  # 3 features: every kind has a non-trivial structure


@pytest.fixture(scope="module")
def fitted():
    return FlowDensity(**FAST).fit(X)


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "model.safetensors"
    fitted.save(path)
    return path


def _fitted_attributes(est):
    return {k: v for k, v in vars(est).items() if k.endswith("_") and k != "flow_"}


def _assert_same_estimator(a, b):
    assert a.get_params() == b.get_params()
    attrs_a, attrs_b = _fitted_attributes(a), _fitted_attributes(b)
    assert attrs_a.keys() == attrs_b.keys()
    for name, value in attrs_a.items():
        np.testing.assert_equal(attrs_b[name], value, err_msg=name)
        assert type(attrs_b[name]) is type(value), name
    np.testing.assert_array_equal(b.score_samples(X), a.score_samples(X))
    np.testing.assert_array_equal(b.sample(20, random_state=1), a.sample(20, random_state=1))
    np.testing.assert_array_equal(b.predict(X), a.predict(X))


@pytest.mark.parametrize(
    "params",
    [dict(kind=kind) for kind in sorted(KINDS)]
    + [
        dict(kind="maf", dtype="float64"),
        dict(kind="realnvp", early_stopping=False, contamination=0.05),
        dict(kind="maf", hidden_units=(8, 12), device="cpu"),
        dict(kind="realnvp", device=torch.device("cpu"), kind_options=None, max_time=60.0),
    ],
    ids=str,
)
def test_round_trip_is_exact(params, tmp_path):
    est = FlowDensity(**{**FAST, **params}).fit(X)
    est.save(tmp_path / "m.safetensors")
    loaded = FlowDensity.load(tmp_path / "m.safetensors")
    _assert_same_estimator(est, loaded)
    assert next(loaded.flow_.parameters()).dtype == next(est.flow_.parameters()).dtype
    assert not loaded.flow_.training


@pytest.mark.parametrize("kind", ["maf", "nice"])
def test_wide_float64_round_trip_is_exact(kind, tmp_path):
    # The file's tensors are only 8-byte aligned: kept as loaded, BLAS took
    # other kernels for the 30-column matrices and scores moved by 3e-14.
    X30 = load_breast_cancer().data
    est = FlowDensity(kind=kind, dtype="float64", n_layers=2, max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X30)
    est.save(tmp_path / "m.safetensors")
    loaded = FlowDensity.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.score_samples(X30), est.score_samples(X30))


def test_round_trip_keeps_feature_names(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(X, columns=["left", "right", "square"])
    est = FlowDensity(**FAST).fit(df)
    loaded = FlowDensity.load(est.save(tmp_path / "m.safetensors") and tmp_path / "m.safetensors")
    assert list(loaded.feature_names_in_) == ["left", "right", "square"]
    with pytest.raises(ValueError, match="feature names should match"):
        loaded.score_samples(df.rename(columns={"left": "other"}))


def test_round_trip_keeps_set_output(fitted, tmp_path):
    pd = pytest.importorskip("pandas")
    est = FlowDensity(**FAST).set_output(transform="pandas").fit(X)
    loaded = FlowDensity.load(est.save(tmp_path / "m.safetensors") and tmp_path / "m.safetensors")
    assert isinstance(loaded.transform(X), pd.DataFrame)
    assert isinstance(
        FlowDensity.load(fitted.save(tmp_path / "d") and tmp_path / "d").transform(X), np.ndarray
    )


def test_round_trip_keeps_metadata_requests(fitted, tmp_path):
    # As pickle does: a loaded model in a GridSearchCV with routing on failed
    # with UnsetMetadataPassedError.
    with sklearn.config_context(enable_metadata_routing=True):
        est = pickle.loads(pickle.dumps(fitted))
        est.set_fit_request(sample_weight=True).set_score_request(sample_weight="w")
        est.save(tmp_path / "m.safetensors")
        loaded = FlowDensity.load(tmp_path / "m.safetensors")
        want = {"fit": {"sample_weight": True}, "score": {"sample_weight": "w"}}
        assert loaded._routing_requests() == est._routing_requests() == want
        assert (
            FlowDensity.load(fitted.save(tmp_path / "d") and tmp_path / "d")._routing_requests()
            == {}
        )
    # Routing off when loading: the requests are still restored.
    assert FlowDensity.load(tmp_path / "m.safetensors")._routing_requests() == want


def test_new_fitted_attributes_are_saved_generically(fitted, tmp_path):
    est = pickle.loads(pickle.dumps(fitted))
    est.extra_ = {"counts": (1, 2), "names": ["a"], "weights": np.arange(3.0)}
    est.save(tmp_path / "m.safetensors")
    extra = FlowDensity.load(tmp_path / "m.safetensors").extra_
    assert extra["counts"] == (1, 2) and extra["names"] == ["a"]
    np.testing.assert_array_equal(extra["weights"], np.arange(3.0))


def test_unsavable_values_fail_clearly(fitted, tmp_path):
    est = pickle.loads(pickle.dumps(fitted))
    est.callback_ = lambda: None
    with pytest.raises(TypeError, match="callback_=.* cannot be stored"):
        est.save(tmp_path / "m.safetensors")
    est = FlowDensity(**{**FAST, "random_state": np.random.RandomState(0)}).fit(X)
    with pytest.raises(TypeError, match="random_state=RandomState"):
        est.save(tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_unfitted_estimator_cannot_be_saved(tmp_path):
    with pytest.raises(NotFittedError):
        FlowDensity().save(tmp_path / "m.safetensors")


def test_load_runs_no_unpickler(saved, fitted, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    np.testing.assert_array_equal(FlowDensity.load(saved).score_samples(X), fitted.score_samples(X))


def _header(path):
    """The file's JSON header, read with nothing but ``json`` (safetensors layout)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size])


def test_file_is_plain_json_and_tensors_with_versions(saved):
    meta = _header(saved)["__metadata__"]
    header = json.loads(meta["skflow"])
    assert header["class"] == "FlowDensity"
    assert header["format_version"] == _persistence.FORMAT_VERSION
    assert header["skflow_version"] and header["torch_version"] == torch.__version__
    assert len(meta["sha256"]) == 64
    assert header["fitted"]["n_features_in_"] == 3


def _rewrite_header(path, edit):
    """Edit the JSON header in place, keeping its length (so only the checksum can tell)."""
    raw = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", raw[:8])
    text = raw[8 : 8 + size].decode()
    new = edit(text)
    assert len(new) == len(text) and new != text
    raw[8 : 8 + size] = new.encode()
    path.write_bytes(bytes(raw))


def test_tampered_weights_are_rejected(saved):
    raw = bytearray(saved.read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the last tensor's data
    saved.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="failed its SHA-256 integrity check"):
        FlowDensity.load(saved)


def test_tampered_header_is_rejected(saved):
    # Change the decision threshold without touching any weight.
    _rewrite_header(saved, lambda t: t.replace('\\"offset_\\": -', '\\"offset_\\":  '))
    with pytest.raises(ValueError, match="failed its SHA-256 integrity check"):
        FlowDensity.load(saved)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all", pickle.dumps({"a": 1}), b"\x10\x00\x00\x00\x00\x00\x00\x00{"],
    ids=["empty", "text", "pickle", "truncated header"],
)
def test_not_a_model_file(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a skflow model file"):
        FlowDensity.load(path)


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        FlowDensity.load(saved)


def test_joblib_file_is_refused(fitted, tmp_path):
    joblib.dump(fitted, tmp_path / "m.joblib")
    with pytest.raises(ValueError, match="is not a skflow model file"):
        FlowDensity.load(tmp_path / "m.joblib")


def test_foreign_safetensors_file(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not one written by skflow's save"):
        FlowDensity.load(tmp_path / "other.safetensors")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        FlowDensity.load(tmp_path / "nope.safetensors")


def test_load_leaves_the_global_rng_alone(saved):
    state = torch.get_rng_state()
    FlowDensity.load(saved)
    assert torch.equal(torch.get_rng_state(), state)


def test_directories_and_missing_folders_are_named(fitted, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a skflow model file"):
        FlowDensity.load(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory: save to a file in it"):
        fitted.save(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"the folder '.*nope' does not exist"):
        fitted.save(tmp_path / "nope" / "m.safetensors")
    assert list(tmp_path.iterdir()) == []  # no stray temporary file


def test_file_from_a_newer_format_asks_to_upgrade(fitted, tmp_path, monkeypatch):
    monkeypatch.setattr(_persistence, "FORMAT_VERSION", _persistence.FORMAT_VERSION + 1)
    fitted.save(tmp_path / "m.safetensors")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="in file format 2; .* Upgrade skflow"):
        FlowDensity.load(tmp_path / "m.safetensors")


def _resave(path, edit_header=None, edit_tensors=None):
    """Rewrite a saved file through the writer (valid checksum), after edits."""
    header, tensors = _persistence.read(path, reader_version="test")
    header.pop("format_version")
    if edit_header:
        edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    _persistence.write(path, header, tensors)


@pytest.mark.parametrize(
    "edit_header, edit_tensors, match",
    [
        (lambda h: h["params"].update(n_layers=3), None, "missing tensors: .* and [0-9]+ more"),
        (
            lambda h: h["fitted"].update(hidden_units_={"__tuple__": [7, 7]}),
            None,
            r"\(16, 3\) torch.float32 instead of \(7, 3\)",
        ),
        (lambda h: h["params"].update(kind="glow2"), None, "'kind' parameter"),
        (lambda h: h["params"].update(future_option=1), None, "future_option"),
        (lambda h: h["fitted"].pop("n_features_in_"), None, "n_features_in_=None is not"),
        (None, lambda t: t.pop("base._anchor"), "missing tensors: base._anchor"),
        (None, lambda t: t.update(extra=torch.ones(1)), "unexpected tensors: extra"),
        # Forged files (a checksum recomputed after editing) fail here, not
        # later, deep in scoring or sampling.
        (lambda h: h["fitted"].update(offset_="abc"), None, "offset_='abc' is not a number"),
        # Loaded, then predict() flagged every row (and the CLI none).
        (
            lambda h: h["fitted"].update(offset_=_persistence.encode(float("nan"), "o")),
            None,
            "offset_=nan is not finite",
        ),
        # These loaded and failed later, in sample(as_frame=True).
        (
            lambda h: h["fitted"].update(
                feature_names_in_=_persistence.encode(np.array(["a", "b"], object), "f")
            ),
            None,
            "feature_names_in_ is not 3 column names",
        ),
        (
            lambda h: h["fitted"].update(feature_dtypes_=["float64", "zzz", None]),
            None,
            "feature_dtypes_ is not 3 numeric dtype names",
        ),
        (
            lambda h: h["fitted"].update(feature_dtypes_=["datetime64[ns]", None, None]),
            None,
            "feature_dtypes_ is not 3 numeric dtype names",
        ),
        (lambda h: h["fitted"].update(fit=1), None, r"invalid fitted attribute names \['fit'\]"),
        (
            lambda h: h["fitted"].update(lattice_range_=[1, 2]),
            None,
            r"lattice_range_ is not a finite float array of shape \(2, 3\)",
        ),
        (
            lambda h: h["fitted"].update(dequantization_cells_=["x", 0.0, 0.0]),
            None,
            "dequantization_cells_ is not one cell description per feature",
        ),
        (
            None,
            lambda t: t.update({"base._anchor": t["base._anchor"].half()}),
            "base._anchor .* torch.float16 instead of .* torch.float32",
        ),
        (lambda h: h.update(requests={"predict": {"x": True}}), None, "metadata requests"),
        (lambda h: h.update(requests={"fit": {"sample_weight": 1}}), None, "metadata requests"),
        (lambda h: h.update(requests={"fit": {"weights": True}}), None, "weights"),
        (
            lambda h: h["split"]["__tuple__"].__setitem__(2, 10**9),
            None,
            "its validation split is not one fit could have written",
        ),
        (
            lambda h: h["split"]["__tuple__"][0]["__tuple__"].__setitem__(0, "PCG64"),
            None,
            "its validation split is not one fit could have written",
        ),
        (
            # Forged: a network of 2e9 parameters, refused before it is built.
            lambda h: h["fitted"].update(hidden_units_={"__tuple__": [10**9, 10**9]}),
            None,
            r"name a flow of at least \d+ values in 2 layers .* but it holds",
        ),
        (
            lambda h: h["params"].update(n_layers=10**7),
            None,
            r"in 10000000 layers .* but it holds \d+ in \d+ tensors",
        ),
        (
            lambda h: h.update(output={"__dict__": {"transform": "excel"}}),
            None,
            "transform",
        ),
        (lambda h: h.update(marginal_tails=[50.0, -1.0]), None, "marginal_tails"),
    ],
    ids=[
        "layers",
        "width",
        "kind",
        "new param",
        "no n_features",
        "lost",
        "extra",
        "offset",
        "offset nan",
        "feature names",
        "unknown dtype",
        "date dtype",
        "shadow",
        "lattice",
        "cells",
        "float16",
        "request method",
        "request value",
        "request name",
        "split size",
        "split generator",
        "huge network",
        "many layers",
        "output",
        "tails",
    ],  # fmt: skip
)
def test_incompatible_contents_fail_clearly(saved, edit_header, edit_tensors, match):
    _resave(saved, edit_header, edit_tensors)
    with pytest.raises(ValueError, match=f"does not match the estimator .*{match}"):
        FlowDensity.load(saved)


def test_wrong_class_is_refused(saved):
    _resave(saved, lambda h: h.update({"class": "OtherEstimator"}))
    with pytest.raises(ValueError, match="holds a 'OtherEstimator', not a FlowDensity"):
        FlowDensity.load(saved)


def test_save_replaces_an_existing_file_atomically(fitted, saved, tmp_path):
    saved.write_bytes(b"an older model")
    fitted.save(saved)  # replaces it
    np.testing.assert_array_equal(FlowDensity.load(saved).offset_, fitted.offset_)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp left
    # Permissions follow the umask like any new file (not a private temp file's 0600).
    probe = tmp_path / "probe"
    probe.touch()
    assert saved.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_file_from_a_gpu_machine_loads_on_cpu(fitted, tmp_path):
    est = pickle.loads(pickle.dumps(fitted))
    est.device_ = torch.device("cuda", 0)  # as if fitted on a GPU
    est.save(tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="cuda:0, which is not available here"):
        loaded = FlowDensity.load(tmp_path / "m.safetensors")
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.score_samples(X), fitted.score_samples(X))
    with pytest.raises(ValueError, match="CUDA is not available"):
        FlowDensity.load(tmp_path / "m.safetensors", device="cuda")
    # Loaded onto the CPU on purpose: a warm fit continues there (the
    # fitted-on parameter device="cuda" failed for want of CUDA).
    est._fitted_params = {**est._fitted_params, "device": "cuda"}  # (as saved on a GPU)
    est.save(tmp_path / "gpu.safetensors")
    assert FlowDensity.load(tmp_path / "gpu.safetensors").device == "cuda"
    moved = FlowDensity.load(tmp_path / "gpu.safetensors", device="cpu")
    assert moved.device == "cpu"
    moved.set_params(warm_start=True, max_iter=2).fit(X)


def test_missing_gpu_falls_back_to_the_gpu_auto_picks(monkeypatch):
    from skflow._estimator import _usable_device
    from skflow.engine import device as device_module

    f32, f64 = torch.float32, torch.float64
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)
    assert _usable_device(torch.device("cuda", 0), f32) == torch.device("cuda", 0)
    with pytest.warns(UserWarning, match="fitted on cuda:3.*on cuda:0"):
        assert _usable_device(torch.device("cuda", 3), f32) == torch.device("cuda", 0)
    # A Mac's model on a CUDA machine: its GPU, not the CPU.
    with pytest.warns(UserWarning, match="fitted on mps.*on cuda:0"):
        assert _usable_device(torch.device("mps"), f32) == torch.device("cuda", 0)
    # A CUDA model on a Mac: MPS for float32, the CPU for float64.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    with pytest.warns(UserWarning, match="on mps"):
        assert _usable_device(torch.device("cuda", 0), f32) == torch.device("mps")
    with pytest.warns(UserWarning, match="on cpu"):
        assert _usable_device(torch.device("cuda", 0), f64) == torch.device("cpu")


@pytest.mark.gpu
def test_gpu_fit_loads_on_cpu_with_same_scores(tmp_path):
    est = FlowDensity(device="cuda", **FAST).fit(X)
    est.save(tmp_path / "m.safetensors")
    loaded = FlowDensity.load(tmp_path / "m.safetensors", device="cpu")
    assert loaded.device_.type == "cpu" and est.device_.type == "cuda"
    np.testing.assert_allclose(loaded.score_samples(X), est.score_samples(X), rtol=1e-5, atol=1e-5)
    unpickled = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(unpickled.score_samples(X), est.score_samples(X), rtol=1e-5)


_json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_values = st.recursive(
    _json_leaves
    | st.builds(np.array, st.lists(st.floats(allow_nan=False), max_size=4))
    | st.builds(np.array, st.lists(st.integers(-(2**40), 2**40), max_size=4))
    | st.sampled_from([torch.device("cpu"), torch.device("cuda", 1)]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=10,
)


def _same(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(value=_values)
def test_any_json_able_attribute_round_trips_with_its_type(value):
    # What save() writes for a fitted attribute, through real JSON text.
    text = json.dumps(_persistence.encode(value, "attr_"))
    _same(_persistence.decode(json.loads(text)), value)


def test_model_fitted_before_dequantization_cells_still_samples(tmp_path):
    """Files and pickles from before per-value cells hold only one width per
    feature: loading fills in those constant cells, so sampling snaps onto the
    same lattice as it did then instead of failing."""
    rng = np.random.RandomState(0)
    X = np.column_stack([rng.poisson(3.0, 300), rng.randn(300)]).astype(float)
    est = FlowDensity(max_iter=3, random_state=0).fit(X)
    del est.dequantization_cells_  # as written by skflow before the cells
    path = tmp_path / "old.skflow"
    est.save(path)
    for old in (FlowDensity.load(path), pickle.loads(pickle.dumps(est))):
        assert old.dequantization_cells_ == [0.5, 0.0]
        S = old.sample(200, random_state=0)
        np.testing.assert_array_equal(S[:, 0], np.round(S[:, 0]))
        np.testing.assert_array_equal(old.cell_widths(X[:3]), [[1.0, 0.0]] * 3)


def test_model_fitted_before_centring_scores_as_it_did(tmp_path, monkeypatch):
    """Models from before center_ were fitted on the raw values: loading and
    unpickling fill in a zero shift, so they score and sample as they did."""
    from skflow import _estimator

    data = X + [0.0, 0.0, 50.0]
    monkeypatch.setattr(_estimator, "_center", lambda X, weights: np.zeros(X.shape[1]))
    est = FlowDensity(**FAST).fit(data)  # as fitted before the centring
    monkeypatch.undo()
    scores, samples = est.score_samples(data), est.sample(20, random_state=0)
    del est.center_  # as written by skflow before center_
    est.save(tmp_path / "old.skflow")
    for old in (FlowDensity.load(tmp_path / "old.skflow"), pickle.loads(pickle.dumps(est))):
        np.testing.assert_array_equal(old.center_, 0.0)
        np.testing.assert_array_equal(old.score_samples(data), scores)
        np.testing.assert_array_equal(old.sample(20, random_state=0), samples)


def test_params_set_after_fit_change_the_next_fit_not_this_model(tmp_path):
    """set_params after fit (as a grid search's clone does not, but a user
    might) leaves the fitted model scoring as before, and save writes the
    parameters its flow was built with, so the file loads."""
    est = FlowDensity(**FAST).fit(X)
    scores = est.score_samples(X)
    est.set_params(dtype="float64", kind="nsf", n_layers=3, gaussianize=False)
    np.testing.assert_array_equal(est.score_samples(X), scores)
    est.save(tmp_path / "m.safetensors")
    loaded = FlowDensity.load(tmp_path / "m.safetensors")
    assert loaded.get_params()["kind"] == "maf" and loaded.get_params()["dtype"] == "float32"
    np.testing.assert_array_equal(loaded.score_samples(X), scores)
    # The next fit follows the new parameters.
    assert est.fit(X).flow_.dequantization.dtype == torch.float64
    # A model pickled before fit recorded its parameters: those as pickled.
    old = FlowDensity(**FAST).fit(X)
    del old._fitted_params
    old = pickle.loads(pickle.dumps(old)).set_params(kind="nsf")
    old.save(tmp_path / "old.safetensors")
    assert FlowDensity.load(tmp_path / "old.safetensors").get_params()["kind"] == "maf"


@pytest.mark.parametrize("kind", ["realnvp", "nice", "glow"])
def test_coupling_pickles_without_derived_views_load(kind, monkeypatch):
    """Pickles of skflow 0.1.0 hold couplings without the strided views
    derived from their index buffers; they load and score as before."""
    from skflow.engine.transforms import Coupling

    est = FlowDensity(kind, **{**FAST, "max_iter": 2}).fit(X)
    derived = ("_cond_cols", "_trans_cols")
    with monkeypatch.context() as m:
        m.setattr(
            Coupling,
            "__getstate__",
            lambda self: {k: v for k, v in self.__dict__.items() if k not in derived},
            raising=False,
        )
        old = pickle.dumps(est)
    np.testing.assert_array_equal(pickle.loads(old).score_samples(X), est.score_samples(X))


def test_models_from_skflow_0_2_keep_their_logarithmic_tails(fitted, saved):
    # skflow 0.2's marginal map turned logarithmic right past its last knots;
    # 0.3's goes on linearly for 50 normal units. A model fitted before scores
    # (far rows) and samples as it did, from a file or a pickle.
    from skflow.engine.transforms import PiecewiseLinear

    far = X[:3] + 1e3 * X.std(axis=0)
    # (0.2 wrote no marginal_tails entry.)
    _resave(saved, lambda h: h.update(skflow_version="0.2.0") or h.pop("marginal_tails"))
    old = FlowDensity.load(saved)
    marginal = [m for m in old.flow_.modules() if isinstance(m, PiecewiseLinear)]
    assert marginal and all(m.linear_tail == 0.0 for m in marginal)
    pickled = pickle.loads(pickle.dumps(fitted))
    for m in pickled.flow_.modules():
        if isinstance(m, PiecewiseLinear):
            del m.linear_tail  # (as a 0.2 pickle holds it)
    np.testing.assert_array_equal(pickled.score_samples(far), old.score_samples(far))
    assert not np.allclose(fitted.score_samples(far), old.score_samples(far))
    np.testing.assert_array_equal(old.score_samples(X), fitted.score_samples(X))
    # Saved again by this version (the file then says 0.3): still 0.2's tails.
    for model in (old, pickled):
        model.save(saved)
        again = FlowDensity.load(saved)
        np.testing.assert_array_equal(again.score_samples(far), old.score_samples(far))
    fitted.save(saved)  # (and this version's own tails stay too)
    np.testing.assert_array_equal(
        FlowDensity.load(saved).score_samples(far), fitted.score_samples(far)
    )


def test_continuous_flow_counts_carry_on_after_load(tmp_path):
    # fit_total covers all fits of a warm-started flow: it restarted from 0
    # after save/load (366 after a pickle round trip, 168 after a file).
    est = FlowDensity(
        "cnf",
        n_layers=1,
        hidden_units=8,
        max_iter=3,
        warm_start=True,
        random_state=0,
        kind_options={"training": "mle", "solver": "rk4", "n_steps": 4},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (ConvergenceWarning; the fixed-step solver's)
        est.fit(X)
        est.save(tmp_path / "m.safetensors")
        loaded = FlowDensity.load(tmp_path / "m.safetensors")
        assert loaded.flow_.own_objective.nfe == est.nfe_
        pickled = pickle.loads(pickle.dumps(est))
        loaded.fit(X)
        pickled.fit(X)
    assert loaded.nfe_ == pickled.nfe_ and loaded.nfe_["fit_total"] > est.nfe_["fit_total"]
    # Forged counts are refused like any other bad entry, not an OverflowError.
    est.save(tmp_path / "m.safetensors")
    _resave(
        tmp_path / "m.safetensors",
        lambda h: h["fitted"].update(
            nfe_=_persistence.encode(
                {"fit_total": 1e300, "fit_per_solve": 1e-300, "last_solve": 14}, "nfe_"
            )
        ),
    )
    with pytest.raises(ValueError, match="holds no evaluation counts"):
        FlowDensity.load(tmp_path / "m.safetensors")
