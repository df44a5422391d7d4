"""A safe file format for fitted estimators: tensors plus JSON, no pickle.

A file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: a
JSON header followed by raw tensor bytes. Reading it parses JSON and copies
bytes, and never runs code, unlike ``pickle``/``joblib`` (which can execute
arbitrary code while loading) or ``torch.load`` (a restricted unpickler that
has had escapes). The header's ``skflow`` entry holds the estimator's class,
parameters and JSON-able fitted attributes; the tensors are the flow's
``state_dict``. A SHA-256 over both detects corrupted or edited files.

This module knows nothing about flows: the estimator decides what goes in and
rebuilds itself from what comes out.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes

# Bump when the layout of the header changes; readers refuse newer formats.
FORMAT_VERSION = 1
_HEADER_KEY = "skflow"
_HASH_KEY = "sha256"


def encode(value: Any, name: str) -> Any:
    """``value`` as JSON-able data; tuples, dicts, arrays and devices are tagged
    so that :func:`decode` gives back the same types.

    Raises ``TypeError`` naming ``name`` for anything else (a model object, a
    ``RandomState``, ...), rather than silently saving something lossy.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return encode(value.item(), name)
    if isinstance(value, list):
        return [encode(v, name) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, name) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: encode(v, name) for k, v in value.items()}}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf" or (
            value.dtype == object and all(isinstance(v, str) for v in value.flat)
        ):
            return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    raise TypeError(
        f"{name}={value!r} (of type {type(value).__name__}) cannot be stored in a "
        "skflow model file, which holds only tensors and JSON data (numbers, strings, "
        "lists, dicts, numeric or string arrays)."
    )


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: decode(v) for k, v in value["__dict__"].items()}
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    raise ValueError(f"Unknown entry {sorted(value)} in a skflow model file.")


def check_tensors(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the first few tensors that are missing,
    unexpected or of another shape or dtype in ``found``, compared with
    ``expected``."""

    def listing(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing = sorted(expected.keys() - found.keys())
    extra = sorted(found.keys() - expected.keys())
    reshaped = sorted(
        f"{k} {tuple(found[k].shape)} {found[k].dtype} instead of "
        f"{tuple(expected[k].shape)} {expected[k].dtype}"
        for k in expected.keys() & found.keys()
        if found[k].shape != expected[k].shape or found[k].dtype != expected[k].dtype
    )
    problems = [
        f"{what}: {listing(names)}"
        for what, names in [
            ("missing tensors", missing),
            ("unexpected tensors", extra),
            ("tensors of another shape or dtype", reshaped),
        ]
        if names
    ]
    if problems:
        raise ValueError("; ".join(problems))


def _digest(header: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Raw bytes of any dtype (bfloat16 included): reinterpret as uint8.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write(
    path: str | os.PathLike, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Write ``header`` (JSON-able) and ``tensors`` to ``path``, atomically.

    The file is written next to ``path`` and then renamed over it, so a crash
    while saving never leaves a half-written model where a good one was.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{os.fspath(path)!r} is a directory: save to a file in it.")
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot save to {os.fspath(path)!r}: the folder {os.fspath(path.parent)!r} does "
            "not exist."
        )
    # Private contiguous CPU copies: safetensors refuses views and shared storage.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    text = json.dumps({"format_version": FORMAT_VERSION, **header}, sort_keys=True)
    data = _safetensors_bytes(tensors, {_HEADER_KEY: text, _HASH_KEY: _digest(text, tensors)})
    # A fresh name next to the target (same file system, so the rename is
    # atomic); plain open() keeps the user's umask, unlike mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read(
    path: str | os.PathLike, *, reader_version: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a file written by :func:`write`: ``(header, tensors)``.

    Raises ``ValueError`` saying what is wrong for a file that is not a skflow
    model, was written in a newer format, or whose checksum does not match
    (corrupted or edited).
    """
    if Path(path).is_dir():
        raise IsADirectoryError(f"{os.fspath(path)!r} is a directory, not a skflow model file.")
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            # (Copies: the file's tensors are only 8-byte aligned, so BLAS
            # picked other kernels and float64 scores moved by 3e-14.)
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except SafetensorError as exc:
        raise ValueError(
            f"{os.fspath(path)!r} is not a skflow model file, or it is truncated or "
            f"corrupted ({exc})."
        ) from None
    if _HEADER_KEY not in meta:
        raise ValueError(
            f"{os.fspath(path)!r} is a safetensors file but not one written by skflow's save()."
        )
    text = meta[_HEADER_KEY]
    try:
        header = json.loads(text)
        version = int(header["format_version"])
        if version < 1:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{os.fspath(path)!r} has a damaged skflow header.") from None
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} was written by skflow {header.get('skflow_version')} in "
            f"file format {version}; this skflow ({reader_version}) reads formats up to "
            f"{FORMAT_VERSION}. Upgrade skflow to load it."
        )
    if meta.get(_HASH_KEY) != _digest(text, tensors):
        raise ValueError(
            f"{os.fspath(path)!r} failed its SHA-256 integrity check: the file was "
            "corrupted or modified after it was saved. Refusing to load it."
        )
    return header, tensors
