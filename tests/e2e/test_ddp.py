"""The train stage on real processes: 2-rank gloo DDP under torch's elastic agent against 1 rank,
a killed rank restarted and resumed, and `kill -9` of the stage then the same command again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from components import models, train
from components.config import load_config
from components.distributed import single
from flows.paths import Paths
from flows.stages import train_worker
from tests.conftest import BIN, child_processes, cli, write_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SMALL = {
    "model": {"channels": [8, 16], "hidden": [32], "dropout": 0.1},
    # a checkpoint every epoch, however short: the kill tests wait for epoch 2's file
    "train": {
        "epochs": 6,
        "batch_size": 64,
        "patience": 50,
        "num_threads": 0,
        "keep_checkpoints": 3,
        "checkpoint_min_seconds": 0,
    },
}
TWO = {"nproc_per_node": 2, "max_restarts": 2, "timeout": 60}


def _params(folder: Path, ranks: int) -> Path:
    train_cfg = {**SMALL["train"], "distributed": {**TWO, "nproc_per_node": ranks}}
    return write_params(folder, model=SMALL["model"], train=train_cfg)


def _history(root: Path) -> dict:
    return json.loads((root / "models" / "history.json").read_text())


def _test_accuracy(root: Path) -> float:
    from components import data

    ds = data.load_prepared(root / "data" / "prepared")
    model, _, _ = models.load(root / "models" / "model.pt")
    return float((train.predict_logits(model, ds.X_test).argmax(1).numpy() == ds.y_test).mean())


def _project(base: Path, name: str, prepared: Path, ranks: int) -> Path:
    root = base / name
    (root / "data").mkdir(parents=True)
    shutil.copytree(prepared, root / "data" / "prepared")
    _params(root, ranks)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Digits prepared once; the 1-rank reference (in this process) and an uninterrupted 2-rank stage."""
    base = tmp_path_factory.mktemp("ddp")
    from components import data

    prepared = base / "prepared"
    cfg = load_config(None)
    data.save_prepared(data.ingest(cfg.data, cfg.seed), prepared)

    one = _project(base, "one", prepared, 1)
    train_worker.train_model(load_config(one / "params.yaml"), Paths(one), single(), progress=False)
    two = _project(base, "two", prepared, 2)
    r = cli("stage", "train", cwd=two)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"base": base, "prepared": prepared, "one": one, "two": two}


def test_two_rank_ddp_matches_one_rank_and_logs_one_run(runs):
    h2 = _history(runs["two"])
    assert len(h2["epochs"]) == SMALL["train"]["epochs"] and h2["resumed_from"] == 0
    acc1, acc2 = _test_accuracy(runs["one"]), _test_accuracy(runs["two"])
    assert acc1 > 0.85 and abs(acc1 - acc2) <= 0.03, (acc1, acc2)

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{runs['two'] / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("mlpipe")
    train_runs = client.search_runs([exp.experiment_id], "tags.`mlpipe.stage` = 'train'")
    assert len(train_runs) == 1  # one run per training, never one per rank
    run = train_runs[0]
    assert run.data.params["world_size"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == list(range(1, SMALL["train"]["epochs"] + 1))  # rank 0 only: no duplicates
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(h2["epochs"][h2["best_epoch"] - 1]["val_accuracy"])


def _start_train(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(root / ".prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [str(BIN / "mlpipe"), "stage", "train"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _wait_for_epoch(root: Path, proc: subprocess.Popen, epoch: int, timeout: float = 120) -> None:
    folder = root / "models" / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and any(p.name.startswith(f"epoch-{epoch:04d}.") for p in folder.iterdir()):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint for epoch {epoch} within {timeout} s")


def test_killed_rank_is_restarted_and_resumes_to_the_same_result(runs):
    root = _project(runs["base"], "killrank", runs["prepared"], 2)
    proc = _start_train(root)
    _wait_for_epoch(root, proc, 2)
    ranks = child_processes(proc.pid, "flows.stages.train_worker")
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    victim.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    h, ref = _history(root), _history(runs["two"])
    assert 2 <= h["resumed_from"] < SMALL["train"]["epochs"], "the restart did not resume from a checkpoint"
    assert h["epochs"][-1]["val_accuracy"] == pytest.approx(ref["epochs"][-1]["val_accuracy"], abs=0.002)
    assert abs(_test_accuracy(root) - _test_accuracy(runs["two"])) <= 0.002


def test_kill_9_of_the_stage_then_the_same_command_resumes(runs):
    root = _project(runs["base"], "kill9", runs["prepared"], 1)
    proc = _start_train(root)
    _wait_for_epoch(root, proc, 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "models" / "model.pt").exists()
    r = cli("stage", "train", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    h, ref = _history(root), _history(runs["one"])
    assert h["resumed_from"] >= 2
    assert h["epochs"][-1]["val_accuracy"] == pytest.approx(ref["epochs"][-1]["val_accuracy"], abs=0.002)
    assert abs(_test_accuracy(root) - _test_accuracy(runs["one"])) <= 0.002


def _silent_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from components import distributed

    d = distributed.init(timeout_s=3)
    if rank == 1:
        time.sleep(30)  # stops responding
        return
    t0 = time.monotonic()
    try:
        distributed.all_sum([1.0], d)
        Path(out).write_text("returned")
    except Exception as e:  # noqa: BLE001 - the point is that it raises instead of hanging
        Path(out).write_text(f"raised after {time.monotonic() - t0:.1f}s: {type(e).__name__}")


def test_a_silent_rank_fails_the_collective_within_the_timeout(tmp_path):
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_silent_rank, args=(r, port, str(out)), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    procs[0].join(60)
    for p in procs:
        p.kill()
    text = out.read_text()
    assert text.startswith("raised"), text
    assert float(text.split()[2].rstrip("s:")) < 15
