"""Real local servers, as `mlpipe serve` starts them: mlflow server (SQLite in WAL mode), the
Prefect server, and the scheduled deployment's serve process, on free loopback ports.

Two pipeline runs at once against them; a triggered run of the deployment that fails; the
registered model's page in headless Chromium. `mlpipe stop` ends it all."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from flows import servers
from tests.conftest import BIN, REPO, STAGES_OFF, sets, write_params

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--virtual-time-budget=15000",
]
# the spine, shrunk: no tuning, CV or compression, 2 epochs
QUICK = sets("train.epochs=2", *STAGES_OFF)


def _env(stack: dict, folder: Path) -> dict:
    """What the README tells a user to export, plus a Prefect home of its own."""
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(folder / ".prefect"),
        "MLFLOW_TRACKING_URI": stack["mlflow"],
        "PREFECT_API_URL": stack["prefect"],
    }
    return env


def _api(url: str, body: dict | None = None) -> dict | list:
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`mlpipe serve` in a folder whose params make every run of its deployment fail validation
    (min_rows_per_class far above what digits has): the scheduled-failure case."""
    home = tmp_path_factory.mktemp("serve")
    write_params(home, validate={"min_rows_per_class": 100000}, train={"epochs": 2})
    mport, pport, sport = servers.free_port(), servers.free_port(), servers.free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(home / ".prefect"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run(
        [
            str(BIN / "mlpipe"),
            "serve",
            "--mlflow-port",
            str(mport),
            "--prefect-port",
            str(pport),
            "--model-port",
            str(sport),
        ],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    pids = {f.stem: int(f.read_text().split()[0]) for f in (home / ".mlpipe" / "servers").glob("*.pid")}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mport}" in started.stdout
        # the model server is up, following @champion on that MLflow server (none yet: it waits for one)
        with urllib.request.urlopen(f"http://127.0.0.1:{sport}/version", timeout=30) as r:
            assert json.loads(r.read())["following"] == "models:/mlpipe-digits@champion"
        yield {
            "home": home,
            "mlflow": f"http://127.0.0.1:{mport}",
            "prefect": f"http://127.0.0.1:{pport}/api",
            "pids": pids,
        }
    finally:
        stopped = subprocess.run(
            [str(BIN / "mlpipe"), "stop"], cwd=home, env=env, capture_output=True, text=True, timeout=120
        )
        for pid in pids.values():
            if servers._alive(pid):  # leave nothing behind even when the assertion below fails
                servers.stop(pid)
    assert stopped.returncode == 0 and set(pids) == {"mlflow", "prefect", "deploy", "model"}, (
        stopped.stdout + stopped.stderr
    )
    assert "deploy" in stopped.stdout and not list((home / ".mlpipe" / "servers").glob("*.pid"))


@pytest.fixture(scope="module")
def two_runs(stack, tmp_path_factory):
    """Two `mlpipe run` started at once, in two project folders with different seeds (so two
    different models: no de-duplication), against the same servers."""
    procs = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"run{seed}")
        shutil.copy(REPO / "params.yaml", folder / "params.yaml")
        procs.append(
            (
                folder,
                subprocess.Popen(
                    [str(BIN / "mlpipe"), "run", *QUICK, "--set", f"seed={seed}"],
                    cwd=folder,
                    env=_env(stack, folder),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    stdin=subprocess.DEVNULL,
                ),
            )
        )
    results = []
    for folder, p in procs:
        output, _ = p.communicate(timeout=600)
        results.append(
            {
                "folder": folder,
                "rc": p.returncode,
                "output": output,
                "promotion": json.loads((folder / "reports" / "promotion.json").read_text())
                if p.returncode == 0
                else None,
            }
        )
    return results


def _client(stack):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack["mlflow"], registry_uri=stack["mlflow"])


def test_two_flows_at_once_both_finish_fully_tracked(stack, two_runs):
    for r in two_runs:
        assert r["rc"] == 0, r["output"][-3000:]
        assert "database is locked" not in r["output"].lower()
    client = _client(stack)
    exp = client.get_experiment_by_name("mlpipe")
    parents = client.search_runs([exp.experiment_id], "tags.`mlpipe.prefect_flow_run_id` != 'none'")
    parents = [p for p in parents if "mlflow.parentRunId" not in p.data.tags]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    for p in parents:
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")
        assert {"ingest", "validate", "augment", "train", "evaluate", "register"} <= {
            c.data.tags["mlpipe.stage"] for c in children
        }
        assert all(c.info.status == "FINISHED" for c in children)
        assert "test_accuracy" in p.data.metrics
    flow_runs = _api(
        stack["prefect"] + "/flow_runs/filter",
        {"flow_runs": {"id": {"any_": [p.data.tags["mlpipe.prefect_flow_run_id"] for p in parents]}}},
    )
    assert sorted(f["state_type"] for f in flow_runs) == ["COMPLETED", "COMPLETED"]


