"""Every gallery example runs as a script in under a minute of CPU and writes its plot."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("plot_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_fast_and_writes_its_plot(script):
    pytest.importorskip("matplotlib")
    png = script.with_suffix(".png")
    png.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
        timeout=600,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert png.is_file() and png.stat().st_size > 10_000
    # CPU seconds, not wall time: the budget is the example's own work,
    # whatever else shares the machine.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 60, f"{script.name} took {cpu:.0f} CPU seconds"
