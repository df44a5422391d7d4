"""Anomaly-detection benchmark: FlowDensity vs IsolationForest, LOF, k-NN distance and GMM.

Semi-supervised protocol on the labelled ADBench tables in ../shared/data, one run, same
split for every method:
- fit on a random half of the normal rows (split seed 0; with --seeds N, each method is run on
  the splits of seeds 0..N-1 and its AUROCs are averaged, with the spread of the mean over the
  splits);
- test on the other half of the normal rows plus all anomalies;
- anomaly score = -score_samples (FlowDensity, LOF(novelty=True), IsolationForest,
  GaussianMixture), or the mean distance to the k=5 nearest training rows on standardized
  data (k-NN);
- GaussianMixture: full covariance, n_components in 1..10 chosen by BIC.
Metric: AUROC (higher is better); the table also gives each method's fit+score time as a
ratio to IsolationForest's.

Run:  python benchmarks/anomaly.py [--kinds maf nsf] [--tables adbench_6_cardio ...] [--seeds 3]
Writes benchmarks/results/anomaly.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.preprocessing import StandardScaler

from benchmarks._common import list_tables, load_table, markdown_table, write_json
from skflow import FlowDensity


def split(name: str, seed: int = 0):
    X, y = load_table(name)
    normal = np.flatnonzero(y == 0)
    rng = np.random.RandomState(seed)
    rng.shuffle(normal)
    train = normal[: len(normal) // 2]
    test = np.concatenate([normal[len(normal) // 2 :], np.flatnonzero(y == 1)])
    return X[train], X[test], y[test]


def iforest(X_train, X_test):
    return -IsolationForest(random_state=0).fit(X_train).score_samples(X_test)


def lof(X_train, X_test):
    return -LocalOutlierFactor(novelty=True).fit(X_train).score_samples(X_test)


def knn(X_train, X_test, k=5):
    scaler = StandardScaler().fit(X_train)
    nn = NearestNeighbors(n_neighbors=k).fit(scaler.transform(X_train))
    return nn.kneighbors(scaler.transform(X_test))[0].mean(axis=1)


def gmm_bic(X_train, X_test):
    models = [
        GaussianMixture(k, covariance_type="full", random_state=0).fit(X_train)
        for k in range(1, 11)
        if k <= len(X_train) // 5
    ]
    best = min(models, key=lambda m: m.bic(X_train))
    return -best.score_samples(X_test)


def flow(kind, params):
    def run(X_train, X_test):
        return -FlowDensity(kind=kind, random_state=0, **params).fit(X_train).score_samples(X_test)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["maf"])
    parser.add_argument("--tables", nargs="+", default=None)
    parser.add_argument("--params", default="{}", help="JSON dict of FlowDensity parameters")
    parser.add_argument("--out", default="anomaly")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="random halves of the normal rows to average over (split seeds 0..N-1)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    params = json.loads(args.params)
    methods = {f"flow:{k}": flow(k, params) for k in args.kinds}
    methods |= {"iforest": iforest, "lof": lof, "knn5": knn, "gmm_bic": gmm_bic}
    tables = args.tables or list_tables("adbench_")
    results = {}
    for name in tables:
        per_seed = {method: [] for method in methods}
        for seed in range(args.seeds):
            X_train, X_test, y_test = split(name, seed)
            for method, fit in methods.items():
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    scores = fit(X_train, X_test)
                seconds = time.perf_counter() - start
                # Never rank NaN as normal; roc_auc_score refuses infinities.
                top = np.finfo(float).max
                scores = np.nan_to_num(scores, nan=top, posinf=top, neginf=-top)
                auc = roc_auc_score(y_test, scores)
                per_seed[method].append((float(auc), seconds))
                print(
                    f"{name:24s} {method:12s} split {seed} AUROC {auc:.3f} {seconds:7.1f}s",
                    flush=True,
                )
        results[name] = {"n_train": len(X_train), "d": X_train.shape[1]}
        for method, runs in per_seed.items():
            aucs = [auc for auc, _ in runs]
            results[name][method] = {
                "auroc": float(np.mean(aucs)),
                "auroc_per_split": aucs,
                "seconds": float(np.mean([s for _, s in runs])),
            }

    header = ["table", "n×d"] + list(methods) + ["flow time / iforest time"]
    rows = []
    for name, r in results.items():
        flow_s = sum(r[m]["seconds"] for m in methods if m.startswith("flow:"))
        rows.append(
            [name, f"{r['n_train']}×{r['d']}"]
            + [r[m]["auroc"] for m in methods]
            + [flow_s / r["iforest"]["seconds"]]
        )
    means = {m: float(np.mean([r[m]["auroc"] for r in results.values()])) for m in methods}
    rows.append(["**mean**", ""] + [means[m] for m in methods] + [""])
    if args.seeds > 1:
        # The mean over the tables of each split, then its spread over the splits.
        split_means = {
            m: [
                float(np.mean([r[m]["auroc_per_split"][s] for r in results.values()]))
                for s in range(args.seeds)
            ]
            for m in methods
        }
        rows.append(
            ["**std (over splits) of the mean over tables**", ""]
            + [float(np.std(split_means[m])) for m in methods]
            + [""]
        )
        rows.append(
            ["**splits where it beats k-NN**", ""]
            + [
                f"{sum(a > b for a, b in zip(split_means[m], split_means['knn5'], strict=True))}"
                f"/{args.seeds}"
                for m in methods
            ]
            + [""]
        )
    table = markdown_table(header, rows)
    print()
    print(table)
    path = write_json(
        args.out,
        {
            "params": params,
            "kinds": args.kinds,
            "seeds": args.seeds,
            "results": results,
            "mean_auroc": means,
            "table": table,
        },
    )
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
