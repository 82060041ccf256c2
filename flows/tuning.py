"""The tune and cv stages, and the tune worker process.

tune: an Optuna study (components/tune.py) run by tune.n_workers processes that share its
storage; each trial is an MLflow child run of the tune stage run. The stage writes
reports/tune/best_params.json (read by cv and train), the trials table and Optuna's plots.
cv: stratified k-fold of the tuned config; each fold a child run; reports/cv/cv_metrics.json.

Worker 0 runs in the stage's process; each further worker is `python -m flows.tuning JOB.json`,
a separate interpreter, so a killed worker takes nothing else with it, and its torch thread pool
is sized before torch starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from components import cv, data, models, tracking, train, tune
from components.config import Config, TrackingConfig
from components.errors import MlpipeError
from components.fileio import write_json

if TYPE_CHECKING:
    from flows.stages import Paths


def trial_data(root: Path) -> tune.TrialData:
    ds = data.load_prepared(Path(root) / "data" / "prepared")
    m = ds.meta
    return tune.TrialData(ds.X_train, ds.y_train, m.kind, m.value_range, m.classes, m.feature_shape)


def tracked_objective(cfg: Config, td: tune.TrialData, tune_run_id: str | None, pipeline_run_id: str | None):
    """The Optuna objective, each trial inside its own MLflow child run of the tune run. A
    pruned trial's run ends FINISHED with tag optuna.state=PRUNED; a crashed one FAILED. The
    trial's per-epoch metrics, params and final values go to MLflow in one batch at its end."""
    import optuna

    def objective(trial: optuna.Trial) -> float:
        pruned = None
        trial.set_user_attr("worker_pid", os.getpid())
        tags = {"mlpipe.stage": "tune.trial", "optuna.study": trial.study.study_name, "optuna.trial": trial.number,
                "mlpipe.pipeline_run_id": pipeline_run_id or "none"}
        with tracking.stage_run(f"trial-{trial.number}", tune_run_id, tags):
            buf = tracking.RunBuffer()
            try:
                value = tune.objective(trial, cfg, td, log=buf)
            except optuna.TrialPruned as e:
                pruned = e
            except BaseException:
                buf.flush()  # the epochs it ran; the run ends FAILED
                raise
            a = trial.user_attrs
            buf.log_params({**trial.params, **({"retry_of": a["retry_of"]} if "retry_of" in a else {})})
            buf({k: a[k] for k in ("val_accuracy", "val_loss", "best_epoch", "pruned_at") if k in a}, 0)
            buf.set_tags({"optuna.state": "PRUNED" if pruned else "COMPLETE",
                          **({"optuna.pruned_reason": a.get("pruned_reason", str(pruned))} if pruned else {})})
            buf.flush()
        if pruned is not None:
            raise pruned
        return value

    return objective


def run_worker(cfg: Config, root: Path, name: str, worker: int, tune_run_id: str | None, pipeline_run_id: str | None) -> int:
    """Run trials until the study's budget is spent -> how many this worker ran."""
    study = tune.open_study(cfg, name, tune.make_storage(cfg, root), worker)
    objective = tracked_objective(cfg, trial_data(root), tune_run_id, pipeline_run_id)
    lock = Path(root) / ".mlpipe" / "optuna" / f"{name}.budget.lock"
    n = 0
    while tune.run_one(study, objective, cfg.tune.n_trials, lock):
        n += 1
    return n


def _describe_exit(rc: int) -> str:
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


