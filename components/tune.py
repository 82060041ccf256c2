"""Hyperparameter search with Optuna: the search space (a function of a trial), the study
(name, storage, sampler, pruner, crash recovery, trial budget) and one trial's objective.

No MLflow here: the objective reports through a `log(metrics, step)` callback."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from components import cv, models, train
from components.config import AugmentConfig, Config
from components.errors import ConfigError, MlpipeError
from components.fileio import write_json

FORMAT = "mlpipe.best_params/1"
# config keys that do not change what a trial computes: they stay out of the study name
_NOT_IN_NAME = ("enabled", "n_trials", "n_workers", "storage", "heartbeat_s", "timeout_s")
# keys the search space sets (or that do not change results): their values in params.yaml do not matter
# (val_every: a trial validates every epoch whatever it says, see objective)
_SEARCHED = {
    "train": ("lr", "weight_decay", "batch_size", "epochs", "num_threads", "val_every", "max_epochs"),
    "model": ("dropout", "channels", "hidden", "d_model", "heads", "layers", "ff"),
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ENCODERS = ("transformer", "vit")  # components/transformer.py: their own search space


# ---- search space -----------------------------------------------------------------------


def scale_augment(cfg: AugmentConfig, s: float) -> dict[str, Any]:
    """The augment section's magnitudes times s, clipped to their allowed ranges."""
    if not cfg.enabled:
        return {}
    return {
        "augment.shift": min(8, round(cfg.shift * s)),
        "augment.rotation": min(45.0, cfg.rotation * s),
        "augment.noise_std": min(1.0, cfg.noise_std * s),
        "augment.cutout": min(32, round(cfg.cutout * s)),
        "augment.tabular_noise_std": min(1.0, cfg.tabular_noise_std * s),
        "augment.token_dropout": min(0.5, cfg.token_dropout * s),
        "augment.token_mask": min(0.5, cfg.token_mask * s),
        "augment.span_delete": min(0.5, cfg.span_delete * s),
    }


def search_space(trial: optuna.Trial, cfg: Config, arch: str) -> dict[str, Any]:
    """trial -> config overrides {'train.lr': .., 'model.channels': [..], ...}; bounds from cfg.tune.
    A transformer / vit searches d_model, heads, layers, FFN width (d_model x ff_mult) and lr warm-up in
    place of width and depth."""
    t = cfg.tune
    o: dict[str, Any] = {
        "train.lr": trial.suggest_float("lr", *t.lr, log=True),
        "train.weight_decay": trial.suggest_float("weight_decay", *t.weight_decay, log=True),
        "train.batch_size": trial.suggest_categorical("batch_size", list(t.batch_size)),
        "train.epochs": trial.suggest_int("epochs", *t.epochs),
        "model.dropout": trial.suggest_float("dropout", *t.dropout),
    }
    if arch in ENCODERS:
        d_model = trial.suggest_categorical("d_model", list(t.d_model))
        o.update(
            {
                "model.d_model": d_model,
                "model.heads": trial.suggest_categorical("heads", list(t.heads)),
                "model.layers": trial.suggest_int("layers", *t.layers),
                "model.ff": d_model * trial.suggest_categorical("ff_mult", list(t.ff_mult)),
                "train.warmup": trial.suggest_float("warmup", *t.warmup),
            }
        )
        o.update(scale_augment(cfg.augment, trial.suggest_float("aug_strength", *t.aug_strength)))
        return o
    width = trial.suggest_categorical("width", list(t.width))
    depth = trial.suggest_int("depth", *t.depth)
    if arch == "cnn":
        o["model.channels"] = [width * 2**i for i in range(depth)]
    else:
        o["model.hidden"] = [width] * depth
    o.update(scale_augment(cfg.augment, trial.suggest_float("aug_strength", *t.aug_strength)))
    return o


