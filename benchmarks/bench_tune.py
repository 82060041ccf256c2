"""Benchmarks for the tune and cv stages (issue 3), on sklearn digits.

    python benchmarks/bench_tune.py pruning  [--seeds 0 1 2] [--budget 240] [--pruner halving] [--set KEY=VALUE] [--jobs 2]
    python benchmarks/bench_tune.py storage  [--trials 30] [--repeats 3]
    python benchmarks/bench_tune.py parallel [--trials 20]
    python benchmarks/bench_tune.py quality  --project DIR [--remeasure 1 2 3]   (a folder where `mlpipe run` finished)

Each prints a markdown table; BENCHMARKS.md quotes them with the machine load at the time."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from components import data, tune
from components.config import load_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load(root: Path) -> tune.TrialData:
    cfg = load_config(None)
    prepared = root / "data" / "prepared"
    if not (prepared / "meta.json").exists():
        data.save_prepared(data.ingest(cfg.data, cfg.seed), prepared)
    ds = data.load_prepared(prepared)
    m = ds.meta
    return tune.TrialData(ds.X_train, ds.y_train, m.kind, m.value_range, m.classes, m.feature_shape)


def pruned_study(pruner: str, seed: int, sets: list[str], budget: int, work: str) -> dict:
    """One study of the pruning comparison: trials until `budget` training epochs are spent."""
    import torch

    torch.set_num_threads(1)
    td = load(Path(work))
    cfg = load_config(None, [f"seed={seed}", "tune.epochs=[10,30]", "tune.min_resource=2", *sets, f"tune.pruner={pruner}"])
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=tune.make_pruner(cfg))
    used = [0]

    def count(row, epoch):
        used[0] += 1

    t0 = time.perf_counter()
    while used[0] < budget:
        study.optimize(lambda t: tune.objective(t, cfg, td, log=count), n_trials=1)
    c = tune.counts(study)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = min(done, key=lambda t: t.value) if done else None
    row = {"pruner": pruner, "seed": seed, "epochs": used[0], "finished": c["complete"] + c["pruned"], "complete": c["complete"],
           "pruned": c["pruned"], "best_val_acc": max((t.user_attrs["val_accuracy"] for t in done), default=float("nan")),
           "best_val_loss": best.value if best else float("nan"),
           "best_trial_val_acc": best.user_attrs["val_accuracy"] if best else float("nan"), "wall_s": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    return row


def pruning(args) -> None:
    """Same total budget of training epochs, with and without a pruner: trials finished and the
    best validation accuracy reached (over the complete trials). --jobs N runs N studies at once
    (each on 1 torch thread; a study's result does not depend on what runs beside it)."""
    from concurrent.futures import ProcessPoolExecutor

    load(Path(args.work))  # prepare the data once, before the workers read it
    jobs = [(p, seed, args.sets, args.budget, args.work) for p in ("none", args.pruner) for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(pruned_study, *zip(*jobs)))
    print(f"\noverrides: {args.sets or 'none'}; budget {args.budget} epochs per study")
    print("\n| pruner | seed | epochs used | trials finished (complete + pruned) | best val acc | best val loss "
          "| val acc of best-loss trial | wall s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pruner']} | {r['seed']} | {r['epochs']} | {r['finished']} ({r['complete']} + {r['pruned']}) | "
              f"{r['best_val_acc']:.4f} | {r['best_val_loss']:.4f} | {r['best_trial_val_acc']:.4f} | {r['wall_s']:.0f} |")
    for p in ("none", args.pruner):
        sel = [r for r in rows if r["pruner"] == p]
        print(f"\n{p}: mean trials {statistics.mean(r['finished'] for r in sel):.1f}, "
              f"mean best val acc {statistics.mean(r['best_val_acc'] for r in sel):.4f}, "
              f"mean best val loss {statistics.mean(r['best_val_loss'] for r in sel):.4f}")
    n0 = statistics.mean(r["finished"] for r in rows if r["pruner"] == "none")
    n1 = statistics.mean(r["finished"] for r in rows if r["pruner"] == args.pruner)
    print(f"trials ratio {args.pruner}/none: {n1 / n0:.2f}x")


def storage(args) -> None:
    """The same 30-trial study on in-memory and on journal-file storage, alternating, wall time."""
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    td = load(work)
    cfg = load_config(None, ["tune.epochs=[3,3]", "tune.width=[16]", "tune.depth=[1,1]", "tune.pruner=none"])
    times: dict[str, list[float]] = {"memory": [], "journal": []}
    for r in range(args.repeats):
        for kind in ("memory", "journal"):
            root = Path(tempfile.mkdtemp(dir=work))
            st = tune.make_storage(cfg, root) if kind == "journal" else optuna.storages.InMemoryStorage()
            study = tune.open_study(cfg, f"bench-{r}", st)
            t0 = time.perf_counter()
            while tune.run_one(study, lambda t: tune.objective(t, cfg, td), args.trials, root / "lock"):
                pass
            times[kind].append(time.perf_counter() - t0)
            print(kind, r, f"{times[kind][-1]:.2f}s", flush=True)
    m, j = statistics.median(times["memory"]), statistics.median(times["journal"])
    print(f"\n| storage | wall s per {args.trials}-trial study (median of {args.repeats}) | runs |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    print(f"journal / memory: {j / m:.3f} (overhead {100 * (j / m - 1):+.1f}%)")


def parallel(args) -> None:
    """A fixed study (no pruning, fixed epochs) through the tune stage with 1 and 2 workers.
    By default 1 worker uses all cores; --threads-per-worker 1 compares equal threads per trial."""
    from components import tracking
    from flows.stages import Paths
    from flows.tuning import run_tune

    work = Path(args.work)
    load(work)
    rows = []
    for workers in args.workers:
        root = Path(tempfile.mkdtemp(dir=work))
        (root / "data").mkdir()
        os.symlink(work / "data" / "prepared", root / "data" / "prepared")
        cfg = load_config(None, [f"tune.n_trials={args.trials}", f"tune.n_workers={workers}", "tune.pruner=none",
                                 "tune.epochs=[8,8]", "tune.width=[32]", "tune.depth=[2,2]", "tune.batch_size=[64]",
                                 f"train.num_threads={workers * args.threads_per_worker if args.threads_per_worker else 0}"])
        tracking.setup(cfg.tracking, root)
        load_avg = Path("/proc/loadavg").read_text().split()[0]
        t0 = time.perf_counter()
        out = run_tune(cfg, Paths(root))
        rows.append((workers, time.perf_counter() - t0, out["complete"], load_avg))
        print(rows[-1], flush=True)
    print("\n| workers | wall s | trials complete | load avg at start |\n|---|---|---|---|")
    for w, s, n, la in rows:
        print(f"| {w} | {s:.1f} | {n} | {la} |")
    print(f"speed-up {rows[0][0]} -> {rows[-1][0]} workers: {rows[0][1] / rows[-1][1]:.2f}x")


def quality(args) -> None:
    """The champion of a finished `mlpipe run` (cv + test accuracy) beside a tuned SVC on the same split."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    proj = Path(args.project)
    cvm = json.loads((proj / "reports/cv/cv_metrics.json").read_text())
    test = json.loads((proj / "reports/eval/metrics.json").read_text())
    ds = data.load_prepared(proj / "data" / "prepared")
    Xtr, Xte = ds.X_train.reshape(len(ds.X_train), -1), ds.X_test.reshape(len(ds.X_test), -1)
    grid = GridSearchCV(SVC(), {"C": [1, 3, 10, 30, 100], "gamma": ["scale", 1e-3, 3e-3, 1e-2]}, cv=5).fit(Xtr, ds.y_train)
    svc_test = float((grid.predict(Xte) == ds.y_test).mean())
    print("| model | 5-fold CV accuracy (train split) | test accuracy (seed-0 80/20) |\n|---|---|---|")
    print(f"| tuned CNN (mlpipe run) | {cvm['accuracy_mean']:.4f} +- {cvm['accuracy_std']:.4f} | {test['test_accuracy']:.4f} |")
    print(f"| SVC, grid-searched {grid.best_params_} | {grid.best_score_:.4f} | {svc_test:.4f} |")
    if args.remeasure:
        remeasure(proj, ds, args.remeasure)


def remeasure(proj: Path, ds, seeds: list[int]) -> None:
    """The champion's config (reports/tune/best_params.json) cross-validated again with other seeds
    (fold shuffle and weight init): how much of its reported CV is the luck of the seed-0 folds."""
    import torch

    from components import cv, models

    torch.set_num_threads(os.cpu_count() or 1)
    best = json.loads((proj / "reports/tune/best_params.json").read_text())
    for seed in seeds:
        cfg = tune.apply_overrides(load_config(proj / "params.yaml", [f"seed={seed}"]), best["overrides"])
        spec = models.model_args(cfg.model, ds.meta.feature_shape, ds.meta.n_classes, ds.meta.kind)
        s = cv.summarize(cv.cross_validate(ds.X_train, ds.y_train, spec, cfg, ds.meta.kind, ds.meta.value_range, ds.meta.classes))
        print(f"| champion config, 5-fold CV with seed {seed} | {s['accuracy_mean']:.4f} +- {s['accuracy_std']:.4f} | |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["pruning", "storage", "parallel", "quality"])
    p.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-tune-"), help="scratch folder (data is prepared there)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=240, help="pruning: training epochs per study")
    p.add_argument("--pruner", default="hyperband", choices=["halving", "hyperband", "median"])
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--project", default=".")
    p.add_argument("--set", dest="sets", action="append", default=[], help="pruning: config override KEY=VALUE for every study")
    p.add_argument("--jobs", type=int, default=1, help="pruning: studies run at once (1 torch thread each)")
    p.add_argument("--remeasure", type=int, nargs="*", default=[], help="quality: also cross-validate the champion with these seeds")
    p.add_argument("--threads-per-worker", type=int, default=0, help="parallel: 0 = cores // workers (the stage default)")
    args = p.parse_args()
    if args.trials is None:
        args.trials = 30 if args.what == "storage" else 20
    {"pruning": pruning, "storage": storage, "parallel": parallel, "quality": quality}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