def launch_workers(cfg: Config, root: Path, name: str, n: int, tune_run_id: str, pipeline_run_id: str | None, uri: str) -> None:
    """n workers on one study, each with cores // n torch threads: worker 0 in this process
    (already past its imports), workers 1..n-1 as processes, which start while worker 0 runs
    trials. Raises when one dies: its finished trials stay in the study, a re-run retries its
    unfinished one."""
    import torch

    threads = max(1, (cfg.train.num_threads or os.cpu_count() or 1) // n)
    job_dir = Path(root) / ".mlpipe" / "optuna" / "jobs"
    job_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(1, n):
        job = job_dir / f"{name}-{i}.json"
        write_json(job, {"cfg": cfg.to_dict(), "root": str(Path(root).resolve()), "study": name, "worker": i,
                         "tune_run_id": tune_run_id, "pipeline_run_id": pipeline_run_id, "tracking_uri": uri,
                         "threads": threads})
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen([sys.executable, "-m", "flows.tuning", str(job)], env=env, stdin=subprocess.DEVNULL))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        run_worker(cfg, root, name, 0, tune_run_id, pipeline_run_id)
        codes = [p.wait() for p in procs]
    finally:
        torch.set_num_threads(before)
        for p in procs:  # the stage was interrupted or worker 0 failed: take the other workers down with it
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [f"worker {i} (pid {p.pid}) {_describe_exit(rc)}" for i, (p, rc) in enumerate(zip(procs, codes), 1) if rc != 0]
    if bad:
        raise MlpipeError(f"tune: {'; '.join(bad)}. Finished trials are kept in study {name}; "
                          "run the tune stage again to retry the unfinished ones and complete tune.n_trials.")


