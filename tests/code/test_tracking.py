"""components/tracking.py against a real MLflow store (SQLite in tmp_path): the per-epoch logger
writes in the background, and nothing it queued is lost or silently dropped."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components import tracking
from components.config import TrackingConfig


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.setup(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"), tmp_path)
    yield MlflowClient()
    tracking.flush()


def test_every_epoch_the_logger_queued_is_in_the_run_when_the_stage_run_ends(store):
    with tracking.stage_run("train", None) as rid:
        log = tracking.metric_logger()
        for epoch in range(1, 61):
            log({"train_loss": 1.0 / epoch, "val_accuracy": None if epoch % 2 else 0.5 + epoch / 200}, epoch)
    assert store.get_run(rid).info.status == "FINISHED"
    loss = store.get_metric_history(rid, "train_loss")
    assert sorted((m.step, m.value) for m in loss) == [(e, 1.0 / e) for e in range(1, 61)]
    assert sorted(m.step for m in store.get_metric_history(rid, "val_accuracy")) == list(range(2, 61, 2))


def test_a_background_write_that_fails_fails_the_stage_run(store):
    with pytest.raises(mlflow.exceptions.MlflowException, match="not found"):
        with tracking.stage_run("train", None) as rid:
            tracking.metric_logger(run_id="0" * 32)({"train_loss": 1.0}, 1)  # a run the store does not have
    assert store.get_run(rid).info.status == "FAILED"


def test_a_failing_stage_reports_its_own_error_not_the_queue(store):
    with pytest.raises(ZeroDivisionError):
        with tracking.stage_run("train", None):
            tracking.metric_logger(run_id="0" * 32)({"train_loss": 1.0}, 1)
            raise ZeroDivisionError
    tracking.flush()  # nothing left over for the next stage to trip on


def test_tags_and_metrics_for_another_run_land_on_it(store):
    with tracking.stage_run("pipeline", None) as parent:
        pass
    with tracking.stage_run("evaluate", None):
        tracking.log_metrics({"test_accuracy": 0.99, "test_f1": float("nan")}, run_id=parent)
        tracking.set_tags({"mlpipe.a": 1, "mlpipe.b": "x"}, run_id=parent)
    run = store.get_run(parent)
    assert run.data.metrics == {"test_accuracy": 0.99}
    own = {k: v for k, v in run.data.tags.items() if k.startswith("mlpipe.")}
    assert own == {"mlpipe.stage": "pipeline", "mlpipe.a": "1", "mlpipe.b": "x", **tracking.process_tags()}


def test_end_orphans_ends_only_runs_whose_process_is_gone(store):
    """A run tagged with a dead pid is ended KILLED with a tag saying why; a live process's run and a
    run of another host are left RUNNING."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient()
    exp = client.get_experiment_by_name("t").experiment_id
    me = tracking.process_tags()
    gone = client.create_run(exp, tags={**me, "mlpipe.pid": str(dead.pid)}).info.run_id
    alive = client.create_run(exp, tags=me).info.run_id
    elsewhere = client.create_run(
        exp, tags={**me, "mlpipe.host": "another-host", "mlpipe.pid": str(dead.pid)}
    ).info.run_id
    assert tracking.end_orphans("t") == [gone]
    assert client.get_run(gone).info.status == "KILLED" and "was gone" in client.get_run(gone).data.tags["mlpipe.ended"]
    assert client.get_run(alive).info.status == client.get_run(elsewhere).info.status == "RUNNING"
