"""DDP plumbing: process group, per-epoch seeded sharding, metric reduction, the launcher.

A training job of N ranks is started by torch's elastic agent (`launch`, or `torchrun` across
nodes); each rank runs flows/train_worker.py, calls `init()`, and trains on its shard. Only rank 0
has side effects (MLflow, checkpoints, the model file)."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from components.errors import MlpipeError


class DistributedError(MlpipeError):
    pass


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; the default is a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def single() -> Dist:
    return Dist(device=default_device())


def resolve_nproc(setting: int | str) -> int:
    """train.distributed.nproc_per_node -> a count: 'auto' is one per GPU, else 1."""
    if setting == "auto":
        return max(1, torch.cuda.device_count())
    return int(setting)


def threads_per_rank(num_threads: int, local_world: int) -> int:
    """0 = share this node's cores among its ranks (2 cores, 2 ranks -> 1 thread each)."""
    return num_threads or max(1, (os.cpu_count() or 1) // max(1, local_world))


def init(timeout_s: float) -> Dist:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, ...).
    gloo on CPU, NCCL on GPU; a collective that waits longer than timeout_s fails the job."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = default_device(local_rank)
    d = Dist(int(os.environ.get("RANK", "0")), world, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), device)
    if world > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return d


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def shard(
    n: int, seed: int, epoch: int, rank: int = 0, world: int = 1, shuffle: bool = True, bucket: tuple | None = None
) -> np.ndarray:
    """This rank's positions in 0..n-1 for one epoch, as DistributedSampler does: one permutation
    seeded by (seed, epoch), the same on every rank, padded by wrapping so ranks get equal counts.
    bucket (lengths, global batch, chunk batches): the permutation reordered by bucket_by_length."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).numpy() if shuffle else np.arange(n)
    if bucket is not None and bucket[2] > 0:
        order = bucket_by_length(order, *bucket, g)
    per_rank = -(-n // world)  # ceil
    if per_rank * world > n:
        order = np.concatenate([order, order[: per_rank * world - n]])
    return order[rank::world]


def bucket_by_length(order: np.ndarray, lengths: np.ndarray, batch: int, chunk_batches: int, g) -> np.ndarray:
    """order sorted by length within consecutive chunks of chunk_batches * batch rows, then its full batches
    (consecutive runs of `batch`) shuffled with g, the last partial one kept last. Every global batch holds rows
    of similar length, and a rank's share of batch i (order[rank::world]) comes from global batch i, so 2 ranks
    see the rows 1 rank sees, step by step."""
    chunk = batch * chunk_batches
    order = np.concatenate(
        [c[np.argsort(lengths[c], kind="stable")] for c in np.array_split(order, range(chunk, len(order), chunk))]
    )
    full = len(order) // batch
    perm = torch.randperm(full, generator=g).numpy()
    return np.concatenate([order[: full * batch].reshape(full, batch)[perm].reshape(-1), order[full * batch :]])


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum a few scalars over ranks (float64: counts and loss sums stay exact)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    tdist.all_reduce(t)
    return t.cpu().tolist()


def any_rank(flag: bool, d: Dist) -> bool:
    """True when the flag is set on any rank (all ranks then take the same branch)."""
    return bool(all_sum([float(flag)], d)[0] > 0) if d.enabled else flag


def broadcast_str(s: str | None, d: Dist) -> str | None:
    if not d.enabled:
        return s
    box = [s]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()


def die_with_parent(poll_s: float = 1.0) -> None:
    """Exit when the launcher dies (kill -9 of the train stage), so no orphan rank keeps writing
    checkpoints beside a re-run. A watchdog thread, not PR_SET_PDEATHSIG: that signal fires when
    the *thread* that started us ends, and the elastic agent restarts ranks from short-lived threads."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def launch(args: list[str], nproc: int, max_restarts: int, log_dir: Path | None = None) -> None:
    """Run `python ARGS` as nproc ranks on this node under torch's elastic agent (what
    `torchrun --standalone` does). A rank that dies restarts all ranks, up to max_restarts times."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the agent's shared TCPStore keeps the previous attempt's keys, and restarted gloo/NCCL ranks
    # then hang connecting to dead peers (pytorch/pytorch#135712): give each attempt its own store
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    cfg = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.5,
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir) if log_dir else None),
    )
    try:
        elastic_launch(cfg, sys.executable)(*args)
    except ChildFailedError as e:
        rank, failure = next(iter(sorted(e.failures.items())))
        why = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
        raise DistributedError(
            f"distributed training failed after {max_restarts} restart(s) (train.distributed.max_restarts): "
            f"rank {rank} exited with code {failure.exitcode}; "
            f"{str(why).strip().splitlines()[-1] if why else 'see its output above'}"
        ) from None
