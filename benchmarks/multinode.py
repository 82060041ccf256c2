"""Two nodes x one rank against one node x two ranks, on this one machine (issue 24).

    python -m benchmarks.multinode [--repeats 3] [--epochs 10] [--smoke]

The same training job (digits, the default CNN unless --smoke, train.num_threads 1 per rank, gloo,
`python -m flows.stages.train_worker` under torchrun, MLflow to one scratch SQLite file) run as
- 1x2: one torchrun agent with two ranks (c10d rendezvous on 127.0.0.1), one project folder;
- 2x1: two torchrun agents, one rank each, each with its own project folder (a node's disk: its own copy
  of data/prepared) and models/ shared between them (a symlink to one folder), rendezvous on 127.0.0.1.
One host, so this measures what the multi-node path costs (a second agent, rendezvous over TCP, a
second process tree), not a speed-up. Layouts alternate within each repeat. Per repeat: wall time
from start to both agents' exit, the training time the job recorded (models/history.json), and the
test accuracy of the model it wrote; then the ratios 2x1 / 1x2 with their median and range."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from benchmarks.common import REPO, SMOKE_HELP, loadavg, median_ci, scratch, utc_now


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(folder: Path, epochs: int, smoke: bool) -> None:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["train"].update(epochs=epochs, num_threads=1, checkpoint_every=1)
    if smoke:
        cfg["model"].update(channels=[8], hidden=[16])
    (folder / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _node(folder: Path, prepared: Path, epochs: int, smoke: bool, models: Path | None) -> Path:
    (folder / "data").mkdir(parents=True)
    shutil.copytree(prepared, folder / "data" / "prepared")
    _params(folder, epochs, smoke)
    if models is not None:
        models.mkdir(parents=True, exist_ok=True)
        (folder / "models").symlink_to(models, target_is_directory=True)
    return folder


def run_layout(nodes: list[Path], ranks_per_node: int, tracking: str) -> float:
    """torchrun agents, one per node folder, all at once -> wall seconds until every one exited."""
    port, rid = _free_port(), uuid.uuid4().hex[:8]
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": tracking,
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "PYTHONPATH": str(REPO),
    }
    t0 = time.perf_counter()
    procs = []
    for root in nodes:
        cmd = [
            str(bindir / "torchrun"),
            f"--nnodes={len(nodes)}",
            f"--nproc-per-node={ranks_per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id={rid}",
            "--max-restarts=0",
            "--monitor-interval=0.5",
            "-m",
            "flows.stages.train_worker",
            "--params",
            "params.yaml",
            "--root",
            ".",
        ]
        log = open(root / "agent.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        logs = "\n".join((n / "agent.log").read_text()[-2000:] for n in nodes)
        sys.exit(f"torchrun exited {codes}:\n{logs}")
    return wall


def _result(root: Path, models_dir: Path) -> dict:
    from components import data, models, train

    hist = json.loads((models_dir / "history.json").read_text())
    ds = data.load_prepared(root / "data" / "prepared")
    model, _, _ = models.load(models_dir / "model.pt")
    acc = float((train.predict_logits(model, ds.X_test).argmax(1).numpy() == ds.y_test).mean())
    return {"train_s": round(sum(hist["train_seconds"]), 3), "test_accuracy": round(acc, 4)}


def one_repeat(base: Path, prepared: Path, epochs: int, smoke: bool, repeat: int) -> dict:
    out = {}
    layouts = ["1x2", "2x1"] if repeat % 2 == 0 else ["2x1", "1x2"]  # alternate which goes first
    for layout in layouts:
        where = base / f"r{repeat}-{layout}"
        if layout == "1x2":
            nodes = [_node(where / "node0", prepared, epochs, smoke, None)]
            models_dir = nodes[0] / "models"
        else:
            models_dir = where / "shared" / "models"
            nodes = [_node(where / f"node{i}", prepared, epochs, smoke, models_dir) for i in range(2)]
        wall = run_layout(nodes, 2 if layout == "1x2" else 1, f"sqlite:///{base / 'mlflow.db'}")  # created once
        out[layout] = {"wall_s": round(wall, 3), **_result(nodes[0], models_dir)}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multinode", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = p.parse_args(argv)
    if a.smoke:
        a.repeats, a.epochs = 1, 1
    from components import data
    from components.config import load_config

    started = utc_now()
    with scratch("multinode") as base:
        prepared = base / "prepared"
        cfg = load_config(None)
        data.save_prepared(data.ingest(cfg.data, cfg.seed), prepared)
        import mlflow

        mlflow.MlflowClient(f"sqlite:///{base / 'mlflow.db'}").search_experiments()  # the store's tables, once
        rows = []
        for r in range(a.repeats):
            row = {"bench": "multinode", "repeat": r, **one_repeat(base, prepared, a.epochs, a.smoke, r)}
            row["ratio_wall"] = round(row["2x1"]["wall_s"] / row["1x2"]["wall_s"], 3)
            row["ratio_train"] = round(row["2x1"]["train_s"] / row["1x2"]["train_s"], 3)
            row["loadavg"] = loadavg()
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"bench": "multinode-summary", "date": started, "repeats": a.repeats, "epochs": a.epochs}
    for key in ("ratio_wall", "ratio_train"):
        v = [r[key] for r in rows]
        summary[key] = {"median": statistics.median(v), "min": min(v), "max": max(v), "ci95": median_ci(v)}
    for layout in ("1x2", "2x1"):
        summary[f"accuracy_{layout}"] = [r[layout]["test_accuracy"] for r in rows]
        summary[f"wall_s_{layout}"] = [r[layout]["wall_s"] for r in rows]
    summary["command"] = "python -m benchmarks.multinode " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(summary), flush=True)
    w = summary["ratio_wall"]
    print(f"2 nodes x 1 rank / 1 node x 2 ranks, wall: median {w['median']:.3f}x (range {w['min']}-{w['max']})")


if __name__ == "__main__":
    main()
