"""The shared setup for real, without Docker: MLflow server on Postgres with the basic-auth app
(users also in Postgres), the Prefect server on Postgres, and the pipeline against both. The
machine's PostgreSQL (127.0.0.1:5432, trust auth) gets fresh databases, dropped afterwards."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from flows import servers
from tests.conftest import BIN, PG, REPO, STAGES_OFF, postgres_databases, sets

pytestmark = pytest.mark.slow

PG_MLFLOW = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # SQLAlchemy 2.1 would pick psycopg 3


def _query(db: str, sql: str) -> list[tuple]:
    import psycopg2

    con = psycopg2.connect(f"{PG}/{db}", connect_timeout=5)
    try:
        cur = con.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def fresh_dbs():
    with postgres_databases("mlflow", "auth", "prefect") as names:
        yield names


@pytest.fixture(scope="module")
def shared(fresh_dbs, tmp_path_factory):
    """MLflow (Postgres + basic auth) and Prefect (Postgres), started in parallel."""
    state = tmp_path_factory.mktemp("shared")
    password = secrets.token_urlsafe(16)  # made up per test run: nothing secret lives in the repo
    ini = state / "auth.ini"
    ini.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {PG_MLFLOW}/{fresh_dbs['auth']}\nadmin_username = admin\n"
    )
    auth_env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    mlflow = servers.launch_mlflow(
        state, servers.free_port(), backend=f"{PG_MLFLOW}/{fresh_dbs['mlflow']}", auth=True, env=auth_env
    )
    prefect = servers.launch_prefect(
        state, servers.free_port(), f"postgresql+asyncpg://postgres@127.0.0.1:5432/{fresh_dbs['prefect']}"
    )
    mlflow, prefect = servers.start_both(mlflow, prefect)
    yield {"mlflow": mlflow.url, "prefect": prefect.url, "password": password, "state": state}
    servers.stop(mlflow.pid, prefect.pid)


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_unauthenticated_request_gets_401(shared):
    url = shared["mlflow"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(url) == 401
    assert _get(url, ("admin", "wrong-" + shared["password"])) == 401
    assert _get(url, ("admin", shared["password"])) == 200


def test_pipeline_on_postgres_servers(shared, fresh_dbs, tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / ".prefect"),
        "MLFLOW_TRACKING_URI": shared["mlflow"],
        "PREFECT_API_URL": shared["prefect"],
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": shared["password"],
    }
    quick = sets("train.epochs=2", *STAGES_OFF)
    r = subprocess.run(
        [str(BIN / "mlpipe"), "run", *quick],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # the rows are in Postgres, where the servers put them
    runs = dict(_query(fresh_dbs["mlflow"], "select name, status from runs where name like 'pipeline-%'"))
    assert list(runs.values()) == ["FINISHED"]
    assert _query(fresh_dbs["mlflow"], "select count(*) from model_versions")[0][0] >= 1
    assert _query(fresh_dbs["mlflow"], "select alias from registered_model_aliases") == [("champion",)]
    flows = _query(fresh_dbs["prefect"], "select state_type from flow_run")
    assert [str(s) for (s,) in flows] in (["COMPLETED"], ["StateType.COMPLETED"])
    assert _query(fresh_dbs["auth"], "select username, is_admin from users") == [("admin", True)]
