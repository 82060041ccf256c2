"""MLflow run structure: one parent run per pipeline run, a child run per stage.

Only this module and registry.py import mlflow. Compute code gets `metric_logger()`, a plain
callback, never the mlflow module."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from components.config import TrackingConfig
from components.errors import MlpipeError
from components.fileio import file_lock


def resolve_uri(cfg: TrackingConfig, root: Path) -> str:
    """params tracking.uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the project."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def setup(cfg: TrackingConfig, root: Path) -> str:
    """Point MLflow at the store and experiment; called once by each entry point. A local SQLite
    store is created (or checked) under a lock beside it, so concurrent first runs share one."""
    uri = resolve_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    db = sqlite_file(uri)
    with file_lock(db.with_name(db.name + ".lock")) if db else nullcontext():  # one creator at a time
        if db:
            _ensure_sqlite_store(db)
        if mlflow.get_experiment_by_name(cfg.experiment) is None:
            # a local store keeps artifacts beside the database; a server decides for itself
            location = (Path(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
            try:
                mlflow.create_experiment(cfg.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
            except mlflow.exceptions.MlflowException:
                pass  # created by a concurrent run on a server
    tag_experiment(mlflow.set_experiment(cfg.experiment))  # experiments made before these tags existed
    return uri


# The MLflow UI (3.x) shows an experiment either as model training (its runs) or as a GenAI app (a traces
# overview). The kind tag below is how MLflow records "model training" on an experiment; the 3.17 UI, though,
# decides by its own GenAI / Model training switch (default GenAI, or `workflowType` in the page URL): a bare
# experiment link opens the GenAI traces overview. So experiment_url() links the runs tab itself, with
# workflowType=machine_learning (the model-training layout). The runs table opens with the pipeline's key
# metrics as columns through a shared view: the tag mlflow.sharedViewState.<key> (as the UI's Share button
# writes it) named by the URL's viewStateShareKey. A plain experiment page keeps MLflow's default columns.
RUNS_VIEW = "mlpipe-runs"
RUNS_COLUMNS = [
    *(f"metrics.`{m}`" for m in ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "cv_accuracy_mean")),
    *(f"metrics.`{m}`" for m in ("cv_accuracy_std", "tune_best_val_accuracy")),
    *(f"tags.`mlpipe.{t}`" for t in ("registered_version", "promoted", "data_hash")),
]
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    f"mlflow.sharedViewState.{RUNS_VIEW}": json.dumps({"selectedColumns": RUNS_COLUMNS}),
}


def tag_experiment(exp) -> None:
    """Give an experiment the tags above where it lacks them (one request per missing tag)."""
    client = MlflowClient()
    for k, v in EXPERIMENT_TAGS.items():
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)


def experiment_url(uri: str, experiment_id: str) -> str | None:
    """The experiment's runs table in the MLflow UI, as model training, key metrics as columns: on the
    server, or on `mlflow ui` (ui_command, port 5000) for a local SQLite store; else None."""
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
    elif uri.startswith("sqlite:"):
        base = "http://127.0.0.1:5000"
    else:
        return None
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW}&workflowType=machine_learning"


