"""The train stage's job, in one process or as DDP ranks.

`run_stage` runs inside the stage's MLflow run (flows/stages.py run_train). With
train.distributed.nproc_per_node = 1 it trains in this process; with N >= 2 it starts N ranks of
this module under torch's elastic agent. Each rank is

    python -m flows.train_worker --params CONFIG.yaml [--root DIR] [--run-id MLFLOW_RUN]

which is also the entry point for several nodes:

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes 2 --nproc-per-node 4 --max-restarts 2 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m flows.train_worker --params params.yaml

Only rank 0 logs to MLflow (to --run-id, or a train run of its own when started without one),
saves checkpoints and writes the model file. Multi-node needs models/ on a shared filesystem."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from components import augment, data, distributed, models, stream, train
from components.config import Config, load_config
from components.errors import MlpipeError
from components.fileio import atomic_file, write_json

# settings that change how a run executes, not what it computes: a change keeps the checkpoints
OPERATIONAL = ("checkpoint_every", "checkpoint_min_seconds", "keep_checkpoints", "loader_workers", "num_threads", "compile",
               "deterministic")


def checkpoint_dir(root: Path) -> Path:
    return Path(root) / "models" / "checkpoints"


def error_file(root: Path) -> Path:
    return Path(root) / ".mlpipe" / "train" / "error.json"


def resume_key(cfg: Config, data_hash: str, spec: dict, world: int) -> str:
    """What a checkpoint must match to be resumed from: data, model, seed, training maths, ranks."""
    t = cfg.section("train")
    for k in OPERATIONAL:
        t.pop(k)
    t["distributed"] = {"world": world}
    material = {"seed": cfg.seed, "data": data_hash, "val_size": cfg.data.val_size, "spec": spec,
                "augment": cfg.section("augment"), "train": t}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def train_model(cfg: Config, root: Path, d: distributed.Dist, log=None, progress: bool = True):
    """Train on the prepared dataset (memory-mapped, streamed by batch) -> (history, model, spec).
    Rank 0 writes models/model.pt and models/history.json."""
    root = Path(root)
    ds = data.load_prepared(root / "data" / "prepared", mmap=True)
    m = ds.meta
    y = np.asarray(ds.y_train, dtype=np.int64)
    tr, va = train.val_split(y, cfg.data.val_size, cfg.seed)
    spec = models.model_args(cfg.model, m.feature_shape, m.n_classes, m.kind)
    train.seed_everything(cfg.seed)  # weight init is part of the seeded run
    model = models.build(spec)
    aug = augment.build_augment(cfg.augment, m.kind, ds.X_train[tr[:10_000]], m.value_range)
    hist = train.fit(model, stream.Rows(ds.X_train, tr), y[tr], stream.Rows(ds.X_train, va), y[va], cfg.train,
                     cfg.seed, augment=aug, log=log, progress=progress, dist=d, checkpoint_dir=checkpoint_dir(root),
                     resume_key=resume_key(cfg, m.content_hash, spec, d.world))
    if d.is_main:
        models.save(model, spec, m.classes, root / "models" / "model.pt")
        write_json(root / "models" / "history.json", {"data_hash": m.content_hash, **hist.to_dict()})
    return hist, model, spec


def _launch(cfg: Config, root: Path, run_id: str | None, nproc: int) -> None:
    """N ranks under the elastic agent; a user-facing error a rank reported is raised here."""
    job = Path(root) / ".mlpipe" / "train"
    job.mkdir(parents=True, exist_ok=True)
    with atomic_file(job / "config.yaml", "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    error_file(root).unlink(missing_ok=True)
    args = ["-m", "flows.train_worker", "--params", str(job / "config.yaml"), "--root", str(root),
            "--error-file", str(error_file(root))] + (["--run-id", run_id] if run_id else [])
    distributed.launch(args, nproc, cfg.train.distributed.max_restarts, log_dir=job / "logs")
    if error_file(root).exists():
        err = json.loads(error_file(root).read_text())
        raise MlpipeError(err["message"])


def run_stage(cfg: Config, root: Path, run_id: str | None, progress: bool = True) -> dict:
    """The body of the train stage, inside its open MLflow run (run_id)."""
    from components import tracking

    root = Path(root)
    meta = data.load_meta(root / "data" / "prepared")
    spec = models.model_args(cfg.model, meta.feature_shape, meta.n_classes, meta.kind)
    nproc = distributed.resolve_nproc(cfg.train.distributed.nproc_per_node)
    tracking.log_params({"model": cfg.section("model"), "train": cfg.section("train"), "arch": spec["arch"],
                         "n_params": sum(p.numel() for p in models.build(spec).parameters()), "world_size": nproc})
    tracking.set_tags({"mlpipe.data_hash": meta.content_hash})
    if nproc == 1:
        train.set_threads(cfg.train.num_threads)
        train_model(cfg, root, distributed.single(), tracking.metric_logger(), progress)
    else:
        _launch(cfg, root, run_id, nproc)
    return summarize(root, log=True)


def summarize(root: Path, log: bool) -> dict:
    """The stage's result from what rank 0 wrote; logged to the active MLflow run when log."""
    hist = json.loads((Path(root) / "models" / "history.json").read_text())
    model, _, _ = models.load(Path(root) / "models" / "model.pt")
    best = hist["epochs"][hist["best_epoch"] - 1]
    if log:
        from components import tracking

        tracking.log_metrics({"best_epoch": hist["best_epoch"], "best_val_loss": best["val_loss"],
                              "best_val_accuracy": best["val_accuracy"], "resumed_from_epoch": hist.get("resumed_from", 0)})
        tracking.log_artifact(Path(root) / "models" / "history.json", "train")
    return {"best_epoch": hist["best_epoch"], "epochs_run": len(hist["epochs"]), "val_accuracy": best["val_accuracy"],
            "model_hash": data.content_hash(*[p.detach().numpy() for p in model.state_dict().values()])}


