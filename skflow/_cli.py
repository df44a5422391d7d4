"""Command line: fit a flow on a CSV file, score or sample with a saved model.

``python -m skflow fit data.csv --kind maf --out model.skflow`` and
``python -m skflow score model.skflow new.csv``; the ``skflow`` console
script is the same program. Run ``python -m skflow --help`` for the options.

CSV files are read with pandas. The first line is a header when any of its
fields is not a number (``--header`` / ``--no-header`` override the guess).
A model fitted on a file with a header remembers the column names, and
scoring checks that the new file has the same columns in the same order.

User errors (a missing file, a non-numeric column, a bad option, a damaged
model file) print one line ``skflow: error: ...`` on stderr and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import io
import json
import lzma
import os
import re
import sys
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import IO

import numpy as np
import torch

from skflow import __version__
from skflow._estimator import FlowDensity
from skflow.engine import KINDS

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error, reported as one line on stderr."""


class _Parser(argparse.ArgumentParser):
    """argparse, but with a usage error printed as one line instead of usage + error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ reading
# Bytes read at a time to guess whether the first line is a header.
_HEAD_BYTES = 1 << 16
# Compressed files pandas opens by their suffix; the header guess reads them
# decompressed (the bytes on disk are no CSV).
_OPENERS: dict[str, Callable] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@contextmanager
def _decompressed(path: str) -> Iterator[IO[bytes]]:
    """The CSV bytes of ``path`` as pandas would read them: the file, the
    only member of a .zip or .tar archive (.tar.gz and the like included),
    or the file decompressed by its suffix."""
    name = Path(path).name.lower()
    with ExitStack() as stack:
        stream: IO[bytes] | None
        # (pandas' own rule: a tar archive by these endings only.)
        if name.endswith((".tar", ".tar.gz", ".tar.bz2", ".tar.xz")):
            tar = stack.enter_context(tarfile.open(path))
            member = next((m for m in tar if m.isfile()), None)
            stream = tar.extractfile(member) if member is not None else None
        elif name.endswith(".zip"):
            zipped = stack.enter_context(zipfile.ZipFile(path))
            files = [n for n in zipped.namelist() if not n.endswith("/")]
            if len(files) > 1 or len(files) < len(zipped.namelist()):
                raise CLIError(f"{path} must hold exactly one file (the CSV), as pandas reads it.")
            stream = zipped.open(files[0]) if files else None
        elif name.endswith(".zst"):
            raise CLIError(
                f"{path}: cannot tell whether a .zst file starts with a header; "
                "pass --header or --no-header."
            )
        else:
            stream = _OPENERS.get(Path(name).suffix, open)(path, "rb")
        if stream is None:
            raise CLIError(f"{path} is an empty archive.")
        yield stack.enter_context(stream)


def _first_line(stream) -> bytes:
    """The first bytes of ``stream`` up to the end of its first non-blank
    line (a line longer than one read goes on: a field cut in two would not
    parse as a number, and the line would pass for a header)."""
    head = stream.read(_HEAD_BYTES)
    while not re.search(rb"\S[^\r\n]*[\r\n]", head):
        more = stream.read(_HEAD_BYTES)
        if not more:
            break
        head += more
    return head


def _is_number(field: str) -> bool:
    """Whether pandas reads ``field`` as a number (Python's float() also
    takes "1_000" and non-ASCII digits, which pandas reads as text)."""
    if "_" in field or not field.isascii():
        return False
    try:
        float(field)
    except ValueError:
        return False
    return True


# What pandas reads as booleans: data, not names.
_BOOLEANS = frozenset({"True", "TRUE", "true", "False", "FALSE", "false"})


def _has_header(head: bytes, path: str) -> bool:
    """A first line with any field that is neither a number nor a boolean
    is a header (blank lines before it are skipped, as pandas skips them).
    ``head``: the file's first bytes."""
    text = head.decode("utf-8-sig", errors="replace")
    rows = csv.reader(io.StringIO(text, newline=""))
    first = next((r for r in rows if len(r) > 1 or (r and r[0].strip())), None)
    if not first:
        raise CLIError(f"{path} is empty.")
    return not all(_is_number(field) or field.strip() in _BOOLEANS for field in first)


