"""A tune worker: runs trials of one Optuna study until the study's budget is spent.

Worker 0 runs inside the tune stage's process (flows/stages/tune.py); each further worker is

    python -m flows.stages.tune_worker JOB.json

a separate interpreter, so a killed worker takes nothing else with it, and its torch thread pool
is sized before torch starts. Each trial is an MLflow child run of the tune stage run."""

from __future__ import annotations

import json
import os
import sys

from components import data, tracking, train, tune
from components.config import Config, TrackingConfig
from flows.paths import Paths


def trial_data(paths: Paths) -> tune.TrialData:
    ds = data.load_prepared(paths.prepared)
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
        tags = {
            "mlpipe.stage": "tune.trial",
            "optuna.study": trial.study.study_name,
            "optuna.trial": trial.number,
            "mlpipe.pipeline_run_id": pipeline_run_id or "none",
        }
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
            buf.set_tags(
                {
                    "optuna.state": "PRUNED" if pruned else "COMPLETE",
                    **({"optuna.pruned_reason": a.get("pruned_reason", str(pruned))} if pruned else {}),
                }
            )
            buf.flush()
        if pruned is not None:
            raise pruned
        return value

    return objective


def run_worker(
    cfg: Config, paths: Paths, name: str, worker: int, tune_run_id: str | None, pipeline_run_id: str | None
) -> int:
    """Run trials until the study's budget is spent -> how many this worker ran."""
    study = tune.open_study(cfg, name, tune.make_storage(cfg, paths.optuna_journal), worker)
    objective = tracked_objective(cfg, trial_data(paths), tune_run_id, pipeline_run_id)
    n = 0
    while tune.run_one(study, objective, cfg.tune.n_trials, paths.budget_lock(name)):
        n += 1
    return n


def main(job_file: str) -> int:
    job = json.loads(open(job_file).read())
    cfg = Config.model_validate(job["cfg"])
    paths = Paths(job["root"])
    train.set_threads(job["threads"])
    tracking.setup(TrackingConfig(uri=job["tracking_uri"], experiment=cfg.tracking.experiment), paths.root)
    run_worker(cfg, paths, job["study"], job["worker"], job["tune_run_id"], job["pipeline_run_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
