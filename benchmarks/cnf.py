"""Continuous flows: FFJORD (training="mle") vs flow matching vs MAF on shared UCI tables.

Protocol (one thread, same split for every method):
- tables: uci_airfoil, uci_concrete, uci_wine from ../shared/data; 75% train / 25% test
  (random_state=0), training rows capped at --max-train;
- cnf: one block (n_layers=1) with a (64, 64) vector field, dopri5 at rtol=atol=1e-5,
  learning_rate=1e-3, early stopping with n_iter_no_change=100 (max_iter unbounded);
  each training method is fitted with a ladder of time budgets (max_time): held-out
  log-likelihood against fit time;
- maf: default kind parameters, max_time=--maf-time (the non-ODE reference).
Metrics: mean held-out log-likelihood per row (nats, original units), fit wall time
(validation, offset and round-trip checks included), vector-field evaluations per training
solve (mle) and per scoring solve of the test rows. "time to target": the first fit time at
which a method's held-out log-likelihood reaches the lower of the two training methods'
best values (so both reach it); "speed-up" is FFJORD's time over flow matching's.

Run:  python benchmarks/cnf.py [--tables uci_airfoil ...] [--max-train N]
Writes benchmarks/results/cnf.json and prints markdown tables (about 4 minutes).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from benchmarks._common import load_table, markdown_table, write_json
from skflow import FlowDensity

TABLES = ["uci_airfoil", "uci_concrete", "uci_wine"]
BUDGETS = {
    "mle": [3.0, 6.0, 12.0, 24.0, 48.0],
    "flow_matching": [1.5, 3.0, 4.5, 6.0, 9.0, 12.0, 18.0, 24.0],
}
# Flow matching's validation loss flattens out within its noise long before
# its likelihood stops improving: both methods get patience 100 (FFJORD never
# stalls within these budgets anyway); max_iter never binds, the budget does.
CNF_PARAMS = {
    "max_iter": 100_000,
    "n_layers": 1,
    "hidden_units": (64, 64),
    "learning_rate": 1e-3,
    "n_iter_no_change": 100,
}


def fit_and_score(est: FlowDensity, X_train: np.ndarray, X_test: np.ndarray) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        est.fit(X_train)
        fit_s = time.perf_counter() - start
    row = {"fit_s": fit_s, "test_ll": est.score(X_test), "epochs": est.n_iter_}
    if hasattr(est, "nfe_"):
        row["nfe_fit_per_solve"] = est.nfe_["fit_per_solve"]
        # The scoring above was the last solve: NFE to score the test rows.
        row["nfe_score"] = est.flow_.own_objective.nfe["last_solve"]
    return row


def time_to(curve: list[dict], target: float) -> float | None:
    reached = [r["fit_s"] for r in curve if r["test_ll"] >= target]
    return min(reached) if reached else None


def run_table(name: str, max_train: int, maf_time: float) -> dict:
    X, _ = load_table(name)
    X_train, X_test = train_test_split(X, test_size=0.25, random_state=0)
    X_train = X_train[:max_train]
    out: dict = {"n_train": len(X_train), "n_test": len(X_test), "d": X.shape[1]}
    out["maf"] = fit_and_score(
        FlowDensity("maf", max_time=maf_time, random_state=0), X_train, X_test
    )
    for training, budgets in BUDGETS.items():
        out[training] = [
            {
                "budget_s": budget,
                **fit_and_score(
                    FlowDensity(
                        "cnf",
                        **CNF_PARAMS,
                        max_time=budget,
                        kind_options={"training": training},
                        random_state=0,
                    ),
                    X_train,
                    X_test,
                ),
            }
            for budget in budgets
        ]
        print(
            f"{name} {training}: "
            + ", ".join(f"{r['fit_s']:.1f}s -> {r['test_ll']:.3f}" for r in out[training]),
            flush=True,
        )
    best = {t: max(r["test_ll"] for r in out[t]) for t in BUDGETS}
    target = min(best.values())
    times = {t: time_to(out[t], target) for t in BUDGETS}
    out["target_ll"] = target
    out["time_to_target_s"] = times
    out["speedup"] = times["mle"] / times["flow_matching"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=TABLES)
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--maf-time", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = {name: run_table(name, args.max_train, args.maf_time) for name in args.tables}

    header = ["table", "method", "test LL", "fit s", "NFE/train solve", "NFE/score"]
    rows = []
    for name, res in results.items():
        rows.append([name, "maf", res["maf"]["test_ll"], res["maf"]["fit_s"], "-", "-"])
        for training in BUDGETS:
            r = max(res[training], key=lambda r: r["test_ll"])
            rows.append(
                [
                    name,
                    f"cnf {training} (budget {r['budget_s']:g}s)",
                    r["test_ll"],
                    r["fit_s"],
                    f"{r['nfe_fit_per_solve']:.0f}" if training == "mle" else "0 (no ODE)",
                    r["nfe_score"],
                ]
            )
    print("\nBest held-out log-likelihood of each method (nats per row, higher is better):\n")
    print(markdown_table(header, rows))

    header = ["table", "target LL", "FFJORD s", "flow matching s", "speed-up"]
    rows = [
        [
            name,
            res["target_ll"],
            res["time_to_target_s"]["mle"],
            res["time_to_target_s"]["flow_matching"],
            f"{res['speedup']:.1f}x",
        ]
        for name, res in results.items()
    ]
    print("\nFit time to reach the lower of the two CNF methods' best test LL:\n")
    print(markdown_table(header, rows))
    path = write_json(
        "cnf",
        {
            "protocol": __doc__,
            "cnf_params": {**CNF_PARAMS, "hidden_units": list(CNF_PARAMS["hidden_units"])},
            "budgets_s": BUDGETS,
            "results": results,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
