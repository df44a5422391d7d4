"""The command line: ``python -m skflow fit/score/sample``."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning

from skflow import FlowDensity
from skflow._cli import CLIError, main, read_table

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
FAST = ["--n-layers", "2", "--hidden-units", "16", "--max-iter", "5", "--random-state", "0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Training and query CSV files, with and without a header, and a fitted model."""
    d = tmp_path_factory.mktemp("cli")
    X, _ = make_moons(n_samples=300, noise=0.1, random_state=0)
    train = pd.DataFrame(X[:250], columns=["width", "height"])
    train.to_csv(d / "train.csv", index=False)
    train.to_csv(d / "train_noheader.csv", index=False, header=False)
    query = pd.DataFrame(np.vstack([X[250:], [[8.0, -8.0]]]), columns=["width", "height"])
    query.to_csv(d / "new.csv", index=False)
    model = d / "model.skflow"
    assert main(["fit", str(d / "train.csv"), "--out", str(model), *FAST]) == 0
    return d


def test_fit_writes_a_model_that_matches_the_python_api(files, capsys):
    est = FlowDensity.load(files / "model.skflow")
    assert list(est.feature_names_in_) == ["width", "height"]
    assert est.n_layers == 2 and est.hidden_units == 16 and est.max_iter == 5
    direct = FlowDensity(n_layers=2, hidden_units=16, max_iter=5, random_state=0)
    direct.fit(pd.read_csv(files / "train.csv"))
    query = pd.read_csv(files / "new.csv")
    np.testing.assert_allclose(est.score_samples(query), direct.score_samples(query), rtol=1e-6)


def test_fit_compile_flag_reaches_the_estimator(files, tmp_path, monkeypatch, capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: calls.append(fn) or fn)
    model = tmp_path / "compiled.skflow"
    assert main(["fit", str(files / "train.csv"), "--out", str(model), "--compile", *FAST]) == 0
    assert calls and FlowDensity.load(model).compile is True
    assert FlowDensity.load(files / "model.skflow").compile is False


def test_fit_options_reach_the_estimator(files, tmp_path, capsys):
    model = tmp_path / "options.skflow"
    extra = ["--validation-fraction", "0.2", "--n-iter-no-change", "3", "--tol", "0.01"]
    extra += ["--no-dequantize", "--no-whiten", "--no-gaussianize"]
    assert main(["fit", str(files / "train.csv"), "--out", str(model), *extra, *FAST]) == 0
    est = FlowDensity.load(model)
    assert (est.validation_fraction, est.n_iter_no_change, est.tol) == (0.2, 3, 0.01)
    assert (est.dequantize, est.whiten, est.gaussianize, est.early_stopping) == (
        False,
        False,
        False,
        True,
    )
    model = tmp_path / "no_validation.skflow"
    argv = ["fit", str(files / "train.csv"), "--out", str(model), "--no-early-stopping"]
    assert main([*argv, *FAST]) == 0
    est = FlowDensity.load(model)
    assert est.early_stopping is False and est.best_validation_score_ is None
    assert est.whiten is True  # switches not given keep the defaults


def test_score_writes_log_density_and_outlier_flag(files, capsys):
    out = files / "scores.csv"
    assert (
        main(["score", str(files / "model.skflow"), str(files / "new.csv"), "--out", str(out)]) == 0
    )
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["log_density", "outlier"]
    est = FlowDensity.load(files / "model.skflow")
    query = pd.read_csv(files / "new.csv")
    np.testing.assert_allclose(scores["log_density"], est.score_samples(query), rtol=1e-6)
    np.testing.assert_array_equal(scores["outlier"], (est.predict(query) == -1).astype(int))
    assert scores["outlier"].iloc[-1] == 1  # the far point (8, -8)


