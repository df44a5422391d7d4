"""Shared test configuration: markers, thread limits and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Two CI cores: one torch thread per test process avoids oversubscription.
torch.set_num_threads(1)

SHARED_DATA = Path(
    os.environ.get(
        "SKFLOW_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow test: run with --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def load_shared(name: str) -> dict[str, np.ndarray]:
    """Load ``../shared/data/<name>.npz``, skipping the test where it is absent."""
    path = SHARED_DATA / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"shared dataset {path} not available")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