def read_table(path: str, header: bool | None):
    """Read a numeric CSV file (``-``: standard input) into a DataFrame
    (header given) or an ndarray. Integer columns stay integers, so a model
    fitted on them samples integers."""
    try:
        import pandas as pd
    except ImportError:
        raise CLIError("the command line reads CSV files with pandas: pip install pandas") from None
    source: io.BytesIO | str
    if path == "-" or (
        Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir()
    ):
        # Standard input or a pipe (<(...)): read once, as they cannot rewind.
        with open(path, "rb") if path != "-" else nullcontext(sys.stdin.buffer) as stream:
            source = io.BytesIO(stream.read())
        if path == "-":
            path = "standard input"
    elif not Path(path).is_file():
        what = "is a directory, not a file" if Path(path).is_dir() else "no such file"
        raise CLIError(f"{path}: {what}.")
    else:
        source = path  # pandas streams the file itself
    if header is None:
        try:
            with (
                _decompressed(source) if isinstance(source, str) else nullcontext(source) as stream
            ):
                head = _first_line(stream)
        except (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, EOFError) as exc:
            raise CLIError(f"{path} is not a readable archive: {_one_line(exc)}") from None
        if isinstance(source, io.BytesIO):
            source.seek(0)
        header = _has_header(head, path)
    try:
        # UTF-8 whatever the locale (a BOM, as spreadsheets write, is skipped).
        # index_col=False: data rows longer than the header are an error,
        # not a first column taken as row labels and dropped.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(
                source, header=0 if header else None, encoding="utf-8-sig", index_col=False
            )
        if header:
            # pandas renames a repeated name ("a", "a.1"): the model's feature
            # names and sample's header would no longer be the file's.
            if isinstance(source, io.BytesIO):
                source.seek(0)
            # (As text: parsed, "1" and "1.0" or "NA" and "NA" would compare wrongly.)
            names = pd.read_csv(
                source,
                header=None,
                nrows=1,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
            ).iloc[0]
            repeated = names[names.duplicated()]
            if len(repeated):
                raise CLIError(
                    f"{path}: column name {str(repeated.iloc[0])!r} appears more than once "
                    "in the header; give every column its own name."
                )
    except pd.errors.ParserWarning:
        raise CLIError(
            f"{path}: data rows have more fields than the header has names; give every "
            "column a name (or fix the rows)."
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path} is not a readable CSV file: {_one_line(exc)}") from None
    if df.shape[0] == 0:
        raise CLIError(f"{path} has no data rows.")
    first = df.iloc[:, 0]
    if (
        header
        and str(df.columns[0]).startswith("Unnamed: 0")
        and pd.api.types.is_integer_dtype(first)
        # Row labels: 0, 1, 2, ... or what is left of them after filtering rows.
        and first.is_unique
        and first.is_monotonic_increasing
    ):
        raise CLIError(
            f"{path}: the first column has no name and holds increasing row labels "
            f"({', '.join(map(str, first.iloc[:3]))}, ...): an index, as pandas' to_csv writes "
            "by default, not a feature. Write the file with to_csv(..., index=False), or drop "
            "that column."
        )
    for pos, column in enumerate(df.columns):
        values = df[column]
        name = f"column {column!r}" if header else f"column {pos + 1}"
        numeric = pd.to_numeric(values, errors="coerce")
        bad = numeric.isna() & values.notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise CLIError(
                f"{path}: {name} is not numeric (value {values.iloc[row]!r} in data row "
                f"{row + 1}); pass numeric columns only."
            )
        if numeric.isna().any():
            row = int(numeric.isna().to_numpy().argmax())
            raise CLIError(
                f"{path}: {name} has a missing value in data row {row + 1}; "
                "drop or impute incomplete rows first."
            )
        infinite = ~np.isfinite(numeric.to_numpy(dtype=float))
        if infinite.any():
            row = int(infinite.argmax())
            raise CLIError(
                f"{path}: {name} has an infinite value ({values.iloc[row]}) in data row "
                f"{row + 1}; drop those rows or clip the values first."
            )
        # Signed integers stay integers, and named boolean columns booleans,
        # so sample writes them back as such (uint64 would wrap in int64).
        if not (header and numeric.dtype.kind == "b"):
            df[column] = numeric.astype(np.int64 if numeric.dtype.kind == "i" else float)
    if header:
        df.columns = [str(c) for c in df.columns]
        return df
    return df.to_numpy()


