"""train: the final model on the tuned config -> models/model.pt, models/history.json.

One process, or train.distributed.nproc_per_node DDP ranks of flows/stages/train_worker.py under
torch's elastic agent; either way one MLflow run, to which only rank 0 logs. Resumes from
models/checkpoints. With train.gpus_per_run > 0 and a Prefect server it trains inside this node's
GPU slots (flows/gpus.py)."""

from __future__ import annotations

import json

from components import data, distributed, models, tracking, train
from components.config import Config
from components.errors import MlpipeError
from components.fileio import atomic_file
from flows import gpus
from flows.paths import Paths
from flows.stages import train_worker


def run(cfg: Config, paths: Paths, parent: str | None = None, progress: bool = True) -> dict:
    with tracking.stage_run("train", parent) as run_id:
        meta = data.load_meta(paths.prepared)
        cfg = train_worker.resolve(cfg, paths)  # with the tune stage's output
        spec = models.spec_for(cfg.model, meta)
        # train.gpus_per_run > 0 and a Prefect server: wait for this node's GPU slots, train on the devices taken
        with gpus.devices_for_run(cfg.train.gpus_per_run) as devices:
            nproc = _ranks(cfg, devices)
            tracking.log_params(
                {
                    "model": cfg.section("model"),
                    "train": cfg.section("train"),
                    "arch": spec["arch"],
                    "n_params": sum(p.numel() for p in models.build(spec).parameters()),
                    "world_size": nproc,
                    **({"gpu_devices": ",".join(devices)} if devices else {}),
                }
            )
            tracking.set_tags({"mlpipe.data_hash": meta.content_hash})
            if nproc == 1:
                train.set_threads(cfg.train.num_threads)
                d = gpus.single_on(devices[0]) if devices else distributed.single()
                train_worker.train_model(cfg, paths, d, tracking.metric_logger(), progress)
            else:
                _launch(cfg, paths, run_id, nproc, devices)
        return train_worker.summarize(paths, log=True)


def _ranks(cfg: Config, devices: list[str] | None) -> int:
    """Ranks on this node: 'auto' is one per GPU taken (gpus_per_run of them), else as configured."""
    setting, gpus_per_run = cfg.train.distributed.nproc_per_node, cfg.train.gpus_per_run
    if setting == "auto" and devices:
        return len(devices)
    n = distributed.resolve_nproc(setting)
    return min(n, gpus_per_run) if setting == "auto" and gpus_per_run else n


def _launch(cfg: Config, paths: Paths, run_id: str | None, nproc: int, devices: list[str] | None = None) -> None:
    """N ranks under the elastic agent; a user-facing error a rank reported is raised here."""
    import yaml

    paths.train_job.mkdir(parents=True, exist_ok=True)
    with atomic_file(paths.train_config, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    paths.train_error.unlink(missing_ok=True)
    args = [
        "-m",
        train_worker.__name__,
        "--params",
        str(paths.train_config),
        "--root",
        str(paths.root),
        "--error-file",
        str(paths.train_error),
    ] + (["--run-id", run_id] if run_id else [])
    with gpus.visible(devices):
        distributed.launch(args, nproc, cfg.train.distributed.max_restarts, log_dir=paths.train_logs)
    if paths.train_error.exists():
        err = json.loads(paths.train_error.read_text())
        raise MlpipeError(err["message"])