def _plots(study, out_dir: Path) -> list[Path]:
    """Optuna's optimization history, parameter importances and parallel coordinates (matplotlib);
    a plot that needs more completed trials than there are is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    made = []
    for fname, fn in (("optimization_history", ov.plot_optimization_history), ("param_importances", ov.plot_param_importances),
                      ("parallel_coordinate", ov.plot_parallel_coordinate)):
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


def run_tune(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("tune", parent) as run_id:
        meta = data.load_meta(paths.prepared)
        paths.tune_dir.mkdir(parents=True, exist_ok=True)
        tracking.set_tags({"mlpipe.data_hash": meta.content_hash})
        if not cfg.tune.enabled:
            tune.write_best(paths.best_params, tune.untuned(meta.content_hash))
            return {"tuned": False}
        name = tune.study_name(cfg, meta.content_hash, data.dataset_name(meta.source))
        storage = tune.make_storage(cfg, paths.root)
        with tune.file_lock(paths.state / "optuna" / f"{name}.stage.lock", blocking=False) as mine:
            if not mine:
                raise MlpipeError(f"tune: study {name} is already being run by another tune stage in {paths.root}; "
                                  "wait for it to finish")
            study = tune.open_study(cfg, name, storage)
            retried = tune.retry_stale(study, heartbeat=cfg.tune.storage is not None)
            before = tune.counts(study)
            todo = cfg.tune.n_trials - before["complete"] - before["pruned"] - before["running"]
            tracking.log_params({"study": name, "storage": tune.storage_url(cfg, paths.root), "n_trials": cfg.tune.n_trials,
                                 "n_workers": cfg.tune.n_workers, "pruner": cfg.tune.pruner, "objective": cfg.tune.objective,
                                 "metric": cfg.tune.metric})
            arch = models.model_args(cfg.model, meta.feature_shape, meta.n_classes, meta.kind)["arch"]
            tune.enqueue_default(study, cfg, arch)
            n = min(cfg.tune.n_workers, max(todo, 0))
            if n >= 1:
                launch_workers(cfg, paths.root, name, n, run_id, parent, tracking.resolve_uri(cfg.tracking, paths.root))
        return finish(cfg, paths, study, meta.content_hash, retried, before, parent)


def finish(cfg: Config, paths: Paths, study, data_hash: str, retried: list[int], before: dict, parent: str | None) -> dict:
    """best_params.json, the trials table and plots; best params and value on the tune run and
    on the pipeline run."""
    c = tune.counts(study)
    best = tune.best_params(study, cfg, data_hash)
    tune.write_best(paths.best_params, best)
    study.trials_dataframe().to_csv(paths.tune_dir / "trials.csv", index=False)
    plots = _plots(study, paths.tune_dir)
    summary = {"study": study.study_name, "best_trial": best["best_trial"], "best_value": best["value"],
               "best_val_accuracy": best["val_accuracy"], "best_params": best["params"], "complete": c["complete"],
               "pruned": c["pruned"], "failed": c["fail"], "ran_now": c["complete"] + c["pruned"] - before["complete"] - before["pruned"],
               "retried": retried}
    tracking.log_params({"best": best["params"]})
    metrics = {"best_value": best["value"], "best_val_accuracy": best["val_accuracy"], "trials_complete": c["complete"],
               "trials_pruned": c["pruned"], "trials_failed": c["fail"]}
    tracking.log_metrics(metrics)
    for f in [paths.best_params, paths.tune_dir / "trials.csv", *plots]:
        tracking.log_artifact(f, "tune")
    if parent:
        tracking.log_metrics({f"tune_{k}": v for k, v in metrics.items()}, run_id=parent)
        tracking.set_tags({"mlpipe.tune.study": study.study_name, "mlpipe.tune.best_params": json.dumps(best["params"])}, run_id=parent)
    return summary


def run_cv(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """k-fold CV of the tuned config over the training split; mean and std of every metric."""
    with tracking.stage_run("cv", parent) as run_id:
        ds = data.load_prepared(paths.prepared)
        m = ds.meta
        cfg = tune.apply_best(cfg, paths.best_params, m.content_hash)
        tracking.set_tags({"mlpipe.data_hash": m.content_hash})
        out_file = paths.cv_dir / "cv_metrics.json"
        if not cfg.cv.enabled:  # both declared outputs exist either way (dvc.yaml)
            write_json(out_file, {"folds": 0})
            write_json(paths.cv_dir / "cv_folds.json", {"data_hash": m.content_hash, "folds": []})
            return {"folds": 0}
        cv.check_folds(ds.y_train, m.classes, cfg.cv.folds)  # before any training
        spec = models.model_args(cfg.model, m.feature_shape, m.n_classes, m.kind)
        train.set_threads(cfg.train.num_threads)
        tracking.log_params({"folds": cfg.cv.folds, "model": cfg.section("model"), "train": cfg.section("train"),
                             "augment": cfg.section("augment")})

        def fold_run(i: int):
            return tracking.stage_run(f"fold-{i}", run_id, {"mlpipe.stage": "cv.fold", "mlpipe.fold": i})

        def on_fold(f: cv.Fold) -> None:
            tracking.log_metrics({**{f"fold_{k}": v for k, v in f.metrics.items()}, "best_epoch": f.best_epoch})

        folds = cv.cross_validate(ds.X_train, ds.y_train, spec, cfg, m.kind, m.value_range, m.classes,
                                  fold_log=lambda i: tracking.metric_logger(), on_fold=on_fold, fold_run=fold_run)
        summary = cv.summarize(folds)
        write_json(out_file, summary)
        write_json(paths.cv_dir / "cv_folds.json", {"data_hash": m.content_hash, "tuned": paths.best_params.exists(),
                                                    "folds": [{"fold": f.index, "best_epoch": f.best_epoch,
                                                               "epochs_run": f.epochs_run, **f.metrics} for f in folds]})
        tracking.log_metrics({f"cv_{k}": v for k, v in summary.items()})
        for f in ("cv_metrics.json", "cv_folds.json"):
            tracking.log_artifact(paths.cv_dir / f, "cv")
        if parent:
            tracking.log_metrics({f"cv_{k}": v for k, v in summary.items()}, run_id=parent)
        return summary


def worker_main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    cfg = Config.model_validate(job["cfg"])
    train.set_threads(job["threads"])
    tracking.setup(TrackingConfig(uri=job["tracking_uri"], experiment=cfg.tracking.experiment), Path(job["root"]))
    run_worker(cfg, Path(job["root"]), job["study"], job["worker"], job["tune_run_id"], job["pipeline_run_id"])
    return 0


if __name__ == "__main__":  # a tune worker: python -m flows.tuning JOB.json
    sys.exit(worker_main(sys.argv[1]))