def apply_overrides(cfg: Config, overrides: dict[str, Any], origin: str = "tuned params") -> Config:
    """A new validated Config with dotted-key overrides applied."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        node = d
        *parents, leaf = key.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value
    try:
        return Config.model_validate(d)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{origin}: {bad}") from None


# ---- study ------------------------------------------------------------------------------


def study_name(cfg: Config, data_hash: str, dataset: str) -> str:
    """Data hash + search space + everything else a trial's result depends on: re-running
    with the same inputs resumes the same study; n_trials, n_workers and storage do not count."""
    d = cfg.to_dict()
    material = {
        "data": data_hash,
        "seed": d["seed"],
        "val_size": d["data"]["val_size"],
        "tune": {k: v for k, v in d["tune"].items() if k not in _NOT_IN_NAME},
        "model": {k: v for k, v in d["model"].items() if k not in _SEARCHED["model"]},
        "augment": d["augment"],
        "train": {k: v for k, v in d["train"].items() if k not in _SEARCHED["train"]},
        "cv": d["cv"]["folds"] if cfg.tune.objective == "cv" else None,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]
    return f"mlpipe-{dataset}-{digest}"


def storage_url(cfg: Config, journal: Path) -> str:
    """What `optuna-dashboard` and the workers open: tune.storage (a database URL) or the journal file."""
    return cfg.tune.storage or str(Path(journal).resolve())


def _with_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; we ship psycopg2, so name it."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """On Postgres, one process at a time opens the storage: RDBStorage creates Optuna's tables in a
    new database, and two stages doing so at once (two machines starting on a fresh database) fail
    with a duplicate key. A session advisory lock, released when the storage is open."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("select pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK})
            try:
                yield
            finally:
                con.execute(sqlalchemy.text("select pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK})
    finally:
        engine.dispose()


_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"mlpipe optuna schema").digest()[:8], "big", signed=True)


def make_storage(cfg: Config, journal: Path):
    """Journal file (several processes on one machine; no heartbeat), or an RDB URL with
    Optuna's heartbeat: a trial silent for 4 heartbeats is failed and retried (twice at most)."""
    t = cfg.tune
    if t.storage:
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        def open_rdb():
            with warnings.catch_warnings():  # heartbeat and retry are "experimental" since Optuna 2.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    _with_driver(t.storage),
                    heartbeat_interval=t.heartbeat_s,
                    grace_period=4 * t.heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                )

        try:
            with _schema_lock(_with_driver(t.storage)):
                return open_rdb()
        except Exception as e:  # noqa: BLE001 - bad URL, missing driver, unreachable server
            raise ConfigError(
                f"tune.storage: cannot open {t.storage!r} ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    t = cfg.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=t.min_resource)
    if t.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=t.min_resource, reduction_factor=t.reduction_factor)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=t.min_resource, max_resource=t.epochs[1], reduction_factor=t.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(cfg: Config, name: str, storage, worker: int = 0) -> optuna.Study:
    """Create or load the study. Each worker seeds its sampler differently: identically seeded
    parallel workers would propose the same random start-up trials. On a database (tune.storage)
    the study may be shared by the tune stages of several machines, whose workers are numbered alike:
    their seeds also mix in the host and process id."""
    direction = "minimize" if cfg.tune.metric == "val_loss" else "maximize"
    seed = cfg.seed + 1000 * worker
    if cfg.tune.storage:
        import os
        import socket

        salt = hashlib.sha256(f"{socket.gethostname()}:{os.getpid()}".encode()).digest()
        seed = (seed + int.from_bytes(salt[:4], "big")) % 2**32  # numpy's seeds are 32-bit
    return optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(cfg),
    )


def retry_stale(study: optuna.Study, heartbeat: bool) -> list[int]:
    """Trials left RUNNING by a killed worker -> FAIL, their parameters queued again.
    Journal storage has no heartbeat: call this only while no worker runs (the stage holds
    the study lock). RDB storage: Optuna's heartbeat decides which trials are stale."""
    if heartbeat:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        optuna.storages.fail_stale_trials(study)
        return sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [t.number for t in stale]


def default_params(cfg: Config, arch: str) -> dict[str, Any] | None:
    """The config as written, in search-space terms (the inverse of search_space); None when
    it lies outside the space (a value out of bounds, a width not among the choices, or
    widths that do not follow the space's shape)."""
    t, m = cfg.tune, cfg.model
    if arch in ENCODERS:
        return _default_encoder_params(cfg)
    widths = list(m.channels if arch == "cnn" else m.hidden)
    width, depth = widths[0], len(widths)
    shape = [width * 2**i for i in range(depth)] if arch == "cnn" else [width] * depth
    p = {
        "lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "batch_size": cfg.train.batch_size,
        "epochs": cfg.train.epochs,
        "dropout": m.dropout,
        "width": width,
        "depth": depth,
        "aug_strength": 1.0,
    }
    inside = widths == shape and _in_space(
        p, t, ("width", "batch_size"), ("lr", "weight_decay", "epochs", "dropout", "depth", "aug_strength")
    )
    return p if inside else None


def _in_space(p: dict[str, Any], t, choices: tuple[str, ...], ranges: tuple[str, ...]) -> bool:
    """Whether p's values lie in the search space: each key in `choices` among tune.<key>'s values,
    each key in `ranges` within tune.<key>'s (low, high)."""
    return all(p[k] in getattr(t, k) for k in choices) and all(
        getattr(t, k)[0] <= p[k] <= getattr(t, k)[1] for k in ranges
    )