def test_score_to_stdout(files, capsys):
    assert main(["score", str(files / "model.skflow"), str(files / "new.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "log_density,outlier" and len(lines) == 1 + 51


def test_sample_keeps_column_names(files, capsys):
    assert main(["sample", str(files / "model.skflow"), "-n", "4", "--random-state", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "width,height" and len(lines) == 5


def test_sample_zero_rows_writes_the_header_only(files, tmp_path, capsys):
    model = tmp_path / "m.skflow"
    assert main(["fit", str(files / "train.csv"), "--out", str(model), *FAST]) == 0
    capsys.readouterr()
    assert main(["sample", str(model), "-n", "0"]) == 0
    assert capsys.readouterr().out.strip().count("\n") == 0  # the header line alone


def test_a_directory_is_not_a_data_file(tmp_path, capsys):
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "is a directory, not a file" in capsys.readouterr().err


def test_sample_too_large_is_a_one_line_error(files, tmp_path, capsys):
    model = tmp_path / "m.skflow"
    assert main(["fit", str(files / "train.csv"), "--out", str(model), *FAST]) == 0
    capsys.readouterr()
    assert main(["sample", str(model), "-n", str(2**70)]) == 2
    err = capsys.readouterr().err
    assert "draw fewer rows per call" in err and err.count("\n") == 1


def test_leading_blank_lines_are_skipped(files, tmp_path, capsys):
    csv = tmp_path / "blank.csv"
    csv.write_text("\n\n" + (files / "train.csv").read_text())
    model = tmp_path / "m.skflow"
    assert main(["fit", str(csv), "--out", str(model), *FAST]) == 0
    assert list(FlowDensity.load(model).feature_names_in_) == list(
        FlowDensity.load(files / "model.skflow").feature_names_in_
    )


def test_header_is_detected(files, capsys, tmp_path):
    model = tmp_path / "m.skflow"
    assert main(["fit", str(files / "train_noheader.csv"), "--out", str(model), *FAST]) == 0
    est = FlowDensity.load(model)
    assert not hasattr(est, "feature_names_in_") and est.n_features_in_ == 2
    # Forcing --header on a numeric first line loses that row to the header.
    assert (
        main(["fit", str(files / "train_noheader.csv"), "--out", str(model), "--header", *FAST])
        == 0
    )
    assert FlowDensity.load(model).feature_names_in_[0] != "width"


def test_booleans_in_the_first_line_are_data(tmp_path, capsys):
    # pandas reads True/False as data: the first row became the header (a
    # row lost, columns named after values) and scoring failed on the names.
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"a": rng.normal(size=80), "b": rng.random(80) < 0.4})
    data.loc[0, "b"] = True
    data.to_csv(tmp_path / "d.csv", index=False, header=False)
    X = read_table(str(tmp_path / "d.csv"), None)
    assert isinstance(X, np.ndarray) and X.shape == (80, 2)
    model = str(tmp_path / "m.skflow")
    assert main(["fit", str(tmp_path / "d.csv"), "--out", model, *FAST]) == 0
    assert "on 80 rows x 2 columns" in capsys.readouterr().err
    # "-" writes to standard output, as it reads from standard input.
    assert main(["score", model, str(tmp_path / "d.csv"), "--out", "-"]) == 0
    assert capsys.readouterr().out.count("\n") == 81 and not (tmp_path / "-").exists()


def test_header_guess_reads_the_whole_first_line(tmp_path):
    # A first line longer than one read was cut inside a field ("1.2e"),
    # which passed for text: the first data row became the header.
    rows = np.random.RandomState(14).randn(3, 4000)
    pd.DataFrame(rows).to_csv(tmp_path / "wide.csv", index=False, header=False)
    X = read_table(str(tmp_path / "wide.csv"), None)
    assert isinstance(X, np.ndarray) and X.shape == (3, 4000)


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tar", "w"), (".zip", None)])
def test_archives_guess_their_header_from_their_csv(tmp_path, header, suffix, mode):
    # A .tar.gz was gunzipped and its tar header taken for a CSV header (the
    # first data row lost); .zip and .tar needed a flag.
    import io
    import tarfile
    import zipfile

    content = ("a,b\n" if header else "") + "1,2\n3,4\n5,6\n"
    path = tmp_path / f"t{suffix}"
    if mode is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("t.csv", content)
    else:
        with tarfile.open(path, mode) as archive:
            member = tarfile.TarInfo("t.csv")
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content.encode()))
    got = read_table(str(path), None)
    assert got.shape == (3, 2) and isinstance(got, pd.DataFrame) == header


def test_archive_names_and_broken_archives(tmp_path):
    import zipfile

    # A plain CSV whose name holds ".tar" is no archive (pandas' rule).
    (tmp_path / "data.tar.csv").write_text("a,b\n1,2\n3,4\n")
    assert read_table(str(tmp_path / "data.tar.csv"), None).shape == (2, 2)
    (tmp_path / "bad.tar.gz").write_bytes(b"garbage")
    with pytest.raises(CLIError, match="bad.tar.gz is not a readable archive"):
        read_table(str(tmp_path / "bad.tar.gz"), None)
    with zipfile.ZipFile(tmp_path / "dir.zip", "w") as archive:  # as zip -r writes
        archive.writestr("d/", "")
        archive.writestr("d/x.csv", "a,b\n1,2\n")
    with pytest.raises(CLIError, match="must hold exactly one file"):
        read_table(str(tmp_path / "dir.zip"), None)


@pytest.mark.parametrize("header", [True, False])
def test_compressed_and_piped_files(tmp_path, header):
    # The header guess read the compressed bytes (always "a header"), and a
    # pipe was "no such file".
    X = np.random.RandomState(0).randn(30, 3)
    frame = pd.DataFrame(X, columns=list("abc"))
    frame.to_csv(tmp_path / "t.csv.gz", index=False, header=header)
    got = read_table(str(tmp_path / "t.csv.gz"), None)
    assert got.shape == (30, 3) and isinstance(got, pd.DataFrame) == header
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"gzip -dc {tmp_path / 't.csv.gz'} > {fifo}"])
    try:
        piped = read_table(str(fifo), None)
    finally:
        writer.wait()
    np.testing.assert_allclose(np.asarray(piped, dtype=float), np.asarray(got, dtype=float))


