"""Two nodes over loopback: two torchrun agents, each its own process tree and its own project folder
(a node's disk), one rank each, c10d rendezvous on 127.0.0.1, running the train stage's worker.

What the nodes share is models/ (checkpoints, model file, history: one folder mounted on every node,
here a symlink in each node folder) and the MLflow store; data/prepared is a copy per node. The result
must equal the train stage's 2-rank single-node run, and a killed rank on one node must restart the
ranks of both nodes, which resume from the shared checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from components import models, train
from flows import servers
from tests.conftest import BIN, child_processes, cli, write_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = {"channels": [8], "hidden": [16], "dropout": 0.0}
# one thread per rank on every layout, so the two layouts do the same arithmetic; a checkpoint every epoch
TRAIN = {
    "epochs": 5,
    "batch_size": 64,
    "num_threads": 1,
    "checkpoint_min_seconds": 0,
    "keep_checkpoints": 3,
    "distributed": {"nproc_per_node": 2, "max_restarts": 2, "timeout": 60},
}


def _node(base: Path, name: str, prepared: Path, shared_models: Path | None) -> Path:
    root = base / name
    (root / "data").mkdir(parents=True)
    shutil.copytree(prepared, root / "data" / "prepared")
    write_params(root, model=MODEL, train=TRAIN)
    if shared_models is not None:
        shared_models.mkdir(parents=True, exist_ok=True)
        (root / "models").symlink_to(shared_models, target_is_directory=True)
    return root


def start_nodes(nodes: list[Path], tracking_uri: str, max_restarts: int = 2) -> list[subprocess.Popen]:
    """One torchrun agent per node folder, each in its own session (its own process tree)."""
    port, run_id = servers.free_port(), uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # restarted gloo ranks hang on the old store otherwise
    }
    procs = []
    for root in nodes:
        cmd = [
            str(BIN / "torchrun"),
            f"--nnodes={len(nodes)}",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id={run_id}",
            f"--max-restarts={max_restarts}",
            "--monitor-interval=0.5",
            "-m",
            "flows.stages.train_worker",
            "--params",
            "params.yaml",
            "--root",
            ".",
        ]
        log = open(root / "agent.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    return procs


def wait_nodes(procs: list[subprocess.Popen], nodes: list[Path], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        raise
    logs = "\n".join((n / "agent.log").read_text()[-2000:] for n in nodes)
    assert [p.returncode for p in procs] == [0, 0], logs


def _history(models_dir: Path) -> dict:
    return json.loads((models_dir / "history.json").read_text())


def _test_accuracy(root: Path, models_dir: Path) -> float:
    from components import data

    ds = data.load_prepared(root / "data" / "prepared")
    model, _, _ = models.load(models_dir / "model.pt")
    return float((train.predict_logits(model, ds.X_test).argmax(1).numpy() == ds.y_test).mean())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Digits prepared once, with a tuned best_params.json beside it (the ranks must apply it), and the
    train stage's 2-rank single-node run as the reference."""
    from components import data, tune
    from components.config import load_config

    base = tmp_path_factory.mktemp("multinode")
    prepared = base / "prepared"
    cfg = load_config(None)
    data.save_prepared(data.ingest(cfg.data, cfg.seed), prepared)
    meta = data.load_meta(prepared)
    best = {**tune.untuned(meta.content_hash), "tuned": True, "overrides": {"train.lr": 0.005}}
    ref = _node(base, "single", prepared, None)
    for root in [ref]:
        tune.write_best(root / "reports" / "tune" / "best_params.json", best)
    r = cli("stage", "train", cwd=ref)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"base": base, "prepared": prepared, "ref": ref, "best": best}


def _two_nodes(base: dict, name: str) -> tuple[list[Path], Path]:
    from components import tune

    shared = base["base"] / name / "shared"
    nodes = [_node(base["base"] / name, f"node{i}", base["prepared"], shared / "models") for i in range(2)]
    for root in nodes:
        tune.write_best(root / "reports" / "tune" / "best_params.json", base["best"])
    return nodes, shared


def test_two_nodes_equal_the_single_node_run(base):
    nodes, shared = _two_nodes(base, "clean")
    uri = f"sqlite:///{shared / 'mlflow.db'}"
    wait_nodes(start_nodes(nodes, uri), nodes)
    h2, h1 = _history(shared / "models"), _history(base["ref"] / "models")
    assert len(h2["epochs"]) == TRAIN["epochs"] and h2["resumed_from"] == 0
    for a, b in zip(h2["epochs"], h1["epochs"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    acc1, acc2 = _test_accuracy(nodes[0], base["ref"] / "models"), _test_accuracy(nodes[0], shared / "models")
    assert acc1 > 0.8 and abs(acc1 - acc2) <= 0.002, (acc1, acc2)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mlpipe").experiment_id])  # rank 0 only
    assert run.data.params["world_size"] == "2"
    assert run.data.params["train.lr"] == "0.005"  # best_params.json's value, not params.yaml's


def test_a_killed_rank_restarts_both_nodes_from_the_shared_checkpoint(base):
    nodes, shared = _two_nodes(base, "kill")
    procs = start_nodes(nodes, f"sqlite:///{shared / 'mlflow.db'}")
    folder = shared / "models" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (folder.is_dir() and any(p.name.startswith("epoch-0002.") for p in folder.iterdir())):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint of epoch 2"
        time.sleep(0.01)
    victims = child_processes(procs[1].pid, "flows.stages.train_worker")
    first = {p.pid for p in child_processes(procs[0].pid, "flows.stages.train_worker")}
    assert len(victims) == 1 and len(first) == 1
    victims[0].send_signal(signal.SIGKILL)
    seen = set(first)  # node 0's rank was not killed, yet its agent must restart it in the new round
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline + 120:
        seen |= {p.pid for p in child_processes(procs[0].pid, "flows.stages.train_worker")}
        time.sleep(0.05)
    wait_nodes(procs, nodes)
    assert seen - first, "node 0's rank was not restarted"
    h, ref = _history(shared / "models"), _history(base["ref"] / "models")
    assert 2 <= h["resumed_from"] < TRAIN["epochs"], "the restarted ranks did not resume from the shared checkpoint"
    assert len(h["epochs"]) == TRAIN["epochs"]
    assert h["epochs"][-1]["val_loss"] == pytest.approx(ref["epochs"][-1]["val_loss"], rel=1e-4)
