"""tune: an Optuna study (components/tune.py) of the training config -> reports/tune/best_params.json
(read by cv and train), the trials table and Optuna's plots.

tune.n_workers processes share the study's storage (the journal file, or tune.storage): worker 0
runs in this process, the others are flows/stages/tune_worker.py processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from components import data, models, tracking, tune
from components.config import Config
from components.errors import MlpipeError
from components.fileio import file_lock, write_json
from flows.paths import Paths
from flows.stages import tune_worker


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("tune", parent) as run_id:
        meta = data.load_meta(paths.prepared)
        paths.tune_dir.mkdir(parents=True, exist_ok=True)
        tracking.set_tags({"mlpipe.data_hash": meta.content_hash})
        if not cfg.tune.enabled:
            tune.write_best(paths.best_params, tune.untuned(meta.content_hash))
            return {"tuned": False}
        name = tune.study_name(cfg, meta.content_hash, data.dataset_name(meta.source))
        storage = tune.make_storage(cfg, paths.optuna_journal)
        with file_lock(paths.study_lock(name), blocking=False) as mine:
            if not mine:
                raise MlpipeError(
                    f"tune: study {name} is already being run by another tune stage in {paths.root}; "
                    "wait for it to finish"
                )
            study = tune.open_study(cfg, name, storage)
            retried = tune.retry_stale(study, heartbeat=cfg.tune.storage is not None)
            before = tune.counts(study)
            todo = cfg.tune.n_trials - before["complete"] - before["pruned"] - before["running"]
            tracking.log_params(
                {
                    "study": name,
                    "storage": tune.storage_url(cfg, paths.optuna_journal),
                    "n_trials": cfg.tune.n_trials,
                    "n_workers": cfg.tune.n_workers,
                    "pruner": cfg.tune.pruner,
                    "objective": cfg.tune.objective,
                    "metric": cfg.tune.metric,
                }
            )
            arch = models.spec_for(cfg.model, meta)["arch"]
            tune.enqueue_default(study, cfg, arch, paths.budget_lock(name))
            n = min(cfg.tune.n_workers, max(todo, 0))
            deadline = study_deadline(study, cfg)
            if n >= 1 and (deadline is None or time.time() < deadline):
                launch_workers(
                    cfg, paths, name, n, run_id, parent, tracking.resolve_uri(cfg.tracking, paths.root), deadline
                )
            if cfg.tune.storage:  # stages on other machines may still run trials of this study: they count
                tune.wait_running(study, deadline)
        if deadline is not None and not tune.counts(study)["complete"]:  # the budget ended every trial early
            tune.write_best(paths.best_params, tune.untuned(meta.content_hash))
            tracking.set_tags({"mlpipe.budget.degraded": "tune: no trial completed inside the study timeout"})
            return {"tuned": False, "study": None, "reason": "no trial completed inside tune.timeout_s"}
        return finish(cfg, paths, study, meta.content_hash, retried, before, parent)


def study_deadline(study, cfg: Config) -> float | None:
    """Epoch seconds at which this stage stops starting trials (and prunes running ones after their
    epoch): tune.timeout_s from now. A budgeted run that resumes plans it again from what is left."""
    return None if cfg.tune.timeout_s is None else time.time() + cfg.tune.timeout_s


def finish(
    cfg: Config, paths: Paths, study, data_hash: str, retried: list[int], before: dict, parent: str | None
) -> dict:
    """best_params.json, the trials table and plots; best params and value on the tune run and
    on the pipeline run."""
    c = tune.counts(study)
    best = tune.best_params(study, cfg, data_hash)
    tune.write_best(paths.best_params, best)
    study.trials_dataframe().to_csv(paths.trials_csv, index=False)
    plots = _plots(study, paths.tune_dir)
    summary = {
        "study": study.study_name,
        "best_trial": best["best_trial"],
        "best_value": best["value"],
        "best_val_accuracy": best["val_accuracy"],
        "best_params": best["params"],
        "complete": c["complete"],
        "pruned": c["pruned"],
        "failed": c["fail"],
        "ran_now": c["complete"] + c["pruned"] - before["complete"] - before["pruned"],
        "retried": retried,
    }
    tracking.log_params({"best": best["params"]})
    metrics = {
        "best_value": best["value"],
        "best_val_accuracy": best["val_accuracy"],
        "trials_complete": c["complete"],
        "trials_pruned": c["pruned"],
        "trials_failed": c["fail"],
    }
    tracking.log_metrics(metrics)
    for f in [paths.best_params, paths.trials_csv, *plots]:
        tracking.log_artifact(f, "tune")
    if parent:
        tracking.log_metrics({f"tune_{k}": v for k, v in metrics.items()}, run_id=parent)
        tracking.set_tags(
            {"mlpipe.tune.study": study.study_name, "mlpipe.tune.best_params": json.dumps(best["params"])},
            run_id=parent,
        )
    return summary


def _describe_exit(rc: int) -> str:
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


def launch_workers(
    cfg: Config,
    paths: Paths,
    name: str,
    n: int,
    tune_run_id: str,
    pipeline_run_id: str | None,
    uri: str,
    deadline: float | None = None,
) -> None:
    """n workers on one study, each with cores // n torch threads: worker 0 in this process
    (already past its imports), workers 1..n-1 as processes, which start while worker 0 runs
    trials. Raises when one dies: its finished trials stay in the study, a re-run retries its
    unfinished one."""
    import torch

    threads = max(1, (cfg.train.num_threads or os.cpu_count() or 1) // n)
    procs = []
    for i in range(1, n):
        job = paths.tune_job(name, i)
        write_json(
            job,
            {
                "cfg": cfg.to_dict(),
                "root": str(paths.root),
                "study": name,
                "worker": i,
                "tune_run_id": tune_run_id,
                "pipeline_run_id": pipeline_run_id,
                "tracking_uri": uri,
                "threads": threads,
                "deadline": deadline,
            },
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        procs.append(
            subprocess.Popen([sys.executable, "-m", tune_worker.__name__, str(job)], env=env, stdin=subprocess.DEVNULL)
        )
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        tune_worker.run_worker(cfg, paths, name, 0, tune_run_id, pipeline_run_id, deadline, progress=True)
        codes = [p.wait() for p in procs]
    finally:
        torch.set_num_threads(before)
        for p in procs:  # the stage was interrupted or worker 0 failed: take the other workers down with it
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [
        f"worker {i} (pid {p.pid}) {_describe_exit(rc)}" for i, (p, rc) in enumerate(zip(procs, codes), 1) if rc != 0
    ]
    if bad:
        raise MlpipeError(
            f"tune: {'; '.join(bad)}. Finished trials are kept in study {name}; "
            "run the tune stage again to retry the unfinished ones and complete tune.n_trials."
        )


def _plots(study, out_dir: Path) -> list[Path]:
    """Optuna's optimization history, parameter importances and parallel coordinates (matplotlib);
    a plot that needs more completed trials than there are is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    made = []
    for fname, fn in (
        ("optimization_history", ov.plot_optimization_history),
        ("param_importances", ov.plot_param_importances),
        ("parallel_coordinate", ov.plot_parallel_coordinate),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            fig.savefig(out_dir / f"{fname}.png", dpi=90)
            plt.close(fig)
            made.append(out_dir / f"{fname}.png")
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few completed trials for this plot
            plt.close("all")
    return made
