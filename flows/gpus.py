"""GPU slots: training runs on one GPU machine queue for its devices instead of sharing one.

With train.gpus_per_run > 0 and a Prefect server configured, the train stage holds gpus_per_run slots
of the global concurrency limit `gpu:<hostname>` while it trains. The limit is created on first use with
one slot per GPU of the node (an operator may set another count with `prefect gcl update`; it is left
as found). Inside the slot the stage takes that many free devices of the node, each by an flock in the
node's temp folder, and trains on those only: the Prefect limit makes runs wait, the file locks say
which devices are free. Without a Prefect server (the laptop default) there is no queue: one run at a
time per project folder (flows/locks.project_lock) is all there is."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from components.errors import ConfigError, MlpipeError
from flows.locks import prefect_server_configured

LEASE_S = 60  # the holder renews its lease; a holder killed with kill -9 frees its slots within about this


def limit_name(host: str | None = None) -> str:
    return f"gpu:{host or socket.gethostname()}"


def ensure_limit(name: str, slots: int) -> int:
    """Create the limit with `slots` slots unless it exists -> its slot count (as found)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:
                pass
            return client.read_global_concurrency_limit_by_name(name).limit


@contextmanager
def gpu_slot(gpus: int, node_gpus: int, name: str | None = None, timeout_s: float | None = None) -> Iterator[None]:
    """Hold `gpus` slots of the node's limit (created with node_gpus slots); waits while other runs
    hold them. A no-op when gpus is 0 or no Prefect server is configured."""
    if gpus <= 0 or not prefect_server_configured():
        yield
        return
    from prefect.concurrency.sync import concurrency

    name = name or limit_name()
    slots = ensure_limit(name, node_gpus)
    if gpus > slots:
        raise ConfigError(
            f"train.gpus_per_run: {gpus} is more than the {slots} slot(s) of the concurrency limit {name} "
            f"(one per GPU of this node); lower it, or raise the limit with `prefect gcl update {name} --limit N`"
        )
    with concurrency(name, occupy=gpus, timeout_seconds=timeout_s, strict=True, lease_duration=LEASE_S):
        yield


def lock_dir() -> Path:
    """Node-local: the device locks must not be shared between machines."""
    return Path(tempfile.gettempdir()) / f"mlpipe-gpus-{os.getuid()}"


def visible_devices(count: int) -> list[str]:
    """The ids of this process's CUDA devices, as CUDA_VISIBLE_DEVICES names them (a container or
    scheduler may have narrowed them already)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(count)]
    return ids[:count]


@contextmanager
def claim_devices(gpus: int, devices: list[str], folder: Path | None = None) -> Iterator[list[str]]:
    """Take `gpus` free devices of this node (one flock each) -> their ids, held until exit."""
    folder = folder or lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    node_gpus = len(devices)
    with ExitStack() as stack:
        taken: list[str] = []
        for i in devices:
            f = stack.enter_context(open(folder / f"{i}.lock", "a"))
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            stack.callback(fcntl.flock, f, fcntl.LOCK_UN)
            taken.append(i)
            if len(taken) == gpus:
                yield taken
                return
        raise MlpipeError(
            f"train.gpus_per_run: {gpus} free GPU(s) wanted, {len(taken)} of this node's {node_gpus} are free "
            f"(locks in {folder}); another process uses them outside the gpu slots"
        )


@contextmanager
def devices_for_run(gpus: int) -> Iterator[list[str] | None]:
    """The train stage's GPU slot and devices -> the device ids to train on (CUDA_VISIBLE_DEVICES
    values), or None (no slots: gpus_per_run 0, or no Prefect server; training uses the devices as before)."""
    if gpus <= 0 or not prefect_server_configured():
        yield None
        return
    import torch

    node_gpus = torch.cuda.device_count()
    if node_gpus < gpus:
        raise ConfigError(
            f"train.gpus_per_run: {gpus} GPU(s) wanted, this node ({socket.gethostname()}) has {node_gpus}"
        )
    with gpu_slot(gpus, node_gpus), claim_devices(gpus, visible_devices(node_gpus)) as devices:
        yield devices


def single_on(device_id: str):
    """A one-process Dist on the device CUDA_VISIBLE_DEVICES calls device_id."""
    import torch

    from components import distributed

    index = visible_devices(torch.cuda.device_count()).index(device_id)
    return distributed.Dist(device=torch.device(f"cuda:{index}"))


@contextmanager
def visible(devices: list[str] | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES for the processes started inside (the launched ranks): only the devices taken."""
    if not devices:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
