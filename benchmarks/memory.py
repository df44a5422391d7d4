"""Peak memory of scoring and sampling many rows: both work in bounded chunks.

Protocol: fit a default-size MAF (kind="maf", 10 features, 5,000 rows, 5 epochs,
random_state=0), save it with ``FlowDensity.save``; then, for each row count,
a fresh process loads the model, draws the query rows (float64, 10 features),
resets the kernel's peak-RSS counter (Linux ``/proc/self/clear_refs``) and calls
``score_samples`` once. "extra peak" is the peak resident memory during the call
minus the resident memory just before it (model and input already in memory),
so it is what scoring itself allocates. "unbatched" does the same with one
``flow_.log_prob`` call over all rows, what scoring would cost without chunks
(it grows linearly with the rows). "sample" draws the rows with
``est.sample`` instead (a MAF inverts one feature per pass: slow, the
largest activations). A warm-up call on 10 rows comes first, so
torch's one-time start-up allocations are not counted. One torch thread.

Run:  python -m benchmarks.memory [--rows N ...] [--unbatched-rows N ...] [--sample-rows N ...]
(each defaults to 100000 1000000). Writes benchmarks/results/memory.json and
prints a markdown table (about 4 minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import markdown_table, write_json

N_FEATURES = 10


def _rss_mib(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak since the last reset), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _measure(model: str, n_rows: int, mode: str) -> dict:
    """Run in a fresh process: score (``mode`` "score_samples" or "unbatched")
    or draw (``mode`` "sample") ``n_rows`` rows, report memory and time."""
    from skflow import FlowDensity

    torch.set_num_threads(1)
    est = FlowDensity.load(model)
    X = np.random.default_rng(0).standard_normal((n_rows, N_FEATURES))
    est.score_samples(X[:10])  # one-time torch start-up allocations are not scoring's
    before = _rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    start = time.perf_counter()
    if mode == "sample":
        out = est.sample(n_rows, random_state=0)
    elif mode == "unbatched":
        with torch.inference_mode():
            # The rows shifted as fit shifted them, as score_samples does.
            rows = torch.tensor(X - est.center_, dtype=torch.float32)
            out = est.flow_.log_prob(rows).double().numpy()
    else:
        out = est.score_samples(X)
    seconds = time.perf_counter() - start
    return {
        "rows": n_rows,
        "mode": mode,
        "input_mib": X.nbytes / 2**20,
        "rss_before_mib": before,
        "extra_peak_mib": _rss_mib("VmHWM") - before,
        "seconds": seconds,
        "finite": bool(np.isfinite(out).all()),
    }


def _in_child(model: str, n_rows: int, mode: str) -> dict:
    code = (
        "import json, sys; from benchmarks.memory import _measure; "
        "print(json.dumps(_measure(sys.argv[1], int(sys.argv[2]), sys.argv[3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, model, str(n_rows), mode],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if out.returncode != 0:  # e.g. killed for memory: say why and stop
        raise SystemExit(f"{n_rows} rows ({mode}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--unbatched-rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--sample-rows", type=int, nargs="*", default=[100_000, 1_000_000])
    args = parser.parse_args()

    from skflow import FlowDensity

    torch.set_num_threads(1)
    X = np.random.default_rng(1).standard_normal((5000, N_FEATURES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5 epochs: a ConvergenceWarning is expected
        est = FlowDensity(kind="maf", max_iter=5, random_state=0).fit(X)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "maf.safetensors")
        est.save(model)
        runs = [_in_child(model, n, "score_samples") for n in args.rows]
        runs += [_in_child(model, n, "unbatched") for n in args.unbatched_rows]
        runs += [_in_child(model, n, "sample") for n in args.sample_rows]

    rows = [
        [r["mode"], r["rows"], r["input_mib"], r["extra_peak_mib"], r["seconds"], r["finite"]]
        for r in runs
    ]
    header = ["mode", "rows", "input MiB", "extra peak MiB", "seconds", "all finite"]
    print(markdown_table(header, rows))
    for mode in ["score_samples", "unbatched", "sample"]:
        peak = {r["rows"]: r["extra_peak_mib"] for r in runs if r["mode"] == mode}
        if len(peak) > 1:
            lo, hi = min(peak), max(peak)
            print(
                f"{mode} extra peak, {hi:,} vs {lo:,} rows: "
                f"{peak[hi] / peak[lo]:.2f}x for {hi / lo:.0f}x the rows"
            )
    params = {k: v for k, v in est.get_params().items() if k != "kind_options"}
    path = write_json("memory", {"params": params, "n_features": N_FEATURES, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