@pytest.mark.parametrize(
    "content, args, match",
    [
        (None, ["fit", "missing.csv"], "missing.csv: no such file"),
        (
            "a,b\n1,x\n2,3\n",
            ["fit", "{csv}"],
            "column 'b' is not numeric (value 'x' in data row 1)",
        ),
        ("a,b\n1,2\n3,\n", ["fit", "{csv}"], "column 'b' has a missing value in data row 2"),
        ("", ["fit", "{csv}"], "is empty"),
        ("a,b\n", ["fit", "{csv}"], "has no data rows"),
        # pandas would rename the second "a" to "a.1" behind the user's back.
        ("a,a,b\n1,2,3\n4,5,6\n", ["fit", "{csv}"], "column name 'a' appears more than once"),
        ("NA,NA,x\n1,2,3\n4,5,6\n", ["fit", "{csv}"], "column name 'NA' appears more than once"),
        ("a,b\n1,2\n3,4\n", ["fit", "{csv}", "--n-layers", "0"], "'n_layers' parameter"),
        ("a,b\n1,2\n3,4\n", ["fit", "{csv}", "--kind-options", '{"zz": 1}'], "kind_options"),
        ("a,b\n1,2\n", ["score", "{csv}", "{csv}"], "is not a skflow model file"),
        ("a,b\n1,2\n", ["score", "nope.skflow", "{csv}"], "nope.skflow: no such model file"),
        # Checked before training, not after it.
        ("a,b\n1,2\n3,4\n", ["fit", "{csv}", "--out", "{tmp}/no/m.skflow"], "does not exist"),
        ("a,b\n1,2\n3,4\n", ["fit", "{csv}", "--out", "{tmp}"], "is a directory"),
        # A header one name short: pandas took the first column as row
        # labels and dropped it without a word.
        ("b,c\n1,2,3\n4,5,6\n7,8,9\n", ["fit", "{csv}"], "more fields than the header"),
        # torch's failed allocation: one line, not its traceback.
        (
            "a,b\n1,2\n3,4\n5,7\n2,2\n",
            ["fit", "{csv}", "--hidden-units", "100000000"],
            "out of memory building or running the flow",
        ),
        # Python's float() takes "2020_01"; pandas does not: a header.
        ("2020_01,2020_02\nx,1\n", ["fit", "{csv}"], "column '2020_01' is not numeric"),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, content, args, match):
    csv = tmp_path / "data.csv"
    if content is not None:
        csv.write_text(content)
    argv = [a.replace("{csv}", str(csv)).replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("skflow: error: ")
    assert match in err


def test_score_rejects_other_columns(files, tmp_path, capsys):
    pd.read_csv(files / "new.csv")[["height", "width"]].to_csv(tmp_path / "s.csv", index=False)
    assert main(["score", str(files / "model.skflow"), str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "feature names should match" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["fit"],
        ["fit", "x.csv", "--kind", "nope"],
        ["fit", "x.csv", "--hidden-units", "a"],
        ["fit", "x.csv", "--hidden-units", "16,,16"],
        ["fit", "x.csv", "--max-time", "soon"],
    ],
)
def test_usage_errors_are_one_line_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "--help" in err
    if "--max-time" in argv:
        assert "expected seconds or 'none' (no budget), got 'soon'" in err


def test_traceback_flag_shows_where_an_error_came_from(files, tmp_path):
    pd.read_csv(files / "new.csv")[["height", "width"]].to_csv(tmp_path / "s.csv", index=False)
    argv = ["score", str(files / "model.skflow"), str(tmp_path / "s.csv")]
    with pytest.raises(ValueError, match="feature names should match"):
        main(["--traceback", *argv])


def test_help_is_useful(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("fit", "score", "sample", "model.skflow"):
        assert word in out


def test_python_dash_m_error_has_no_traceback(tmp_path):
    failed = subprocess.run(
        [sys.executable, "-m", "skflow", "fit", str(tmp_path / "no.csv")],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip() == f"python -m skflow: error: {tmp_path / 'no.csv'}: no such file."


def test_fit_weight_column(files, tmp_path, capsys):
    """--weight-column: the rows' weights, by name or 1-based position, not a feature."""
    train = pd.read_csv(files / "train.csv")
    weights = np.where(train["width"] > 0.5, 4.0, 1.0)
    train.assign(w=weights).to_csv(tmp_path / "weighted.csv", index=False)
    train.assign(w=weights).to_csv(tmp_path / "weighted_nh.csv", index=False, header=False)
    named, by_position = tmp_path / "a.skflow", tmp_path / "b.skflow"
    common = ["--weight-column"]
    assert (
        main(["fit", str(tmp_path / "weighted.csv"), "--out", str(named), *common, "w", *FAST]) == 0
    )
    assert "250 rows x 2 columns" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                str(tmp_path / "weighted_nh.csv"),
                "--out",
                str(by_position),
                *common,
                "3",
                *FAST,
            ]
        )
        == 0
    )
    est = FlowDensity.load(named)
    assert list(est.feature_names_in_) == ["width", "height"]
    direct = FlowDensity(n_layers=2, hidden_units=16, max_iter=5, random_state=0)
    direct.fit(train, sample_weight=weights)
    np.testing.assert_array_equal(est.score_samples(train), direct.score_samples(train))
    np.testing.assert_array_equal(
        FlowDensity.load(by_position).score_samples(train.to_numpy()),
        direct.score_samples(train),
    )
    capsys.readouterr()
    for path, column, message in [
        ("weighted.csv", "weight", "has no column 'weight'"),
        ("weighted_nh.csv", "w", "give the column's position, 1 to 3"),
        ("weighted_nh.csv", "4", "1 to 3"),
    ]:
        assert main(["fit", str(tmp_path / path), "--out", str(named), *common, column]) == 2
        assert message in capsys.readouterr().err
    # score leaves the weight column out of the same file, by name or position.
    out = tmp_path / "scores.csv"
    assert (
        main(["score", str(named), str(tmp_path / "weighted.csv"), "--out", str(out), *common, "w"])
        == 0
    )
    np.testing.assert_allclose(pd.read_csv(out)["log_density"], direct.score_samples(train))
    nh = str(tmp_path / "weighted_nh.csv")
    assert main(["score", str(by_position), nh, "--out", str(out), *common, "3"]) == 0
    capsys.readouterr()
    pd.DataFrame({"w": weights}).to_csv(tmp_path / "only.csv", index=False)
    for path, column, message in [
        ("weighted_nh.csv", "\u00b2", "give the column's position"),  # a superscript digit
        ("only.csv", "w", "no feature is left"),
    ]:
        assert main(["fit", str(tmp_path / path), "--out", str(named), *common, column]) == 2
        assert message in capsys.readouterr().err
    # Rows of weight 0 are left out, and the summary counts the others.
    train.assign(w=np.r_[np.zeros(50), weights[50:]]).to_csv(tmp_path / "zeros.csv", index=False)
    assert main(["fit", str(tmp_path / "zeros.csv"), "--out", str(named), *common, "w", *FAST]) == 0
    assert "200 rows x 2 columns" in capsys.readouterr().err
    train.assign(w=-weights).to_csv(tmp_path / "negative.csv", index=False)
    assert main(["fit", str(tmp_path / "negative.csv"), "--out", str(named), *common, "w"]) == 2
    assert "Negative values in data passed to `sample_weight`" in capsys.readouterr().err
    # Scoring the training file without --weight-column says which option to pass.
    assert main(["score", str(named), str(tmp_path / "weighted.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "column(s) 'w'" in err and "--weight-column w." in err


def test_warnings_give_the_command_lines_advice(files, tmp_path, capsys):
    # Not the estimator's "refit with warm_start=True", which a CLI user cannot set.
    warnings.simplefilter("always", ConvergenceWarning)  # (pytest restores the filters)
    model = str(tmp_path / "m.skflow")
    assert main(["fit", str(files / "train.csv"), "--out", model, *FAST]) == 0
    err = capsys.readouterr().err
    assert "reached max_iter=5" in err and "increasing --max-iter" in err
    assert "continue with 'fit --resume MODEL'" in err and "warm_start" not in err
    argv = ["fit", str(files / "train.csv"), "--out", model, "--resume", model, "--max-iter", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "run 'fit --resume MODEL' again to continue" in err and "warm_start" not in err


def test_fit_resume_continues_a_model(files, tmp_path, capsys):
    first, second = tmp_path / "first.skflow", tmp_path / "second.skflow"
    train = str(files / "train.csv")
    assert main(["fit", train, "--out", str(first), *FAST]) == 0
    assert (
        main(["fit", train, "--out", str(second), "--resume", str(first), "--max-iter", "4"]) == 0
    )
    assert "continued kind='maf' on 250 rows x 2 columns in 4 more epochs (9 in all)" in (
        capsys.readouterr().err
    )
    model = FlowDensity.load(second)
    assert model.n_iter_ == 5 + 4 and model.max_iter == 4
    assert model.warm_start is False  # --resume was for that run only
    # An option that reshapes the flow is refused, naming it.
    assert (
        main(["fit", train, "--out", str(second), "--resume", str(first), "--n-layers", "3"]) == 2
    )
    err = capsys.readouterr().err
    assert "continues that model, which was fitted with n_layers=2" in err
    assert "drop --resume to fit a new model" in err and err.count("\n") == 1
    assert main(["fit", train, "--out", str(second), "--resume", str(tmp_path / "nope")]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_a_reader_that_stops_early_ends_quietly(files):
    # `skflow sample ... | head -1`: a closed pipe is no error.
    cmd = [sys.executable, "-m", "skflow", "sample", str(files / "model.skflow"), "-n", "200000"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout.readline() == b"width,height\n"
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait()
    assert err == "" and proc.returncode == 141


def test_fit_reads_standard_input(files, tmp_path, capsys, monkeypatch):
    import io

    stdin = io.TextIOWrapper(io.BytesIO((files / "train.csv").read_bytes()))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["fit", "-", "--out", str(tmp_path / "m.skflow"), *FAST]) == 0
    est, ref = FlowDensity.load(tmp_path / "m.skflow"), FlowDensity.load(files / "model.skflow")
    query = pd.read_csv(files / "new.csv")
    np.testing.assert_array_equal(est.score_samples(query), ref.score_samples(query))


def test_integer_columns_are_sampled_as_integers_and_scores_without_noise_digits(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = pd.DataFrame(
        {
            "n": rng.poisson(4, 300),
            "x": rng.normal(size=300).round(4),
            "flag": rng.integers(0, 2, 300),
        }
    )
    data.to_csv(tmp_path / "d.csv", index=False)
    model, out = tmp_path / "m.skflow", tmp_path / "s.csv"
    assert main(["fit", str(tmp_path / "d.csv"), "--out", str(model), *FAST]) == 0
    assert main(["sample", str(model), "-n", "50", "--random-state", "0", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()[1:]
    n, x, flag = zip(*(line.split(",") for line in lines), strict=True)
    assert all(v.lstrip("-").isdigit() for v in n + flag) and set(flag) <= {"0", "1"}
    # (Samples keep every digit: they are shifted back by center_ in float64.)
    # Scores too.
    assert main(["score", str(model), str(tmp_path / "d.csv"), "--out", str(out)]) == 0
    scores = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    mantissas = [v.split("e")[0].replace("-", "").replace(".", "").lstrip("0") for v in scores]
    assert max(map(len, mantissas)) <= 9


@pytest.mark.parametrize("rows", [slice(None), slice(None, None, 3)], ids=["all", "filtered"])
def test_a_pandas_index_column_is_refused(tmp_path, capsys, rows):
    X, _ = make_moons(n_samples=60, noise=0.1, random_state=0)
    # Index written, by default: 0, 1, 2, ... or a filtered frame's 0, 3, 6, ...
    pd.DataFrame(X, columns=["a", "b"]).iloc[rows].to_csv(tmp_path / "i.csv")
    assert main(["fit", str(tmp_path / "i.csv"), "--out", str(tmp_path / "m"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "the first column has no name and holds increasing row labels" in err
    assert "index=False" in err


def test_an_unnamed_feature_column_is_kept(tmp_path):
    # No name, but not row labels (repeats): a feature.
    X, _ = make_moons(n_samples=60, noise=0.1, random_state=0)
    data = pd.DataFrame({"": np.arange(60) % 7, "a": X[:, 0], "b": X[:, 1]})
    data.to_csv(tmp_path / "u.csv", index=False)
    assert main(["fit", str(tmp_path / "u.csv"), "--out", str(tmp_path / "m"), *FAST]) == 0


def test_infinite_values_are_located(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,inf\n5,6\n")
    assert main(["fit", str(tmp_path / "d.csv"), "--out", str(tmp_path / "m"), *FAST]) == 2
    assert "column 'b' has an infinite value (inf) in data row 2" in capsys.readouterr().err


def test_scoring_a_file_without_header_uses_the_models_column_names(files, tmp_path, capsys):
    pd.read_csv(files / "new.csv").to_csv(tmp_path / "q.csv", index=False, header=False)
    out = tmp_path / "s.csv"
    assert (
        main(["score", str(files / "model.skflow"), str(tmp_path / "q.csv"), "--out", str(out)])
        == 0
    )
    assert "has no header: its columns are taken as the training file's (width, height)" in (
        capsys.readouterr().err
    )
    assert (
        main(
            [
                "score",
                str(files / "model.skflow"),
                str(files / "new.csv"),
                "--out",
                str(tmp_path / "r.csv"),
            ]
        )
        == 0
    )
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(tmp_path / "r.csv"))


def test_far_from_zero_samples_keep_their_digits(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pd.DataFrame({"t": 1.7e9 + rng.normal(0, 100, 300), "x": rng.normal(size=300)}).to_csv(
        tmp_path / "d.csv", index=False
    )
    model, out = tmp_path / "m.skflow", tmp_path / "s.csv"
    assert main(["fit", str(tmp_path / "d.csv"), "--out", str(model), *FAST]) == 0
    assert main(["sample", str(model), "-n", "200", "--random-state", "0", "--out", str(out)]) == 0
    t = pd.read_csv(out)["t"].to_numpy()
    # Not snapped to a float32 grid 128 units wide at 1.7e9.
    assert len(np.unique(np.round(t))) > 150 and 1.6e9 < t.mean() < 1.8e9


def test_utf8_names_with_a_bom_and_unsigned_integers(tmp_path, capsys):
    text = "temp\u00e9rature,n\n" + "".join(
        f"{v},{i % 7}\n" for i, v in enumerate(np.linspace(0, 1, 60))
    )
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    model = tmp_path / "m.skflow"
    assert main(["fit", str(tmp_path / "d.csv"), "--out", str(model), *FAST]) == 0
    assert list(FlowDensity.load(model).feature_names_in_) == ["temp\u00e9rature", "n"]
    (tmp_path / "u.csv").write_text("a,b\n18446744073709551615,1\n9223372036854775808,2\n5,3\n")
    from skflow._cli import read_table

    assert read_table(str(tmp_path / "u.csv"), None)["a"].min() > 0  # no int64 wrap


def test_max_time_none_removes_the_budget(files, tmp_path, capsys):
    model = tmp_path / "unbounded.skflow"
    train = str(files / "train.csv")
    assert main(["fit", train, "--out", str(model), "--max-time", "None", *FAST]) == 0
    assert FlowDensity.load(model).max_time is None
    assert main(["fit", train, "--out", str(model), "--max-time", "30", *FAST]) == 0
    assert FlowDensity.load(model).max_time == 30


def test_boolean_columns_are_sampled_as_booleans(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"x": rng.normal(size=200), "flag": rng.random(200) < 0.3})
    data.to_csv(tmp_path / "d.csv", index=False)
    model, out = tmp_path / "m.skflow", tmp_path / "s.csv"
    assert main(["fit", str(tmp_path / "d.csv"), "--out", str(model), *FAST]) == 0
    assert main(["sample", str(model), "-n", "40", "--random-state", "0", "--out", str(out)]) == 0
    flags = pd.read_csv(out)["flag"]
    assert flags.dtype == bool and flags.any() and not flags.all()
    # The booleans score as the 0/1 values they were fitted as.
    assert main(["score", str(model), str(tmp_path / "d.csv"), "--out", str(out)]) == 0
    direct = FlowDensity.load(model).score_samples(data.astype(float))
    np.testing.assert_allclose(pd.read_csv(out)["log_density"], direct, rtol=1e-6)


def test_header_names_are_compared_as_text(tmp_path, capsys):
    # "1.0" and "1" (or "True" and "true") are different names, though
    # equal as numbers (or booleans).
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{a:.3f},{b:.3f},{c:.3f}" for a, b, c in rng.normal(size=(60, 3)))
    (tmp_path / "h.csv").write_text("1.0,1,True\n" + rows + "\n")
    (tmp_path / "t.csv").write_text("True,true,x\n" + rows + "\n")
    for name, columns in (("h.csv", ["1.0", "1", "True"]), ("t.csv", ["True", "true", "x"])):
        model = tmp_path / f"{name}.skflow"
        argv = ["fit", str(tmp_path / name), "--header", "--out", str(model), *FAST]
        assert main(argv) == 0
        assert list(FlowDensity.load(model).feature_names_in_) == columns