class _ReaderGone(Exception):
    """Standard output's reader stopped early (``| head``)."""


def _write_table(frame, out: str | None, float_format: str | None = None) -> None:
    if out is not None and out != "-":
        frame.to_csv(out, index=False, float_format=float_format)
        return
    try:
        frame.to_csv(sys.stdout, index=False, float_format=float_format)
        sys.stdout.flush()
    except BrokenPipeError:
        # What the reader read is fine; nothing more can reach it, and the
        # interpreter's last flush at exit must not fail either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass  # a stdout without a file descriptor (a notebook, a test)
        raise _ReaderGone from None


# ----------------------------------------------------------------- commands
def _hidden_units(text: str) -> int | tuple[int, ...]:
    # One number means (h, h), as the Python parameter hidden_units=h does.
    try:
        # Commas or spaces between the widths; an empty one ("16,,16") is a typo.
        units = tuple(int(part) for part in re.split(r"\s*,\s*|\s+", text.strip()))
    except ValueError:
        units = ()
    if not units:
        raise argparse.ArgumentTypeError(f"expected integers such as 128 or 128,64, got {text!r}")
    return units[0] if len(units) == 1 else units


def _contamination(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"a\": 1}'")
    return value


def _batch_size(text: str) -> str | int:
    return text if text == "auto" else int(text)


# --max-time none: the value that _fit turns into max_time=None (a None
# option means "not given", which keeps the default budget).
_NO_BUDGET = "none"


def _max_time(text: str) -> str | float:
    if text.lower() == _NO_BUDGET:
        return _NO_BUDGET
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds or 'none' (no budget), got {text!r}"
        ) from None


# Command-line option -> FlowDensity parameter (same name with "_"), with its type.
_FIT_OPTIONS: dict[str, tuple[Callable[[str], object], str]] = {
    "n-layers": (int, "number of flow layers"),
    "hidden-units": (_hidden_units, "conditioner hidden widths: 128 (two layers of 128) or 128,64"),
    "max-iter": (int, "maximum number of epochs"),
    "batch-size": (_batch_size, "minibatch size or 'auto'"),
    "learning-rate": (float, "AdamW learning rate"),
    "weight-decay": (float, "AdamW weight decay"),
    "contamination": (_contamination, "'auto' or the expected outlier fraction in (0, 0.5]"),
    "validation-fraction": (float, "share of the rows held out for early stopping"),
    "n-iter-no-change": (int, "early-stopping patience in epochs"),
    "tol": (float, "smallest validation improvement (nats per row) that resets the patience"),
    "max-time": (_max_time, "training time budget in seconds, or 'none' for no budget"),
    "device": (str, "'auto', 'cpu', 'cuda', 'cuda:1', 'mps'"),
    "dtype": (str, "'float32' or 'float64'"),
    "kind-options": (
        _json_dict,
        "extra options of the kind as JSON, e.g. '{\"n_bins\": 8}' with --kind nsf",
    ),
    "random-state": (int, "seed: the same seed and data give the same model"),
}


# Switches that turn a default-on FlowDensity parameter off.
_FIT_SWITCHES = {
    "no-early-stopping": ("early_stopping", "train on all rows, no validation split"),
    "no-dequantize": ("dequantize", "no dequantization noise on discrete columns"),
    "no-whiten": ("whiten", "no fixed whitening layer"),
    "no-gaussianize": ("gaussianize", "no fixed marginal Gaussianization layer"),
}


