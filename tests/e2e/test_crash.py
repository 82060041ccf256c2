"""kill -9 mid-train, then kill -9 mid-register, then a run that completes: no run is left RUNNING,
every registered version carries a decision, and reports/promotion.json says what the registry says."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import BIN, STAGES_OFF, client_for, sets

pytestmark = pytest.mark.slow
SETS = sets(
    *STAGES_OFF,
    "train.epochs=40",
    "train.patience=40",
    "train.checkpoint_min_seconds=0",
    "promote.accuracy_floor=0.5",
)


def start(project, env, log) -> subprocess.Popen:
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the run
        return subprocess.Popen(
            [str(BIN / "mlpipe"), "run", *SETS],
            cwd=project,
            env=env,
            stdout=f,
            stderr=f,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def kill_when(proc: subprocess.Popen, log, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def versions_registered(db) -> bool:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("select count(*) from model_versions").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def test_kill_mid_train_and_mid_register_then_rerun(project):
    """Prefect's temporary API server (no PREFECT_API_URL), as `make run` uses: with a Prefect server
    the killed register's promotion slot comes back when its lease expires (flows/locks.py)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(project / ".prefect")}
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(k, None)
    checkpoints, logs = project / "models/checkpoints", [project / "run1.log", project / "run2.log"]
    kill_when(
        start(project, env, logs[0]),
        logs[0],
        lambda: checkpoints.exists() and any(checkpoints.glob("*.pt")),
        "checkpoint",
    )
    kill_when(
        start(project, env, logs[1]), logs[1], lambda: versions_registered(project / "mlflow.db"), "registered version"
    )

    client = client_for(project)
    exp = client.get_experiment_by_name("mlpipe")
    assert any(r.info.status == "RUNNING" for r in client.search_runs([exp.experiment_id]))  # what the kills left
    (undecided,) = client.search_model_versions("name='mlpipe-digits'")
    assert "mlpipe.decision" not in undecided.tags  # killed between registering and deciding

    r = subprocess.run(
        [str(BIN / "mlpipe"), "run", *SETS],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr[-3000:]

    runs = client.search_runs([exp.experiment_id])
    assert not [x.info.run_name for x in runs if x.info.status == "RUNNING"]
    killed = [x for x in runs if x.info.status == "KILLED"]
    assert {x.info.run_name for x in killed} >= {"train", "register"}
    assert all("was gone" in x.data.tags["mlpipe.ended"] for x in killed)
    trains = sorted((x for x in runs if x.info.run_name == "train"), key=lambda x: x.info.start_time)
    assert trains[1].data.metrics["resumed_from_epoch"] > 0  # the second run resumed the killed one's checkpoint

    versions = client.search_model_versions("name='mlpipe-digits'")
    assert all("mlpipe.decision" in v.tags for v in versions)
    champion = client.get_model_version_by_alias("mlpipe-digits", "champion")
    promotion = json.loads((project / "reports/promotion.json").read_text())
    assert promotion["champion"] == str(champion.version)
    assert (
        promotion["decision"] == client.get_model_version("mlpipe-digits", promotion["version"]).tags["mlpipe.decision"]
    )
