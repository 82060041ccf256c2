"""A tune worker: runs trials of one Optuna study until the study's budget is spent.

Worker 0 runs inside the tune stage's process (flows/stages/tune.py); each further worker is

    python -m flows.stages.tune_worker JOB.json

a separate interpreter, so a killed worker takes nothing else with it, and its torch thread pool
is sized before torch starts. Each trial is an MLflow child run of the tune stage run."""

from __future__ import annotations

import json
import os
import sys
import time

from components import data, tracking, train, tune
from components.config import Config, TrackingConfig
from flows.paths import Paths


def trial_data(paths: Paths) -> tune.TrialData:
    ds = data.load_prepared(paths.prepared, mmap=True)  # trials stream their rows (components/stream.py)
    m = ds.meta
    return tune.TrialData(ds.X_train, ds.y_train, m.kind, m.value_range, m.classes, m.feature_shape, m.text)


def tracked_objective(
    cfg: Config,
    td: tune.TrialData,
    tune_run_id: str | None,
    pipeline_run_id: str | None,
    deadline: float | None = None,
):
    """The Optuna objective, each trial inside its own MLflow child run of the tune run. A
    pruned trial's run ends FINISHED with tag optuna.state=PRUNED; a crashed one FAILED. The
    trial's per-epoch metrics, params and final values go to MLflow in one batch at its end.
    Past `deadline` (epoch seconds: the study's timeout) a running trial is pruned after its epoch."""
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

            def log(row: dict, epoch: int) -> None:
                buf(row, epoch)
                if deadline is not None and time.time() > deadline:
                    raise optuna.TrialPruned(f"time budget: the study's timeout passed at epoch {epoch}")

            try:
                value = tune.objective(trial, cfg, td, log=log)
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
    cfg: Config,
    paths: Paths,
    name: str,
    worker: int,
    tune_run_id: str | None,
    pipeline_run_id: str | None,
    deadline: float | None = None,
    progress: bool = False,
) -> int:
    """Run trials until the study's budget (tune.n_trials, and the deadline in epoch seconds) is
    spent -> how many this worker ran. progress: a line per finished trial on stderr."""
    study = tune.open_study(cfg, name, tune.make_storage(cfg, paths.optuna_journal), worker)
    objective = tracked_objective(cfg, trial_data(paths), tune_run_id, pipeline_run_id, deadline)
    n = 0
    t0 = time.monotonic()
    while (deadline is None or time.time() < deadline) and tune.run_one(
        study, objective, cfg.tune.n_trials, paths.budget_lock(name)
    ):
        n += 1
        if progress:
            _say_trial(study, cfg, deadline, time.monotonic() - t0)
    return n


def _say_trial(study, cfg: Config, deadline: float | None, elapsed: float) -> None:
    """'tune: 7/30 trials (5 complete, 2 pruned), best val_loss 0.0412, 1m12s, 2m30s to the timeout'."""
    from flows.progress import clock, say

    c = tune.counts(study)
    try:
        best = f", best {cfg.tune.metric} {study.best_value:.4f}"
    except ValueError:
        best = ""
    left = f", {clock(deadline - time.time())} to the study timeout" if deadline is not None else ""
    say(
        f"  tune: {c['complete'] + c['pruned']}/{cfg.tune.n_trials} trials ({c['complete']} complete, "
        f"{c['pruned']} pruned){best}, {clock(elapsed)} here{left}"
    )


def main(job_file: str) -> int:
    job = json.loads(open(job_file).read())
    cfg = Config.model_validate(job["cfg"])
    paths = Paths(job["root"])
    train.set_threads(job["threads"])
    tracking.setup(TrackingConfig(uri=job["tracking_uri"], experiment=cfg.tracking.experiment), paths.root)
    run_worker(cfg, paths, job["study"], job["worker"], job["tune_run_id"], job["pipeline_run_id"], job.get("deadline"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
