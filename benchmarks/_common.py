"""Shared helpers for the benchmarks: loading ../shared/data and writing results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKFLOW_SHARED_DATA", ROOT / ".." / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def list_tables(prefix: str) -> list[str]:
    """Names of the shared tables starting with ``prefix`` (e.g. "uci_")."""
    if not DATA.is_dir():
        raise SystemExit(f"shared data folder {DATA} not found (set SKFLOW_SHARED_DATA)")
    return sorted(p.stem for p in DATA.glob(f"{prefix}*.npz"))


def load_table(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``X`` and anomaly labels (None for unlabelled tables)."""
    with np.load(DATA / f"{name}.npz", allow_pickle=False) as d:
        X = d["X"].astype(np.float64)
        y = d["y"].astype(int) if "y" in d.files and str(d["label_kind"]) == "anomaly" else None
    return X, y


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": platform.platform(),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
