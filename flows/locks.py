"""Locks that span processes and machines.

One pipeline run per project folder (project_lock): `mlpipe run`, scheduled runs and
`mlpipe stage` (so `dvc repro`) share the files under data/, models/ and reports/, so a second
run waits for the first, or fails at once with --no-wait. The lock is an flock, so a holder that
dies releases it and the next run takes it over.

Promotion is serialized across machines by a Prefect global concurrency limit when a Prefect
server is configured (promotion_slot), on top of registry.promotion_lock on one machine."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

from components.errors import MlpipeError
from flows.paths import Paths

PROMOTION_LIMIT = "mlpipe-promotion"  # global concurrency limit, 1 slot: one gate + alias move at a time


def prefect_server_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def ensure_promotion_limit() -> None:
    """Create the 1-slot limit once; a concurrent creator winning the race is fine."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(PROMOTION_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=PROMOTION_LIMIT, limit=1))
            except ObjectAlreadyExists:
                pass


@contextmanager
def promotion_slot(timeout_s: float = 1800):
    """Hold the cluster-wide promotion slot while registering (no-op without a Prefect server:
    the ephemeral API is per process, the file lock covers one machine). The slot is a lease the
    holder renews: a holder killed with kill -9 loses it within a minute (the Prefect server's
    repossessor service), not after Prefect's default 5 minutes."""
    if not prefect_server_configured():
        yield
        return
    from prefect.concurrency.sync import concurrency

    ensure_promotion_limit()
    with concurrency(PROMOTION_LIMIT, occupy=1, timeout_seconds=timeout_s, strict=True, lease_duration=60):
        yield


class ProjectBusy(MlpipeError):
    pass


def _holder(text: str) -> str:
    try:
        h = json.loads(text)
    except json.JSONDecodeError:
        return "another mlpipe process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started"]))
    return f"`{h['command']}` (pid {h['pid']} on {h['host']}, since {started})"


@contextmanager
def project_lock(paths: Paths, command: str, wait: bool = True, say: Callable[[str], None] = print):
    """Hold the project folder's run lock (.mlpipe/run.lock) for a pipeline run or a stage. Busy:
    wait, saying for whom, or (wait False) raise ProjectBusy naming the holder."""
    path = paths.run_lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _holder(f.read())
            if not wait:
                raise ProjectBusy(
                    f"{paths.root} is in use by {holder}; wait for it, or run without --no-wait to queue behind it"
                ) from None
            say(f"waiting for {holder} to finish: one run at a time in {paths.root}")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        left = f.read()
        if left:  # the previous holder died without releasing: the kernel released its flock
            say(f"taking over the run lock of {_holder(left)}, which ended without releasing it")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(me))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


def command_line() -> str:
    return " ".join(["mlpipe", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("mlpipe") else "mlpipe run"
