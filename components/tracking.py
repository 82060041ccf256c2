"""MLflow run structure: one parent run per pipeline run, a child run per stage.

Only this module and registry.py import mlflow. Compute code gets `metric_logger()`, a plain
callback, never the mlflow module."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from components.config import TrackingConfig


def resolve_uri(cfg: TrackingConfig, root: Path) -> str:
    """params tracking.uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the project."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def setup(cfg: TrackingConfig, root: Path) -> str:
    """Point MLflow at the store and experiment; called once by each entry point."""
    uri = resolve_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        # a local store keeps artifacts beside the database; a server decides for itself
        location = (Path(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            pass  # created by a concurrent run
    mlflow.set_experiment(cfg.experiment)
    return uri


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return uri  # a server: its UI is already there
    return f"mlflow ui --backend-store-uri {uri}" + (" --port 5000" if uri.startswith("sqlite:") else "")


def run_url(uri: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when tracking goes to a server, else None."""
    if not uri.startswith(("http://", "https://")):
        return None
    exp = MlflowClient().get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def start_parent(experiment: str, name: str, tags: dict, config: dict) -> str:
    """Create the pipeline run (not made active: stages attach to it by id) -> run id."""
    client = MlflowClient()
    exp = mlflow.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
    rid = run.info.run_id
    params = flatten(config)
    client.log_batch(rid, params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()])
    client.log_dict(rid, config, "config.json")
    return rid


def end_parent(run_id: str, ok: bool, tags: dict | None = None) -> None:
    set_tags({k: str(v)[:5000] for k, v in (tags or {}).items()}, run_id)
    MlflowClient().set_terminated(run_id, "FINISHED" if ok else "FAILED")


@contextmanager
def stage_run(stage: str, parent_id: str | None, tags: dict | None = None) -> Iterator[str]:
    """A child run of the pipeline run (or a top-level run when a stage runs alone, as under
    DVC). A stage that raises leaves its run FAILED. Leaving it waits for the metric_logger
    writes still queued and raises the first that failed."""
    all_tags = {"mlpipe.stage": stage, **{k: str(v) for k, v in (tags or {}).items()}}  # a server takes strings only
    with mlflow.start_run(run_name=stage, parent_run_id=parent_id, nested=parent_id is not None, tags=all_tags) as run:
        try:
            yield run.info.run_id
        except BaseException:
            _pending.clear()  # the stage's own error is the one to report; ending the run still drains the queue
            raise
        flush()


def log_params(params: dict) -> None:
    mlflow.log_params({k: v[:6000] for k, v in flatten(params).items()})


def _metrics(metrics: dict, step: int, prefix: str = "") -> list:
    """MLflow Metric rows stamped now; None, NaN and inf are left out."""
    ts = int(time.time() * 1000)
    return [mlflow.entities.Metric(f"{prefix}{k}", float(v), ts, step) for k, v in metrics.items()
            if v is not None and np.isfinite(v)]


def log_metrics(metrics: dict, step: int | None = None, run_id: str | None = None) -> None:
    """Now, in one request: to the active run, or to run_id."""
    rows = _metrics(metrics, step or 0)
    if rows:
        MlflowClient().log_batch(run_id or mlflow.active_run().info.run_id, metrics=rows)


_pending: list = []  # metric_logger writes queued on MLflow's async logging thread, not yet confirmed


def metric_logger(prefix: str = "", run_id: str | None = None):
    """A (metrics, step) callback for compute code, logging to run_id (default: the run active now).
    Writes go through MLflow's async logging queue and are sent on its threads, so training does not
    wait for the store every epoch (a SQLite commit: ~3.5 ms; a tracking server: a round trip).
    stage_run's end, or flush(), waits for them."""
    rid, client = run_id or mlflow.active_run().info.run_id, MlflowClient()

    def log(metrics: dict, step: int) -> None:
        rows = _metrics(metrics, step, prefix)
        if rows:
            _pending.append(client.log_batch(rid, metrics=rows, synchronous=False))

    return log


def flush() -> None:
    """Send every queued metric_logger write now and wait for it; raise the first that failed."""
    ops = list(_pending)
    _pending.clear()
    if ops:
        mlflow.flush_async_logging()  # the queue may be holding them (MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS)
    for op in ops:
        op.wait()


class RunBuffer:
    """A (metrics, step) callback that keeps a short run's rows, each with its own step and
    wall-clock time, plus params and tags, and writes them all in one log_batch by flush():
    one write transaction per run instead of one per epoch. A SQLite store takes one writer at a
    time, so per-epoch writes from parallel tune workers queue behind each other."""

    def __init__(self) -> None:
        self.metrics: list = []
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def __call__(self, metrics: dict, step: int) -> None:
        self.metrics += _metrics(metrics, step)

    def log_params(self, params: dict) -> None:
        self.params.update({k: v[:6000] for k, v in flatten(params).items()})

    def set_tags(self, tags: dict) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def flush(self, run_id: str | None = None) -> None:
        """Write everything buffered to run_id (default: the active run) and empty the buffer."""
        run_id = run_id or mlflow.active_run().info.run_id
        MlflowClient().log_batch(run_id, metrics=self.metrics,
                                 params=[mlflow.entities.Param(k, v) for k, v in self.params.items()],
                                 tags=[mlflow.entities.RunTag(k, v) for k, v in self.tags.items()])
        self.metrics, self.params, self.tags = [], {}, {}


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(obj: dict, name: str) -> None:
    mlflow.log_dict(obj, name)


def set_tags(tags: dict, run_id: str | None = None) -> None:
    """In one request: on the active run, or on run_id."""
    if tags:
        MlflowClient().log_batch(run_id or mlflow.active_run().info.run_id,
                                 tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])


def log_dataset(X: np.ndarray, y: np.ndarray, name: str, source: str, digest: str, context: str) -> None:
    """The dataset as an MLflow dataset input of the active run (features flattened)."""
    ds = mlflow.data.from_numpy(
        np.asarray(X).reshape(len(X), -1), targets=np.asarray(y), source=source, name=name, digest=digest
    )
    mlflow.log_input(ds, context=context)


def get_run(run_id: str):
    return MlflowClient().get_run(run_id)