def test_promotion_serialized_and_champion_passed_its_gate(stack, two_runs):
    """Both registered under the Prefect promotion limit: the second saw the first's outcome."""
    client = _client(stack)
    name = two_runs[0]["promotion"]["model_name"]
    gated = [v for v in client.search_model_versions(f"name='{name}'") if "mlpipe.decision" in v.tags]
    first, second = sorted(gated, key=lambda v: int(v.version))  # one gated version per run
    assert first.tags["mlpipe.champion_before"] == "none"
    expected = first.version if first.tags["mlpipe.decision"] == "promoted" else "none"
    assert second.tags["mlpipe.champion_before"] == expected  # a race would show 'none' twice
    champ = client.get_model_version_by_alias(name, "champion")
    assert champ.tags["mlpipe.decision"] == "promoted"
    assert float(champ.tags["test_accuracy"]) >= 0.9
    limit = _api(stack["prefect"] + "/v2/concurrency_limits/mlpipe-promotion")
    assert limit["limit"] == 1 and limit["active_slots"] == 0


def test_run_artifact_links_the_mlflow_run(stack, two_runs):
    arts = _api(stack["prefect"] + "/artifacts/filter", {"artifacts": {"key": {"any_": ["mlpipe-promotion"]}}})
    assert len(arts) == 2
    for a in arts:
        assert re.search(re.escape(stack["mlflow"]) + r"/#/experiments/\d+/runs/[0-9a-f]{32}", a["data"])
        assert "promoted" in a["data"]


def test_failed_scheduled_run_leaves_champion_and_shows_why(stack, two_runs):
    client = _client(stack)
    name = two_runs[0]["promotion"]["model_name"]
    before = client.get_model_version_by_alias(name, "champion").version
    n_versions = len(client.search_model_versions(f"name='{name}'"))
    dep = _api(stack["prefect"] + "/deployments/name/mlpipe/nightly")
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 2 * * *"]
    assert dep["schedules"][0]["schedule"]["timezone"] == "UTC"
    trig = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "mlpipe/nightly"],
        cwd=stack["home"],
        env=_env(stack, stack["home"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert trig.returncode == 0, trig.stdout + trig.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", trig.stdout).group(1)
    deadline, state = time.monotonic() + 300, {}
    while time.monotonic() < deadline:
        state = _api(f"{stack['prefect']}/flow_runs/{run_id}")
        if state["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    assert state["state_type"] == "FAILED", state
    assert "min_rows_per_class" in state["state"]["message"] or "validation" in state["state"]["message"].lower()
    exp = client.get_experiment_by_name("mlpipe")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`mlpipe.prefect_flow_run_id` = '{run_id}'")
    assert parent.info.status == "FAILED" and "ValidationFailed" in parent.data.tags["mlpipe.error"]
    assert client.get_model_version_by_alias(name, "champion").version == before
    assert len(client.search_model_versions(f"name='{name}'")) == n_versions  # nothing registered


def _chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *mode, url], capture_output=True, text=True, timeout=120
    )


def test_mlflow_ui_shows_champion_in_a_browser(stack, two_runs, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} missing and could not be installed (`make test` runs apt-get install chromium as root)"
        )
    champ = _client(stack).get_model_version_by_alias(two_runs[0]["promotion"]["model_name"], "champion")
    url = f"{stack['mlflow']}/#/models/{champ.name}"
    dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    rows = dom.stdout.split('role="row"')
    (row,) = [r for r in rows if f'href="#/models/{champ.name}/versions/{champ.version}"' in r]
    assert f"Version {champ.version}" in row
    assert re.search(r"@(&nbsp;|\s|\xa0)champion", row), "the champion alias is not shown on its version's row"
    others = [r for r in rows if "/versions/" in r and r is not row]
    assert others and not any(re.search(r"@(&nbsp;|\s|\xa0)champion", r) for r in others)
    shot = tmp_path / "mlflow-registered-model.png"
    res = _chromium(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.stat().st_size > 20_000, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deploy_to_a_process_work_pool(stack, tmp_path):
    """`mlpipe deploy` with schedule.work_pool registers the deployment and returns."""
    write_params(
        tmp_path,
        schedule={"name": "pooled", "cron": "30 3 * * 1-5", "timezone": "Europe/Berlin", "work_pool": "mlpipe-test"},
    )
    env = _env(stack, tmp_path)
    pool = subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", "mlpipe-test", "--type", "process"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    r = subprocess.run(
        [str(BIN / "mlpipe"), "deploy", *QUICK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "prefect worker start --pool mlpipe-test" in r.stdout
    dep = _api(stack["prefect"] + "/deployments/name/mlpipe/pooled")
    assert dep["work_pool_name"] == "mlpipe-test" and dep["entrypoint"] == "flows/pipeline.py:pipeline"
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in dep["schedules"]] == [
        ("30 3 * * 1-5", "Europe/Berlin")
    ]
    assert dep["parameters"]["overrides"] == [q.removeprefix("--set=") for q in QUICK]
    assert dep["parameters"]["root"] == str(tmp_path.resolve())