def connect(cfg: TrackingConfig, root: Path) -> str:
    """Point MLflow at an existing store, for commands that only read it (`mlpipe lineage`): nothing is
    created; a local SQLite store that is not there is an error."""
    uri = resolve_uri(cfg, root)
    db = sqlite_file(uri)
    if db is not None and not db.exists():
        raise MlpipeError(
            f"{db}: no MLflow store here; run the pipeline first, or point tracking.uri / MLFLOW_TRACKING_URI at one"
        )
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def sqlite_file(uri: str) -> Path | None:
    """sqlite:///path/to/mlflow.db -> that file; None for servers and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _ensure_sqlite_store(db: Path) -> None:
    """Under the store's lock: create a missing store whole, or refuse a broken one.

    MLflow builds its schema in the first process that opens an empty file: ~50 tables and ~80
    alembic migrations, each committed on its own. Two processes doing that at once collide
    ("duplicate column name", "table _alembic_tmp_... already exists") and a process killed
    midway can leave a store no later call opens. So a new schema is built in a private file and
    renamed into place: the store is either absent or complete. A file that exists but is empty of
    tables (made by another tool) is left to MLflow, under the lock."""
    if db.exists() and db.stat().st_size > 0:
        _refuse_half_migrated(db)
        return
    for stale in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)  # left by a deleted store: SQLite would replay them into the new one
    tmp = db.with_name(f"{db.name}.creating-{os.getpid()}")
    try:
        _create_schema(tmp)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def _create_schema(path: Path) -> None:
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    path.unlink(missing_ok=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    con = sqlite3.connect(path)
    try:
        # WAL: readers no longer wait for a writer (parallel tune workers, `mlflow ui`); the mode is
        # stored in the file. MLflow does not set it. A file system without WAL keeps its rollback journal.
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _refuse_half_migrated(db: Path) -> None:
    """A migration that died midway leaves its _alembic_tmp_ table, and every later one fails on it."""
    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        leftover = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if leftover and "runs" in tables else 0
    finally:
        con.close()
    if leftover:
        raise MlpipeError(
            f"{db}: a half-migrated MLflow store (leftover table {leftover[0]}: its creation or an "
            f"upgrade was interrupted); it holds {runs} run(s). With none, move it aside and run "
            f"again (mlpipe creates a new store); else restore it from a backup"
        )


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
    run = client.create_run(
        exp.experiment_id, run_name=name, tags={**process_tags(), **{k: str(v) for k, v in tags.items()}}
    )
    rid = run.info.run_id
    params = flatten(config)
    client.log_batch(rid, params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()])
    client.log_dict(rid, config, "config.json")
    return rid


def process_tags() -> dict[str, str]:
    """Which process a run belongs to, so a later run can tell that it was killed (end_orphans)."""
    import socket

    import psutil

    return {
        "mlpipe.host": socket.gethostname(),
        "mlpipe.pid": str(os.getpid()),
        "mlpipe.pid_started": f"{psutil.Process().create_time():.2f}",
    }


def _process_alive(pid: int, started: str) -> bool:
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}" == started  # the same pid reused is another process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def end_orphans(experiment: str) -> list[str]:
    """End as KILLED the runs of this host left RUNNING by a process that is gone (kill -9, power
    loss), tagging how they ended -> their run ids. Runs of other hosts are left alone."""
    import socket

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    client = MlflowClient()
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`mlpipe.host` = '{host}'"
    ended = []
    for run in client.search_runs([exp.experiment_id], query, max_results=1000):
        t = run.data.tags
        if "mlpipe.pid" not in t or _process_alive(int(t["mlpipe.pid"]), t.get("mlpipe.pid_started", "")):
            continue
        client.set_tag(
            run.info.run_id,
            "mlpipe.ended",
            f"KILLED: process {t['mlpipe.pid']} on {host} was gone "
            f"when a later run started ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        )
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    return ended


def end_parent(run_id: str, ok: bool, tags: dict | None = None) -> None:
    set_tags({k: str(v)[:5000] for k, v in (tags or {}).items()}, run_id)
    MlflowClient().set_terminated(run_id, "FINISHED" if ok else "FAILED")


@contextmanager
def stage_run(stage: str, parent_id: str | None, tags: dict | None = None) -> Iterator[str]:
    """A child run of the pipeline run (or a top-level run when a stage runs alone, as under
    DVC). A stage that raises leaves its run FAILED. Leaving it waits for the metric_logger
    writes still queued and raises the first that failed."""
    all_tags = {"mlpipe.stage": stage, **process_tags(), **{k: str(v) for k, v in (tags or {}).items()}}  # strings only
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
    return [
        mlflow.entities.Metric(f"{prefix}{k}", float(v), ts, step)
        for k, v in metrics.items()
        if v is not None and np.isfinite(v)
    ]


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
        MlflowClient().log_batch(
            run_id,
            metrics=self.metrics,
            params=[mlflow.entities.Param(k, v) for k, v in self.params.items()],
            tags=[mlflow.entities.RunTag(k, v) for k, v in self.tags.items()],
        )
        self.metrics, self.params, self.tags = [], {}, {}


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """To the active run, or to run_id."""
    path = Path(path)
    if run_id is not None:
        client = MlflowClient()
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=artifact_path or path.name)
        else:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    elif path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(obj: dict, name: str, run_id: str | None = None) -> None:
    """To the active run, or to run_id."""
    if run_id is not None:
        MlflowClient().log_dict(run_id, obj, name)
    else:
        mlflow.log_dict(obj, name)


def set_tags(tags: dict, run_id: str | None = None) -> None:
    """In one request: on the active run, or on run_id."""
    if tags:
        MlflowClient().log_batch(
            run_id or mlflow.active_run().info.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()]
        )


def log_dataset(X: np.ndarray, y: np.ndarray, name: str, source: str, digest: str, context: str) -> None:
    """The dataset as an MLflow dataset input of the active run (features flattened)."""
    ds = mlflow.data.from_numpy(
        np.asarray(X).reshape(len(X), -1), targets=np.asarray(y), source=source, name=name, digest=digest
    )
    mlflow.log_input(ds, context=context)


def get_run(run_id: str):
    return MlflowClient().get_run(run_id)


def log_text(text: str, artifact_file: str) -> None:
    """A text artefact of the active run (artifact_file: its path in the run's artefacts)."""
    mlflow.log_text(text, artifact_file)


# ---------------------------------------------------------------- reading runs back (mlpipe lineage)


def _record(run) -> dict:
    i = run.info
    return {
        "run_id": i.run_id,
        "name": i.run_name,
        "experiment_id": i.experiment_id,
        "status": i.status,
        "start_ms": i.start_time,
        "end_ms": i.end_time,
        "artifact_uri": i.artifact_uri,
        "tags": dict(run.data.tags),
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "datasets": [
            {
                "name": d.dataset.name,
                "digest": d.dataset.digest,
                "source": d.dataset.source,
                "context": next((t.value for t in d.tags if t.key == "mlflow.data.context"), None),
            }
            for d in (run.inputs.dataset_inputs if run.inputs else [])
        ],
    }


def run_record(run_id: str) -> dict | None:
    """A run as plain values: info, tags, params, latest metrics, dataset inputs; None when there is none."""
    try:
        return _record(MlflowClient().get_run(run_id))
    except mlflow.exceptions.MlflowException:
        return None


def child_runs(run_id: str, experiment_id: str) -> list[dict]:
    """The runs whose parent is run_id, oldest first."""
    found = MlflowClient().search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{run_id}'",
        max_results=1000,
        order_by=["attributes.start_time ASC"],
    )
    return [_record(r) for r in found]


def find_runs(experiment_id: str, tags: dict, max_results: int = 1) -> list[dict]:
    """FINISHED runs carrying all these tags, newest first."""
    where = " and ".join(["attributes.status = 'FINISHED'"] + [f"tags.`{k}` = '{v}'" for k, v in tags.items()])
    found = MlflowClient().search_runs(
        [experiment_id], where, max_results=max_results, order_by=["attributes.start_time DESC"]
    )
    return [_record(r) for r in found]


def list_artifacts(run_id: str, path: str | None = None, depth: int = 3) -> list[str]:
    """The artefact files of a run under path, folders followed depth levels deep."""
    out = []
    for f in MlflowClient().list_artifacts(run_id, path):
        if not f.is_dir:
            out.append(f.path)
        elif depth > 1:
            out += list_artifacts(run_id, f.path, depth - 1)
    return out
