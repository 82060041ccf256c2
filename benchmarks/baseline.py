"""Baseline vs champion (issue 23): on digits, breast_cancer, wine and a generated 50k-row table,
every pipeline stage (flows.stages, in the table's order, in process: what `mlpipe stage` / DVC
runs) in a fresh project and MLflow store per dataset and seed, with promote.allow_baseline true
and promote.beat_baseline_by 0: the champion is the network or the best baseline, whichever the
gate promotes. Per dataset: test accuracy of the best baseline, the network and the champion
(mean and std over seeds), which kind was promoted, the worst champion - baseline gap, and the
baseline stage's wall time.

    python -m benchmarks.baseline [--seeds 0 1 2] [--datasets digits wine ...] [--set KEY=VALUE ...]
    python -m benchmarks.baseline --smoke      (a 400-row generated table, 1 seed, 2 epochs, logreg)

Shrunk to fit ~15 min on a 2-core VM (SHRUNK; `--set` overrides them): tuning and compression
off (the network is the config in params.yaml: 40 epochs), 5-fold CV on; the 50k table also
trains with batch 256 and without CV (its 10k-row test split is large; 5 folds there cost ~5 min
per seed). Seeds change the split, the folds, the weights and the generated table's split."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from benchmarks.common import SMOKE_HELP, loadavg, scratch, utc_now

SHRUNK = ["tune.enabled=false", "compress.enabled=false", "promote.allow_baseline=true", "promote.beat_baseline_by=0.0"]
SHRUNK += ["promote.accuracy_floor=0.0"]  # every run promotes one of the two; the gate's choice is what is measured
BIG = ["train.batch_size=256", "cv.enabled=false"]  # the 50k table
DATASETS = {"digits": [], "breast_cancer": [], "wine": [], "table50k": BIG}
SMOKE = ["train.epochs=2", "cv.enabled=false", "baseline.tabular=[logreg]", "baseline.threads=1"]


def table(path: Path, rows: int) -> str:
    """A generated 3-class table (20 features, 10 informative, 2% label noise), always the same rows."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=rows, n_features=20, n_informative=10, n_redundant=4, n_classes=3, flip_y=0.02, random_state=0
    )
    df = pd.DataFrame(X.astype(np.float32), columns=[f"f{i}" for i in range(20)])
    df["label"] = np.array(["a", "b", "c"])[y]
    df.to_csv(path, index=False)
    return f"csv:{path}"


def one_run(dataset: str, seed: int, overrides: list[str], rows: int) -> dict:
    """Every stage on a fresh project -> the figures of one dataset and seed."""
    from components import tracking
    from components.config import load_config
    from flows.paths import Paths
    from flows.stages import STAGES

    with scratch("baseline") as root:
        src = table(root / f"{dataset}.csv", rows) if dataset.startswith("table") else f"sklearn:{dataset}"
        store = f"sqlite:///{root / 'mlflow.db'}"
        sets = [f"seed={seed}", f"data.source={src}", f"tracking.uri={store}", *SHRUNK, *overrides]
        cfg = load_config(None, sets)
        paths = Paths(root)
        tracking.setup(cfg.tracking, root)
        out, walls = {}, {}
        for stage in STAGES:
            t0 = time.perf_counter()
            out[stage.name] = stage.run(cfg, paths, None)
            walls[stage.name] = time.perf_counter() - t0
    b, reg, cv = out["baseline"], out["register"], out["cv"]
    return {
        "dataset": dataset,
        "seed": seed,
        "baseline": b["best"],
        "baseline_test": b["test_accuracy"],
        "baseline_cv": b["cv_accuracy_mean"],
        "baseline_models": {n: m["test_accuracy"] for n, m in b["models"].items()},
        "network_test": out["evaluate"]["test_accuracy"],
        "network_cv": cv.get("accuracy_mean"),
        "champion": reg["variant"] if reg["promoted"] else None,
        "champion_test": reg["test_accuracy"] if reg["promoted"] else None,
        "rule": reg["rule"],
        "choice": (reg.get("network_vs_baseline") or reg["comparisons"].get("baseline") or {}).get("text"),
        "baseline_stage_s": walls["baseline"],
        "run_s": sum(walls.values()),
        "stage_s": {k: round(v, 2) for k, v in walls.items()},
    }


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def report(results: list[dict]) -> None:
    print(
        "\n| dataset | best baseline (test) | network (test) | champion (test) | champion kind | worst champion - "
        "baseline | baseline stage s |\n|---|---|---|---|---|---|---|"
    )
    for ds in dict.fromkeys(r["dataset"] for r in results):
        rs = [r for r in results if r["dataset"] == ds]
        kinds = [r["champion"] or "none" for r in rs]
        gaps = [r["champion_test"] - r["baseline_test"] for r in rs if r["champion_test"] is not None]
        names = ", ".join(dict.fromkeys(r["baseline"] for r in rs))
        secs = [r["baseline_stage_s"] for r in rs]
        print(
            f"| {ds} | {_ms([r['baseline_test'] for r in rs])} ({names}) | {_ms([r['network_test'] for r in rs])} "
            f"| {_ms([r['champion_test'] for r in rs if r['champion_test'] is not None])} "
            f"| {', '.join(f'{k} x{kinds.count(k)}' for k in dict.fromkeys(kinds))} "
            f"| {min(gaps):+.4f} | {statistics.mean(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--rows", type=int, default=50_000, help="rows of the generated table")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.datasets, args.rows, args.sets = [0], ["table50k"], 400, SMOKE + args.sets
        DATASETS["table50k"] = []  # 400 rows: the default batch (SMOKE turns CV off, as BIG does)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # other jobs share the cores (README: Threads)
    print(
        f"{utc_now()}; {platform.machine()}, {os.cpu_count()} cores; loadavg before {loadavg()}; "
        f"overrides {SHRUNK + args.sets}",
        flush=True,
    )
    results = []
    for ds in args.datasets:
        for seed in args.seeds:
            r = one_run(ds, seed, DATASETS[ds] + args.sets, args.rows)
            results.append(r)
            print(json.dumps(r), flush=True)
    report(results)
    print(
        f"baseline stage: {statistics.mean(r['baseline_stage_s'] for r in results):.1f} s mean over {len(results)} runs"
    )
    print(f"loadavg after {loadavg()}")


if __name__ == "__main__":
    main()