def _check_writable(out: Path) -> None:
    """Fail before training, not after it, on an output path that cannot be written."""
    if out.is_dir():
        raise CLIError(
            f"--out {out}: is a directory; give a file name such as {out / 'model.skflow'}."
        )
    parent = out.parent
    if not parent.is_dir():
        raise CLIError(f"--out {out}: directory {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"--out {out}: directory {parent} is not writable.")


def _split_weights(X, column: str, path: str) -> tuple[object, np.ndarray]:
    """``X`` without its weight column (a header name, or a 1-based
    position in a file without header) and that column's values."""
    if X.shape[1] < 2:
        raise CLIError(
            f"--weight-column {column}: {path} has one column, so no feature is left besides "
            "the weights."
        )
    if hasattr(X, "columns"):
        if column not in X.columns:
            raise CLIError(
                f"--weight-column {column}: {path} has no column {column!r} "
                f"(its columns: {', '.join(map(repr, X.columns))})."
            )
        return X.drop(columns=column), X[column].to_numpy()
    position = int(column) if column.isascii() and column.isdecimal() else 0
    if not 1 <= position <= X.shape[1]:
        raise CLIError(
            f"--weight-column {column}: {path} has no header, so give the column's position, "
            f"1 to {X.shape[1]}."
        )
    return np.delete(X, position - 1, axis=1), X[:, position - 1]


def _fit(args: argparse.Namespace) -> None:
    _check_writable(Path(args.out))
    X = read_table(args.data, args.header)
    weights = None
    if args.weight_column is not None:
        X, weights = _split_weights(X, args.weight_column, args.data)
    params = {
        opt.replace("-", "_"): getattr(args, opt.replace("-", "_"))
        for opt in _FIT_OPTIONS
        if getattr(args, opt.replace("-", "_")) is not None
    }
    if params.get("max_time") == _NO_BUDGET:
        params["max_time"] = None
    params.update(
        {param: False for param, _ in _FIT_SWITCHES.values() if getattr(args, param) is False}
    )
    if args.resume is None:
        est = FlowDensity(kind=args.kind or "maf", **params)
    else:
        # Options given change the loaded model's parameters; one that
        # reshapes the flow is refused below, naming it.
        if args.kind is not None:
            params["kind"] = args.kind
        est = _load(args.resume)
        was_warm, before = est.warm_start, est.n_iter_
        est.set_params(warm_start=True, **params)
        changed = est._shape_changes()
        if changed:
            raise CLIError(
                f"--resume {args.resume} continues that model, which was fitted with "
                f"{', '.join(f'{name}={value!r}' for name, value in changed.items())}: "
                "drop the options that change it, or drop --resume to fit a new model."
            )
    est.set_params(verbose=args.verbose, compile=args.compile)
    start = time.perf_counter()
    est.fit(X, sample_weight=weights)
    seconds = time.perf_counter() - start
    if args.resume is not None:
        # --resume was for this run: the file keeps the model's own setting.
        est.set_params(warm_start=was_warm)
    out = Path(args.out)
    est.save(out)
    rows, cols = X.shape
    if weights is not None:
        rows = int((weights > 0).sum())  # (rows of weight 0 are left out)
    summary = f"on {rows} rows x {cols} columns in "
    if args.resume is None:
        summary = f"fitted kind={est.kind!r} {summary}{est.n_iter_} epochs"
    else:
        summary = (
            f"continued kind={est.kind!r} {summary}{est.n_iter_ - before} more epochs "
            f"({est.n_iter_} in all)"
        )
    summary += f" ({seconds:.1f} s)"
    if est.best_validation_score_ is not None:
        summary += f", best validation score {est.best_validation_score_:.3f}"
    print(f"{args.prog}: {summary}; saved to {out}", file=sys.stderr)


def _load(path: str) -> FlowDensity:
    if not Path(path).is_file():
        raise CLIError(f"{path}: no such model file.")
    return FlowDensity.load(path)


def _score(args: argparse.Namespace) -> None:
    est = _load(args.model)
    X = read_table(args.data, args.header)  # (says how to install pandas if missing)
    import pandas as pd

    if args.weight_column is not None:
        X = _split_weights(X, args.weight_column, args.data)[0]
    names = getattr(est, "feature_names_in_", None)
    if names is not None and hasattr(X, "columns"):
        extra = [c for c in X.columns if c not in set(names)]
        if extra and set(names) <= set(X.columns):
            # (scikit-learn's message would not say what to do about them.)
            raise CLIError(
                f"{args.data} has column(s) {', '.join(map(repr, extra))} that the model was "
                "not fitted on: drop them from the file, or, if one holds the row weights "
                f"the model was fitted with, pass --weight-column "
                f"{extra[0] if len(extra) == 1 else 'NAME'}."
            )
    if names is not None and not hasattr(X, "columns") and X.shape[1] == len(names):
        warnings.warn(
            f"{'standard input' if args.data == '-' else args.data} has no header: its "
            "columns are taken as the training file's "
            f"({', '.join(map(str, names))}), in that order.",
            UserWarning,
            stacklevel=2,
        )
        X = pd.DataFrame(X, columns=names)
    log_density = est.score_samples(X)
    outlier = (log_density < est.offset_).astype(int)
    frame = pd.DataFrame({"log_density": log_density, "outlier": outlier})
    # A float32 model's scores to the 9 digits that restore them exactly, not
    # the 17 of their float64 copies.
    float32 = est._flow_dtype() == torch.float32
    _write_table(frame, args.out, "%.9g" if float32 else None)


def _sample(args: argparse.Namespace) -> None:
    est = _load(args.model)
    # (Every digit: the draws are shifted back by center_ in float64.)
    frame = est.sample(args.n_samples, random_state=args.random_state, as_frame=True)
    _write_table(frame, args.out)


def build_parser(prog: str = "skflow") -> argparse.ArgumentParser:
    """The argument parser of the ``skflow`` command.

    Parameters
    ----------
    prog : str, default="skflow"
        Program name shown in help and error messages.

    Returns
    -------
    parser : argparse.ArgumentParser
        Parser with the ``fit``, ``score`` and ``sample`` sub-commands.

    Examples
    --------
    >>> from skflow._cli import build_parser
    >>> args = build_parser().parse_args(["fit", "data.csv", "--kind", "realnvp"])
    >>> args.kind, args.out
    ('realnvp', 'model.skflow')
    """
    parser = _Parser(
        prog=prog,
        description="Normalizing-flow density estimation and outlier detection on CSV files.",
        epilog=(
            f"examples:\n  {prog} fit data.csv --kind maf --out model.skflow\n"
            f"  {prog} score model.skflow new.csv --out scores.csv\n"
            f"  {prog} sample model.skflow -n 1000 --out samples.csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"skflow {__version__}")
    traceback_help = "on an error, show Python's full traceback instead of one line (bug reports)"
    parser.add_argument("--traceback", action="store_true", help=traceback_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_header_flags(sub: argparse.ArgumentParser) -> None:
        group = sub.add_mutually_exclusive_group()
        group.add_argument(
            "--header",
            dest="header",
            action="store_true",
            default=None,
            help="the first line holds column names (default: guessed; it is a header "
            "when any field is not a number)",
        )
        group.add_argument(
            "--no-header", dest="header", action="store_false", help="the first line is data"
        )

    fit = commands.add_parser(
        "fit",
        help="fit a flow to a CSV file and save it",
        description="Fit FlowDensity to the numeric columns of a CSV file and save the model. "
        "Options not given keep FlowDensity's defaults.",
    )
    fit.add_argument("data", help="CSV file of training rows (numeric columns only)")
    fit.add_argument("--kind", choices=sorted(KINDS), help="flow family (default: maf)")
    fit.add_argument(
        "--out", default="model.skflow", help="model file to write (default: model.skflow)"
    )
    for opt, (type_, help_) in _FIT_OPTIONS.items():
        fit.add_argument(f"--{opt}", type=type_, help=help_, metavar=opt.split("-")[-1].upper())
    for opt, (param, help_) in _FIT_SWITCHES.items():
        fit.add_argument(f"--{opt}", dest=param, action="store_false", default=None, help=help_)
    fit.add_argument(
        "--resume",
        metavar="MODEL",
        help="continue training a model file written by 'fit' (warm_start) instead of "
        "starting anew, e.g. after its max_time cut it short; options given change its "
        "training parameters",
    )
    fit.add_argument(
        "--weight-column",
        metavar="COLUMN",
        help="column of row weights (non-negative; a name, or a 1-based position in a file "
        "without header): fits the weighted distribution; not a feature of the model",
    )
    fit.add_argument(
        "--compile",
        action="store_true",
        help="compile the training steps with torch.compile (faster epochs after a one-off "
        "compilation of seconds; for long fits)",
    )
    fit.add_argument(
        "-v", "--verbose", action="count", default=0, help="progress bar (-vv: a line per epoch)"
    )
    add_header_flags(fit)
    fit.set_defaults(run=_fit)

    score = commands.add_parser(
        "score",
        help="write the log-density and outlier flag of each row",
        description="Score each row of a CSV file with a saved model. Writes a CSV with "
        "the columns log_density (natural log of the density, in the units of the data) "
        "and outlier (1 when log_density is below the model's offset_, else 0), one row "
        "per input row, in order.",
    )
    score.add_argument("model", help="model file written by 'fit'")
    score.add_argument("data", help="CSV file of rows to score, with the training columns")
    score.add_argument("--out", help="CSV file to write (default or -: standard output)")
    score.add_argument(
        "--weight-column",
        metavar="COLUMN",
        help="a column to leave out (e.g. the weights of a file used with fit "
        "--weight-column): a name, or a 1-based position in a file without header",
    )
    add_header_flags(score)
    score.set_defaults(run=_score)

    sample = commands.add_parser(
        "sample",
        help="draw new rows from a saved model",
        description="Draw rows from a saved model; columns are named as in the training file.",
    )
    sample.add_argument("model", help="model file written by 'fit'")
    sample.add_argument("-n", "--n-samples", type=int, default=100, help="rows (default: 100)")
    sample.add_argument("--random-state", type=int, help="seed for reproducible draws")
    sample.add_argument("--out", help="CSV file to write (default or -: standard output)")
    sample.set_defaults(run=_sample)
    for command in (fit, score, sample):
        # (Also after the command; SUPPRESS keeps a flag given before it.)
        command.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help=traceback_help
        )
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# The estimator's advice in the command line's terms.
_CLI_WORDING = (
    ("refit with warm_start=True to continue from here", "continue with 'fit --resume MODEL'"),
    ("call fit again (warm_start=True) to continue", "run 'fit --resume MODEL' again to continue"),
    ("increasing max_iter", "increasing --max-iter"),
    ("raise max_time (None: no limit)", "raise --max-time (none: no limit)"),
)


def _warning_printer(prog: str):
    """A ``warnings.showwarning`` that prints one line ``prog: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = _one_line(message)
        for python, command in _CLI_WORDING:
            text = text.replace(python, command)
        print(f"{prog}: warning: {text}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None, prog: str = "skflow") -> int:
    """Run the ``skflow`` command line.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        Arguments without the program name; None reads ``sys.argv[1:]``.
    prog : str, default="skflow"
        Program name shown in help and error messages.

    Returns
    -------
    status : int
        0 on success, 2 on a user error (reported as one line on stderr),
        141 when standard output's reader stopped early (``| head``).

    Examples
    --------
    >>> from skflow._cli import main
    >>> main(["score", "missing.skflow", "new.csv"])
    2
    """
    args = build_parser(prog).parse_args(argv)
    args.prog = prog
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(prog)
        try:
            args.run(args)
        except _ReaderGone:
            # Quietly, as Unix tools do (status 128 + SIGPIPE).
            return 141
        except (CLIError, OSError, ValueError, TypeError, MemoryError, RuntimeError) as exc:
            # OSError: unreadable/unwritable paths; ValueError/TypeError: the
            # estimator's own messages (bad parameters, damaged model files,
            # columns that differ from the training file); MemoryError (or
            # torch's RuntimeError for a failed allocation): a sample or a
            # flow too large for this machine. A bug raises these too:
            # --traceback shows where.
            if args.traceback or (isinstance(exc, RuntimeError) and "allocate" not in str(exc)):
                raise
            message = _one_line(exc)
            if isinstance(exc, RuntimeError):
                message = (
                    "out of memory building or running the flow (fewer --n-layers or "
                    f"--hidden-units?): {message[:200]}"
                )
            print(f"{prog}: error: {message}", file=sys.stderr)
            return EXIT_USAGE
    return 0