def _default_encoder_params(cfg: Config) -> dict[str, Any] | None:
    """default_params for a transformer / vit; train.warmup None is the scheduler's own warm-up (onecycle 0.15,
    else 0), which the same schedule with that warm-up reproduces."""
    t, m = cfg.tune, cfg.model
    own = 0.15 if cfg.train.scheduler == "onecycle" else 0.0
    p = {
        "lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "batch_size": cfg.train.batch_size,
        "epochs": cfg.train.epochs,
        "dropout": m.dropout,
        "d_model": m.d_model,
        "heads": m.heads,
        "layers": m.layers,
        "ff_mult": m.ff // m.d_model,
        "warmup": cfg.train.warmup if cfg.train.warmup is not None else own,
        "aug_strength": 1.0,
    }
    inside = m.ff == p["ff_mult"] * m.d_model and _in_space(
        p,
        t,
        ("ff_mult", "d_model", "heads", "batch_size"),
        ("lr", "weight_decay", "epochs", "dropout", "layers", "warmup", "aug_strength"),
    )
    return p if inside else None


def enqueue_default(study: optuna.Study, cfg: Config, arch: str, lock_path: Path | None = None) -> bool:
    """A new study's first trial is the config as written, so the tuned result is never worse
    on the objective than not tuning. Call only while no worker of this machine runs; with lock_path,
    under study_lock, so stages on several machines sharing the study queue it once. -> whether it was queued."""
    p = default_params(cfg, arch)
    if p is None:
        return False
    unlock = study_lock(study, lock_path) if lock_path is not None else None
    try:
        if study.get_trials(deepcopy=False):
            return False
        study.enqueue_trial(p, user_attrs={"default_config": True})
        return True
    finally:
        if unlock is not None:
            unlock()


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


def study_lock(study: optuna.Study, lock_path: Path):
    """Take the lock every worker of the study claims trials under -> its release function. On a
    Postgres storage a session advisory lock keyed by the study name, which holds for workers on every
    machine sharing the database; otherwise an flock on lock_path (the workers of one machine)."""
    backend = getattr(study._storage, "_backend", study._storage)  # RDBStorage comes wrapped in a cache
    engine = getattr(backend, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(study.study_name.encode()).digest()[:8], "big", signed=True)
        con = engine.connect()
        con.execute(text("select pg_advisory_lock(:k)"), {"k": key})

        def unlock() -> None:
            con.execute(text("select pg_advisory_unlock(:k)"), {"k": key})
            con.close()

        return unlock
    f = open(lock_path, "a")  # noqa: SIM115 - closed by the release function
    fcntl.flock(f, fcntl.LOCK_EX)

    def unflock() -> None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()

    return unflock


def wait_running(study: optuna.Study, deadline: float | None = None, poll_s: float = 1.0) -> None:
    """Wait while trials of the study run elsewhere (stages on other machines sharing it on a database),
    so the best trial is read from the whole budget. A trial whose worker died stops beating and is
    failed here (then retried by a live worker); deadline: epoch seconds after which not to wait."""
    import time

    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if deadline is not None and time.time() >= deadline:
            return
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll_s)


def run_one(study: optuna.Study, objective, n_trials: int, lock_path: Path) -> bool:
    """Run one more trial if the budget allows: finished + running trials < n_trials.
    The count and Optuna's ask happen under one lock (study_lock: across machines on Postgres), so
    parallel workers never overshoot; the objective releases it as soon as its trial exists.
    -> False when the budget is spent."""
    unlock = study_lock(study, lock_path)
    released = False

    def release():
        nonlocal released
        if not released:
            unlock()
            released = True

    try:
        taken = len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))
        if taken >= n_trials:
            return False

        def wrapped(trial):
            release()
            return objective(trial)

        study.optimize(wrapped, n_trials=1, catch=())
        return True
    finally:
        release()


# ---- objective --------------------------------------------------------------------------


