"""Benchmarks for the tune and cv stages (issue 3), on sklearn digits.

    python -m benchmarks.tune pruning  [--seeds 0 1 2] [--budget 240] [--pruner halving] [--set KEY=VALUE] [--jobs 2]
    python -m benchmarks.tune storage  [--trials 30] [--repeats 3]
    python -m benchmarks.tune parallel [--trials 20] [--workers 1 2] [--threads-per-worker 0]
    python -m benchmarks.tune quality  --project DIR [--remeasure 1 2 3]   (a folder where `mlpipe run` finished)
    python -m benchmarks.tune [WHAT] --smoke     (no WHAT: all four, tiny)

pruning: the same budget of training epochs per study, with and without a pruner: trials finished
  and the best validation accuracy reached.
storage: the same study on in-memory and on journal-file storage, alternating: wall time.
parallel: a fixed study through the tune stage (flows.stages.tune) with 1 and 2 workers: wall time.
quality: a finished run's champion (cv + test accuracy) beside a grid-searched SVC on the same split.

Each prints a markdown table; BENCHMARKS.md quotes them with the machine load at the time. Data
is prepared in a scratch folder (--work, default a fresh one under $MLPIPE_BENCH_DIR or /tmp)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import optuna

from benchmarks.common import REPO, SMOKE_HELP, scratch
from components import data, tune
from components.config import load_config
from flows.paths import Paths

optuna.logging.set_verbosity(optuna.logging.WARNING)
WHAT = ("pruning", "storage", "parallel", "quality")
SMOKE_SPACE = ["tune.width=[16]", "tune.depth=[1,1]", "tune.batch_size=[128]"]  # the smallest trials
SVC_GRID = {"C": [1, 3, 10, 30, 100], "gamma": ["scale", 1e-3, 3e-3, 1e-2]}


def load(paths: Paths) -> tune.TrialData:
    """The tune stage's trial data, from paths.prepared (digits, seed-0 split; prepared when missing)."""
    cfg = load_config(None)
    if not (paths.prepared / "meta.json").exists():
        data.save_prepared(data.ingest(cfg.data, cfg.seed), paths.prepared)
    ds = data.load_prepared(paths.prepared)
    m = ds.meta
    return tune.TrialData(ds.X_train, ds.y_train, m.kind, m.value_range, m.classes, m.feature_shape)


def pruned_study(pruner: str, seed: int, sets: list[str], budget: int, work: str) -> dict:
    """One study of the pruning comparison: trials until `budget` training epochs are spent."""
    import torch

    torch.set_num_threads(1)
    td = load(Paths(work))
    cfg = load_config(
        None, [f"seed={seed}", "tune.epochs=[10,30]", "tune.min_resource=2", *sets, f"tune.pruner={pruner}"]
    )
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=tune.make_pruner(cfg)
    )
    used = [0]

    def count(row, epoch):
        used[0] += 1

    t0 = time.perf_counter()
    while used[0] < budget:
        study.optimize(lambda t: tune.objective(t, cfg, td, log=count), n_trials=1)
    c = tune.counts(study)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = min(done, key=lambda t: t.value) if done else None
    row = {
        "pruner": pruner,
        "seed": seed,
        "epochs": used[0],
        "finished": c["complete"] + c["pruned"],
        "complete": c["complete"],
        "pruned": c["pruned"],
        "best_val_acc": max((t.user_attrs["val_accuracy"] for t in done), default=float("nan")),
        "best_val_loss": best.value if best else float("nan"),
        "best_trial_val_acc": best.user_attrs["val_accuracy"] if best else float("nan"),
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(row), flush=True)
    return row


def pruning(args) -> None:
    """Same total budget of training epochs, with and without a pruner: trials finished and the
    best validation accuracy reached (over the complete trials). --jobs N runs N studies at once
    (each on 1 torch thread; a study's result does not depend on what runs beside it)."""
    from concurrent.futures import ProcessPoolExecutor

    load(Paths(args.work))  # prepare the data once, before the workers read it
    jobs = [(p, seed, args.sets, args.budget, args.work) for p in ("none", args.pruner) for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(pruned_study, *zip(*jobs)))
    print(f"\noverrides: {args.sets or 'none'}; budget {args.budget} epochs per study")
    print(
        "\n| pruner | seed | epochs used | trials finished (complete + pruned) | best val acc | best val loss "
        "| val acc of best-loss trial | wall s |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['pruner']} | {r['seed']} | {r['epochs']} | {r['finished']} ({r['complete']} + {r['pruned']}) | "
            f"{r['best_val_acc']:.4f} | {r['best_val_loss']:.4f} | {r['best_trial_val_acc']:.4f} | {r['wall_s']:.0f} |"
        )
    for p in ("none", args.pruner):
        sel = [r for r in rows if r["pruner"] == p]
        print(
            f"\n{p}: mean trials {statistics.mean(r['finished'] for r in sel):.1f}, "
            f"mean best val acc {statistics.mean(r['best_val_acc'] for r in sel):.4f}, "
            f"mean best val loss {statistics.mean(r['best_val_loss'] for r in sel):.4f}"
        )
    n0 = statistics.mean(r["finished"] for r in rows if r["pruner"] == "none")
    n1 = statistics.mean(r["finished"] for r in rows if r["pruner"] == args.pruner)
    print(f"trials ratio {args.pruner}/none: {n1 / n0:.2f}x")


