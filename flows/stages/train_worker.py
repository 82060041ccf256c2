"""One rank of the train stage's job (or the whole job in one process).

flows/stages/train.py calls train_model in its own process when train.distributed.nproc_per_node
is 1; with N >= 2 it starts N ranks of this module under torch's elastic agent. Each rank is

    python -m flows.stages.train_worker --params CONFIG.yaml [--root DIR] [--run-id MLFLOW_RUN]

which is also the entry point for several nodes:

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes 2 --nproc-per-node 4 --max-restarts 2 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m flows.stages.train_worker --params params.yaml

Only rank 0 logs to MLflow (to --run-id, or a train run of its own when started without one),
saves checkpoints and writes the model file. Multi-node needs models/ (checkpoints, model file) on a
shared filesystem, mounted on every node (at any path), and data/prepared on every node: infra/OPERATING.md."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

from components import data, distributed, models, train, tune
from components.config import Config, load_config
from components.errors import MlpipeError
from components.fileio import write_json
from flows.paths import Paths

# settings that change how a run executes, not what it computes: a change keeps the checkpoints
OPERATIONAL = (
    "checkpoint_every",
    "checkpoint_min_seconds",
    "keep_checkpoints",
    "loader_workers",
    "num_threads",
    "compile",
    "deterministic",
    "gpus_per_run",
    "max_epochs",  # a cap shows in epochs, which the key holds
)


def resume_key(cfg: Config, data_hash: str, spec: dict, world: int) -> str:
    """What a checkpoint must match to be resumed from: data, model, seed, training maths, ranks."""
    t = cfg.section("train")
    for k in OPERATIONAL:
        t.pop(k)
    t["distributed"] = {"world": world}
    material = {
        "seed": cfg.seed,
        "data": data_hash,
        "val_size": cfg.data.val_size,
        "spec": spec,
        "augment": cfg.section("augment"),
        "train": t,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def resolve(cfg: Config, paths: Paths) -> Config:
    """The config the final model trains with: params.yaml plus the tune stage's best parameters
    (when tuned on this data). The stage and ranks started by torchrun directly both use this."""
    return tune.apply_best(cfg, paths.best_params, data.load_meta(paths.prepared).content_hash)


def train_model(cfg: Config, paths: Paths, d: distributed.Dist, log=None, progress: bool = True):
    """Train on the prepared dataset (memory-mapped, streamed by batch) -> (history, model, spec).
    Rank 0 writes models/model.pt and models/history.json."""
    ds = data.load_prepared(paths.prepared, mmap=True)
    m = ds.meta
    spec = models.spec_for(cfg.model, m)
    recipe = train.Recipe(cfg, ds.X_train, ds.y_train, m.kind, m.value_range)
    model, hist = recipe.fit(
        spec,
        log=log,
        progress=progress,
        dist=d,
        checkpoint_dir=paths.checkpoints,
        resume_key=resume_key(cfg, m.content_hash, spec, d.world),
    )
    if d.is_main:
        models.save(model, spec, m.classes, paths.model_file)
        write_json(paths.history, {"data_hash": m.content_hash, **hist.to_dict()})
    return hist, model, spec


def summarize(paths: Paths, log: bool) -> dict:
    """The stage's result from what rank 0 wrote; logged to the active MLflow run when log."""
    hist = json.loads(paths.history.read_text())
    model, _, _ = models.load(paths.model_file)
    best = hist["epochs"][hist["best_epoch"] - 1]
    if log:
        from components import tracking

        tracking.log_metrics(
            {
                "best_epoch": hist["best_epoch"],
                "best_val_loss": best["val_loss"],
                "best_val_accuracy": best["val_accuracy"],
                "resumed_from_epoch": hist.get("resumed_from", 0),
            }
        )
        tracking.log_artifact(paths.history, "train")
    return {
        "best_epoch": hist["best_epoch"],
        "epochs_run": len(hist["epochs"]),
        "val_accuracy": best["val_accuracy"],
        "model_hash": data.content_hash(*[p.detach().numpy() for p in model.state_dict().values()]),
    }


def _rank0_train(cfg: Config, paths: Paths, d: distributed.Dist, run_id: str) -> None:
    """Rank 0 under the launcher: metrics go to the stage run the launcher opened (run_id)."""
    from components import tracking

    tracking.setup(cfg.tracking, paths.root)
    train_model(cfg, paths, d, tracking.metric_logger(run_id=run_id), progress=True)
    tracking.flush()


def _standalone(cfg: Config, paths: Paths, d: distributed.Dist) -> None:
    """Started by torchrun without a launcher: rank 0 opens the train run itself."""
    if not d.is_main:
        train_model(cfg, paths, d, None, progress=False)
        return
    from components import tracking

    tracking.setup(cfg.tracking, paths.root)
    with tracking.stage_run("train", None, tags={"mlpipe.world_size": d.world}):
        tracking.log_params({"train": cfg.section("train"), "world_size": d.world})
        train_model(cfg, paths, d, tracking.metric_logger(), progress=True)
        summarize(paths, log=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.stages.train_worker", description="One rank of a training job.")
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
    paths = Paths(a.root)
    d = None
    try:
        cfg = resolve(load_config(a.params, a.set), paths)  # idempotent on the launcher's resolved config
        d = distributed.init(cfg.train.distributed.timeout)
        train.set_threads(distributed.threads_per_rank(cfg.train.num_threads, d.local_world))
        if a.run_id and d.is_main:
            _rank0_train(cfg, paths, d, a.run_id)
        elif a.run_id:
            train_model(cfg, paths, d, None, progress=False)
        else:
            _standalone(cfg, paths, d)
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
