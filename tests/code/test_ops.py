"""Operations code on tiny inputs: the schedule config, SQLite WAL, pid files, safe loading."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys

import pytest
import torch

from components import models
from components.config import load_config
from components.errors import ConfigError, MlpipeError
from flows import servers
from flows.paths import Paths
from tests.conftest import REPO


def test_schedule_defaults_from_params():
    s = load_config(REPO / "params.yaml").schedule
    assert (s.name, s.cron, s.timezone, s.work_pool) == ("nightly", "0 2 * * *", "UTC", None)


@pytest.mark.parametrize(
    "item, words",
    [
        ("schedule.cron=0 2 * *", ["schedule.cron", "5 fields", "'0 2 * *'"]),
        ("schedule.cron=0 2 * * * *", ["schedule.cron", "5 fields"]),
        ("schedule.timezone=Mars/Olympus", ["schedule.timezone", "IANA", "Mars/Olympus"]),
        ("schedule.name=", ["schedule.name"]),
    ],
)
def test_bad_schedule_names_key_and_value(item, words):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", [item])
    for w in words:
        assert w in str(e.value)


def test_schedule_cron_may_be_off():
    assert load_config(None, ["schedule.cron=null"]).schedule.cron is None


def test_sqlite_wal_is_set_in_the_file(tmp_path):
    uri = servers.sqlite_wal(tmp_path / "m.db")
    assert uri == f"sqlite:///{(tmp_path / 'm.db').resolve()}"
    con = sqlite3.connect(tmp_path / "m.db")  # a new connection sees the persistent mode
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_stop_all_stops_process_groups_and_clears_pid_files(tmp_path):
    paths = Paths(tmp_path)
    pid_dir = paths.servers
    pid_dir.mkdir(parents=True)
    # a parent with a child in its own session, like a server and its workers
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess,sys,time; "
            "subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)",
        ],
        start_new_session=True,
    )
    servers.write_pid(paths, servers.Server("mlflow", "http://127.0.0.1:1", proc.pid, pid_dir / "mlflow.log"))
    (pid_dir / "prefect.pid").write_text("999999999\nhttp://x\n")  # stale: that process is gone
    assert set(servers.running(Paths(tmp_path))) == {"mlflow"}
    assert servers.stop_all(paths) == ["mlflow"]
    proc.wait(timeout=5)
    assert not list(pid_dir.glob("*.pid"))
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # the whole group is gone, child included


def test_serve_refuses_a_busy_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(servers.ServerError, match=f"port {port}"):
            servers.serve_all(
                Paths(tmp_path), REPO / "params.yaml", mlflow_port=port, prefect_port=servers.free_port(), deploy=False
            )
    assert not servers.running(Paths(tmp_path))


class _Evil:
    """Unpickling this runs a shell command: what a poisoned model file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused(tmp_path, how):
    marker, path = tmp_path / "pwned", tmp_path / "model.pt"
    payload = {"format": models.FORMAT, "spec": _Evil(marker)}
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(MlpipeError, match="not a loadable mlpipe model"):
        models.load(path)
    assert not marker.exists(), "loading executed code from the file"
    # the payload is live: an unsafe load runs it
    pickle.loads(path.read_bytes()) if how == "pickle" else torch.load(path, weights_only=False)
    assert marker.exists()


def test_deploy_without_a_prefect_server_says_how_to_start_one(tmp_path):
    from tests.conftest import cli

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = cli("deploy", cwd=tmp_path, env={**env, "PREFECT_API_URL": ""}, timeout=120)
    assert r.returncode == 2 and "PREFECT_API_URL is not set" in r.stderr and "mlpipe serve" in r.stderr