def storage(args) -> None:
    """The same study on in-memory and on journal-file storage, alternating, wall time."""
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    td = load(Paths(work))
    cfg = load_config(
        None, [f"tune.epochs=[{args.epochs},{args.epochs}]", "tune.width=[16]", "tune.depth=[1,1]", "tune.pruner=none"]
    )
    times: dict[str, list[float]] = {"memory": [], "journal": []}
    for r in range(args.repeats):
        for kind in ("memory", "journal"):
            paths = Paths(tempfile.mkdtemp(dir=work))
            paths.optuna_dir.mkdir(parents=True)
            st = (
                tune.make_storage(cfg, paths.optuna_journal) if kind == "journal" else optuna.storages.InMemoryStorage()
            )
            name = f"bench-{r}"
            study = tune.open_study(cfg, name, st)
            t0 = time.perf_counter()
            while tune.run_one(study, lambda t: tune.objective(t, cfg, td), args.trials, paths.budget_lock(name)):
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
    from flows.stages import tune as tune_stage

    shared = Paths(args.work)
    load(shared)
    rows = []
    for workers in args.workers:
        paths = Paths(tempfile.mkdtemp(dir=shared.root))
        paths.prepared.parent.mkdir(parents=True)
        os.symlink(shared.prepared, paths.prepared)
        cfg = load_config(
            None,
            [
                f"tune.n_trials={args.trials}",
                f"tune.n_workers={workers}",
                "tune.pruner=none",
                f"tune.epochs=[{args.epochs},{args.epochs}]",
                "tune.width=[32]",
                "tune.depth=[2,2]",
                "tune.batch_size=[64]",
                f"tracking.uri=sqlite:///{shared.root / 'mlflow.db'}",
                f"train.num_threads={workers * args.threads_per_worker if args.threads_per_worker else 0}",
                *args.sets,
            ],
        )
        tracking.setup(cfg.tracking, paths.root)  # one local MLflow store (tracking.uri) for every setting
        load_avg = Path("/proc/loadavg").read_text().split()[0]
        t0 = time.perf_counter()
        out = tune_stage.run(cfg, paths)
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

    paths = Paths(args.project)
    cvm = json.loads(paths.cv_metrics.read_text())
    test = json.loads(paths.eval_metrics.read_text())
    ds = data.load_prepared(paths.prepared)
    Xtr, Xte = ds.X_train.reshape(len(ds.X_train), -1), ds.X_test.reshape(len(ds.X_test), -1)
    grid = GridSearchCV(SVC(), getattr(args, "svc_grid", SVC_GRID), cv=5).fit(Xtr, ds.y_train)
    svc_test = float((grid.predict(Xte) == ds.y_test).mean())
    print("| model | 5-fold CV accuracy (train split) | test accuracy (seed-0 80/20) |\n|---|---|---|")
    cv_figure = f"{cvm['accuracy_mean']:.4f} +- {cvm['accuracy_std']:.4f}"
    print(f"| tuned CNN (mlpipe run) | {cv_figure} | {test['test_accuracy']:.4f} |")
    print(f"| SVC, grid-searched {grid.best_params_} | {grid.best_score_:.4f} | {svc_test:.4f} |")
    if args.remeasure:
        remeasure(paths, ds, args.remeasure)


