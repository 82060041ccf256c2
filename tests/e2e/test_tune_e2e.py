"""The tune and cv stages through the real entry points: `mlpipe stage tune` with a worker
killed by SIGKILL and a re-run, and the Prefect flow (`mlpipe run`); `dvc repro` of both is in
tests/e2e/test_dvc.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from components import data
from components.config import load_config
from tests.conftest import BIN, child_processes, cli, write_params

pytestmark = pytest.mark.slow

# a few small trials of 2-3 epochs; CV with 2 folds
SHRUNK = {
    "tune": {
        "n_trials": 4,
        "n_workers": 2,
        "epochs": [2, 3],
        "lr": [0.01, 0.03],
        "width": [8],
        "depth": [1, 1],
        "batch_size": [64],
        "min_resource": 1,
        "pruner": "median",
    },
    "cv": {"folds": 2},
    "model": {"hidden": [16]},
    "compress": {"enabled": False},
    "baseline": {"enabled": False},
    "explain": {"enabled": False},
    "promote": {"accuracy_floor": 0.5},
}


def prepare(project):
    cfg = load_config(project / "params.yaml")
    data.save_prepared(data.ingest(cfg.data, cfg.seed), project / "data" / "prepared")


def journal_study(project) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(project / ".mlpipe" / "optuna" / "journal.log")))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_killed_worker_then_rerun_completes_the_budget(project):
    # worker 0 runs in the stage's process and starts trials at once; the budget leaves trials for
    # worker 1 (a `python -m flows.stages.tune_worker` process), which is killed inside one of its trials
    write_params(project, **{**SHRUNK, "tune": {**SHRUNK["tune"], "n_trials": 12, "epochs": [3, 4], "pruner": "none"}})
    prepare(project)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(project / ".prefect")}
    stage = subprocess.Popen(
        [str(BIN / "mlpipe"), "stage", "tune"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and stage.poll() is None:
        journal = project / ".mlpipe" / "optuna" / "journal.log"
        if journal.exists() and journal.stat().st_size:
            study = journal_study(project)
            workers = {c.pid for c in child_processes(stage.pid, "flows.stages.tune_worker")}
            busy = [
                t.user_attrs["worker_pid"]
                for t in study.get_trials(states=(TrialState.RUNNING,))
                if t.user_attrs.get("worker_pid") in workers
            ]
            if busy and states(study).get("COMPLETE", 0) >= 1:
                victim = busy[0]
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.2)
    out, err = stage.communicate(timeout=300)
    assert victim is not None, f"no trial of a worker process was seen running: {out[-1500:]} {err[-1500:]}"
    assert stage.returncode == 2 and "killed by SIGKILL" in err, err[-2000:]
    left = states(journal_study(project))
    assert left.get("RUNNING", 0) >= 1  # the killed worker's trial

    again = cli("stage", "tune", cwd=project)
    assert again.returncode == 0, again.stderr[-2000:]
    study = journal_study(project)
    s = states(study)
    assert s.get("COMPLETE", 0) + s.get("PRUNED", 0) == 12 and s.get("RUNNING", 0) == 0 and s.get("FAIL", 0) >= 1
    failed = {t.number: t.params for t in study.get_trials(states=(TrialState.FAIL,))}
    retried = [t for t in study.get_trials() if t.user_attrs.get("retry_of") in failed]
    assert retried and all(t.params.items() >= failed[t.user_attrs["retry_of"]].items() for t in retried)

    third = cli("stage", "tune", cwd=project)  # budget spent: no new trial
    assert third.returncode == 0 and len(journal_study(project).trials) == len(study.trials)


def test_tune_and_cv_in_the_prefect_flow(project, prefect_api):
    import mlflow
    from mlflow.tracking import MlflowClient

    write_params(project, **SHRUNK)
    r = cli("run", cwd=project, env={"PREFECT_API_URL": prefect_api})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "tuning" in r.stdout and "cv accuracy" in r.stdout
    best = yaml.safe_load((project / "reports/tune/best_params.json").read_text())
    cvm = yaml.safe_load((project / "reports/cv/cv_metrics.json").read_text())
    assert best["tuned"] and cvm["folds"] == 2 and 0.5 < cvm["accuracy_mean"] <= 1
    for plot in ("optimization_history.png", "parallel_coordinate.png"):
        assert (project / "reports/tune" / plot).exists()

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("mlpipe")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    by_stage = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("mlpipe.stage"), []).append(run)
    (tune_run,) = by_stage["tune"]
    parent = tune_run.data.tags["mlflow.parentRunId"]
    trials = by_stage["tune.trial"]
    assert len(trials) == 4 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {tune_run.info.run_id}
    assert all(t.data.tags["optuna.state"] in ("COMPLETE", "PRUNED") and t.info.status == "FINISHED" for t in trials)
    assert all("val_loss" in t.data.metrics for t in trials)
    assert len(by_stage["cv.fold"]) == 2
    assert (
        "tune_best_value" in client.get_run(parent).data.metrics
        and "cv_accuracy_mean" in client.get_run(parent).data.metrics
    )
    (train_run,) = by_stage["train"]
    assert int(train_run.data.params["train.epochs"]) == best["params"]["epochs"]  # train read best_params.json
    assert {"tune/optimization_history.png", "tune/best_params.json"} <= {
        f.path
        for d in client.list_artifacts(tune_run.info.run_id)
        for f in client.list_artifacts(tune_run.info.run_id, d.path)
    }