@dataclass
class TrialData:
    """What a trial trains on: the training split of the prepared dataset."""

    X: np.ndarray  # (N, *feature_shape) float32
    y: np.ndarray  # (N,) int64
    kind: str
    value_range: Any
    classes: list[str]
    feature_shape: list[int]
    text: dict | None = None  # text data: meta.text (vocab_size ...), which the transformer's spec needs

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _reporter(trial: optuna.Trial, cfg: Config, log: train.LogFn | None) -> train.LogFn:
    """Per-epoch callback: log, report the metric to Optuna, raise TrialPruned when told to."""
    metric = cfg.tune.metric

    def on_epoch(row: dict, epoch: int) -> None:
        if log is not None:
            log(row, epoch)
        value = row[metric]
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{metric} is {value} at epoch {epoch}")
        trial.report(value, epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_at", epoch)
            raise optuna.TrialPruned(f"{cfg.tune.pruner} pruner at epoch {epoch}: {metric} {value:.4f}")

    return on_epoch


def objective(trial: optuna.Trial, cfg: Config, data: TrialData, log: train.LogFn | None = None) -> float:
    """Train one suggested config; -> the holdout (or mean k-fold) score of cfg.tune.metric.
    A non-finite loss prunes the trial with the reason in user_attrs['pruned_reason']."""
    spec0 = models.spec_for(cfg.model, data)
    overrides = search_space(trial, cfg, spec0["arch"])
    trial.set_user_attr("overrides", overrides)
    tcfg = apply_overrides(cfg, {**overrides, "train.val_every": 1})  # a trial reports every epoch (pruning)
    spec = models.spec_for(tcfg.model, data)
    report = _reporter(trial, cfg, log)
    try:
        if cfg.tune.objective == "cv":
            # pruning watches fold 0's epochs (the same signal as holdout); later folds run in full
            folds = cv.cross_validate(
                data.X,
                data.y,
                spec,
                tcfg,
                data.kind,
                data.value_range,
                data.classes,
                fold_log=lambda i: report if i == 0 else None,
            )
            s = cv.summarize(folds)
            attrs = {
                "val_accuracy": s["accuracy_mean"],
                "val_loss": s["loss_mean"],
                "val_accuracy_std": s["accuracy_std"],
            }
        else:
            _, hist = train.Recipe(tcfg, data.X, data.y, data.kind, data.value_range).fit(spec, log=report)
            best = hist.epochs[hist.best_epoch - 1]
            attrs = {
                "val_accuracy": best["val_accuracy"],
                "val_loss": best["val_loss"],
                "best_epoch": hist.best_epoch,
                "epochs_run": len(hist.epochs),
            }
    except optuna.TrialPruned as e:
        trial.set_user_attr("pruned_reason", str(e))
        raise
    except MlpipeError as e:
        if not str(e).startswith("training diverged"):
            raise
        trial.set_user_attr("pruned_reason", str(e))
        raise optuna.TrialPruned(str(e)) from None
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    return attrs[cfg.tune.metric]


# ---- result -----------------------------------------------------------------------------


def best_params(study: optuna.Study, cfg: Config, data_hash: str) -> dict:
    """The payload of best_params.json: the best trial's config overrides."""
    try:
        best = study.best_trial
    except ValueError:
        c = counts(study)
        raise MlpipeError(
            f"tune: no trial of study {study.study_name} completed ({c['pruned']} pruned, {c['fail']} failed); "
            "widen the tune bounds, lower tune.min_resource or raise tune.n_trials"
        ) from None
    return {
        "format": FORMAT,
        "tuned": True,
        "study": study.study_name,
        "data_hash": data_hash,
        "metric": cfg.tune.metric,
        "value": best.value,
        "best_trial": best.number,
        "params": best.params,
        "val_accuracy": best.user_attrs.get("val_accuracy"),
        "overrides": best.user_attrs["overrides"],
    }


def untuned(data_hash: str) -> dict:
    return {"format": FORMAT, "tuned": False, "data_hash": data_hash, "overrides": {}}


def write_best(path: Path, payload: dict) -> None:
    write_json(path, payload)


def cap_epochs(cfg: Config) -> Config:
    """cfg with train.epochs at most train.max_epochs (a time budget's cap, tuned counts included)."""
    m = cfg.train.max_epochs
    return cfg if m is None or cfg.train.epochs <= m else apply_overrides(cfg, {"train.epochs": m}, "train.max_epochs")


def apply_best(cfg: Config, path: Path, data_hash: str | None = None) -> Config:
    """cfg with the tuned overrides of best_params.json, if the file exists and was tuned on
    this data (otherwise cfg unchanged); train.epochs capped at train.max_epochs either way."""
    cfg = cap_epochs(cfg)
    path = Path(path)
    if not path.exists():
        return cfg
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MlpipeError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); re-run the tune stage") from None
    if payload.get("format") != FORMAT:
        raise MlpipeError(f"{path}: not an mlpipe best-params file (expected format {FORMAT})")
    if data_hash is not None and payload.get("data_hash") != data_hash:
        warnings.warn(
            f"{path}: tuned on data {payload.get('data_hash')}, this data is {data_hash}; tuned params ignored",
            stacklevel=2,
        )
        return cfg
    return cap_epochs(apply_overrides(cfg, payload.get("overrides", {}), str(path)))