def remeasure(paths: Paths, ds, seeds: list[int]) -> None:
    """The champion's config (the tune stage's best params) cross-validated again with other seeds
    (fold shuffle and weight init): how much of its reported CV is the luck of the seed-0 folds."""
    import torch

    from components import cv, models

    torch.set_num_threads(os.cpu_count() or 1)
    best = json.loads(paths.best_params.read_text())
    for seed in seeds:
        cfg = tune.apply_overrides(load_config(paths.root / "params.yaml", [f"seed={seed}"]), best["overrides"])
        spec = models.spec_for(cfg.model, ds.meta)
        s = cv.summarize(
            cv.cross_validate(ds.X_train, ds.y_train, spec, cfg, ds.meta.kind, ds.meta.value_range, ds.meta.classes)
        )
        print(
            f"| champion config, 5-fold CV with seed {seed} | {s['accuracy_mean']:.4f} +- {s['accuracy_std']:.4f} | |",
            flush=True,
        )


def smoke_project(root: Path) -> Paths:
    """A finished tiny run's files, as quality reads them (cv.folds 2, 1 epoch, untuned), made
    with the functions the cv and evaluate stages call, instead of a minute of `mlpipe run`."""
    import yaml

    from components import cv, models, train

    paths = Paths(root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cv"]["folds"], params["train"]["epochs"] = 2, 1
    (paths.root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(paths.root / "params.yaml")
    load(paths)
    ds = data.load_prepared(paths.prepared)
    m = ds.meta
    spec = models.spec_for(cfg.model, m)
    summary = cv.summarize(cv.cross_validate(ds.X_train, ds.y_train, spec, cfg, m.kind, m.value_range, m.classes))
    model, _ = train.Recipe(cfg, ds.X_train, ds.y_train, m.kind, m.value_range).fit(spec)
    test_accuracy = float((train.predict_logits(model, ds.X_test).argmax(1).numpy() == ds.y_test).mean())
    for path, payload in (
        (paths.cv_metrics, summary),
        (paths.eval_metrics, {"test_accuracy": test_accuracy}),
        (paths.best_params, tune.untuned(m.content_hash)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
    print("quality: on a smoke project (1 epoch, 2 folds, reports made in process), not a `mlpipe run`")
    return paths


def smoke(what: str | None, args) -> None:
    """Every measurement at sizes that take seconds (quality on a tiny project made in process)."""
    sizes = {
        "pruning": dict(
            seeds=[0],
            budget=4,
            jobs=1,
            pruner="halving",
            sets=["tune.epochs=[1,2]", "tune.min_resource=1", *SMOKE_SPACE],
        ),
        "storage": dict(trials=2, repeats=1, epochs=1),
        "parallel": dict(trials=2, workers=[1, 2], epochs=1, threads_per_worker=1, sets=SMOKE_SPACE[2:]),
        "quality": dict(remeasure=[1], svc_grid={"C": [10], "gamma": ["scale"]}),
    }
    for name in [what] if what else WHAT:
        t0 = time.perf_counter()
        if name == "quality":
            sizes[name]["project"] = str(smoke_project(Path(tempfile.mkdtemp(dir=args.work))).root)
        {"pruning": pruning, "storage": storage, "parallel": parallel, "quality": quality}[name](
            argparse.Namespace(**{**vars(args), **sizes[name]})
        )
        print(f"smoke {name}: {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", nargs="?", choices=WHAT, help="the measurement (required without --smoke)")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.add_argument(
        "--work", default=None, help="scratch folder (data is prepared there); default: a fresh one, removed after"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=240, help="pruning: training epochs per study")
    p.add_argument("--pruner", default="hyperband", choices=["halving", "hyperband", "median"])
    p.add_argument("--trials", type=int, default=None, help="storage: 30, parallel: 20 by default")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every trial: storage 3, parallel 8 by default")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--project", default=".")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], help="pruning, parallel: config override KEY=VALUE"
    )
    p.add_argument("--jobs", type=int, default=1, help="pruning: studies run at once (1 torch thread each)")
    p.add_argument(
        "--remeasure",
        type=int,
        nargs="*",
        default=[],
        help="quality: also cross-validate the champion with these seeds",
    )
    p.add_argument(
        "--threads-per-worker", type=int, default=0, help="parallel: 0 = cores // workers (the stage default)"
    )
    args = p.parse_args()
    if not args.smoke and args.what is None:
        p.error(f"name a measurement ({', '.join(WHAT)}) or pass --smoke")
    if args.trials is None:
        args.trials = 30 if args.what == "storage" else 20
    if args.epochs is None:
        args.epochs = 3 if args.what == "storage" else 8
    with nullcontext(Path(args.work)) if args.work else scratch("tune") as work:
        args.work = str(work)
        if args.smoke:
            smoke(args.what, args)
        else:
            {"pruning": pruning, "storage": storage, "parallel": parallel, "quality": quality}[args.what](args)


if __name__ == "__main__":
    main()