def _rank0_train(cfg: Config, root: Path, d: distributed.Dist, run_id: str) -> None:
    """Rank 0 under the launcher: metrics go to the stage run the launcher opened (run_id)."""
    from components import tracking

    tracking.setup(cfg.tracking, root)
    train_model(cfg, root, d, tracking.metric_logger(run_id=run_id), progress=True)
    tracking.flush()


def _standalone(cfg: Config, root: Path, d: distributed.Dist) -> None:
    """Started by torchrun without a launcher: rank 0 opens the train run itself."""
    if not d.is_main:
        train_model(cfg, root, d, None, progress=False)
        return
    from components import tracking

    tracking.setup(cfg.tracking, root)
    with tracking.stage_run("train", None, tags={"mlpipe.world_size": d.world}):
        tracking.log_params({"train": cfg.section("train"), "world_size": d.world})
        train_model(cfg, root, d, tracking.metric_logger(), progress=True)
        summarize(root, log=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.train_worker", description="One rank of a training job.")
    p.add_argument("--params", default="params.yaml", help="config file (the launcher passes the resolved config)")
    p.add_argument("--set", action="append", default=[], help="override a config key, e.g. train.epochs=3")
    p.add_argument("--root", default=".", help="project folder (data/prepared in, models/ out)")
    p.add_argument("--run-id", default=None, help="MLflow run rank 0 logs to (the train stage's run)")
    p.add_argument("--error-file", default=None, help="report a user-facing error here and exit 0 (no restart)")
    a = p.parse_args(argv)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a stuck rank waits
    distributed.die_with_parent()
    root = Path(a.root).resolve()
    d = None
    try:
        cfg = load_config(a.params, a.set)
        d = distributed.init(cfg.train.distributed.timeout)
        train.set_threads(distributed.threads_per_rank(cfg.train.num_threads, d.local_world))
        if a.run_id and d.is_main:
            _rank0_train(cfg, root, d, a.run_id)
        elif a.run_id:
            train_model(cfg, root, d, None, progress=False)
        else:
            _standalone(cfg, root, d)
    except MlpipeError as e:  # the same on every rank (metrics and decisions are all-reduced)
        print(f"error: {e}", file=sys.stderr)
        if a.error_file is None:
            return 2
        if d is None or d.is_main:
            write_json(a.error_file, {"message": str(e), "type": type(e).__name__})
        return 0  # deterministic: restarting would fail the same way
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
