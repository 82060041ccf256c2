"""Local servers, no Docker: `mlflow server` (SQLite in WAL mode + a local artifact folder),
`prefect server start`, and the serve process of the scheduled deployment, all on 127.0.0.1.

`mlpipe serve` starts them in the background, each in its own process group, with a pid file
and a log under .mlpipe/servers/; `mlpipe stop` stops them. The integration tests start real
servers on free ports through the same functions, and on Postgres for the shared setup."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from components.errors import MlpipeError
from flows.paths import Paths

HOST = "127.0.0.1"


class ServerError(MlpipeError):
    pass


@dataclass
class Server:
    name: str
    url: str
    pid: int
    log: Path

    def alive(self) -> bool:
        return _alive(self.pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    """A console script of this venv (mlflow, prefect, mlpipe), whatever PATH says."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def sqlite_wal(db: Path) -> str:
    """Create the SQLite file in WAL mode -> its SQLAlchemy URI. WAL is stored in the file, so it
    holds for the server's own connections: readers no longer wait for a writer (MLflow does
    not set it itself)."""
    db = Path(db).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        con.close()
    if mode.lower() != "wal":
        raise ServerError(f"{db}: SQLite refused WAL mode (journal_mode={mode}); put it on a local disk")
    return f"sqlite:///{db}"


def mlflow_command(port: int, backend: str, artifacts: str, auth: bool = False, workers: int = 2) -> list[str]:
    cmd = [
        tool("mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
    ]
    return cmd + (["--app-name", "basic-auth"] if auth else [])


def prefect_command(port: int, services: bool = True) -> list[str]:
    """services False: the API alone, without the scheduler and the other background loops."""
    return [tool("prefect"), "server", "start", "--host", HOST, "--port", str(port)] + (
        [] if services else ["--no-services"]
    )


def prefect_env(db_url: str, home: Path) -> dict[str, str]:
    """The Prefect server's database (sqlite+aiosqlite:///... or postgresql+asyncpg://...)."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
    }


def launch(name: str, cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> int:
    """Start a process in its own session (so stop() reaches its workers too) -> pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return proc.pid


def wait_healthy(server: Server, path: str, timeout: float = 120.0) -> Server:
    """Poll url+path until it answers (401 counts: the auth app is up); fail with the log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(
                f"{server.name} exited during start-up; last log lines of {server.log}:\n{tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as r:
                if r.status == 200:
                    return server
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    stop(server.pid)
    raise ServerError(
        f"{server.name} not healthy at {server.url}{path} after {timeout:.0f} s; see {server.log}:\n{tail(server.log)}"
    )


def launch_mlflow(
    state: Path,
    port: int,
    backend: str | None = None,
    artifacts: str | None = None,
    auth: bool = False,
    env: dict | None = None,
    workers: int = 2,
) -> Server:
    """backend None: SQLite in WAL mode under state/; artifacts None: state/mlartifacts. Not yet healthy."""
    state = Path(state)
    backend = backend or sqlite_wal(state / "mlflow.db")
    artifacts = artifacts or str((state / "mlartifacts").resolve())
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}  # GenAI job workers: 7 idle processes
    pid = launch(
        "mlflow", mlflow_command(port, backend, artifacts, auth, workers), state / "mlflow.log", env, cwd=state
    )
    return Server("mlflow", f"http://{HOST}:{port}", pid, state / "mlflow.log")


def launch_prefect(state: Path, port: int, db_url: str | None = None, services: bool = True) -> Server:
    """db_url None: SQLite under state/ (Prefect turns on WAL itself). Not yet healthy."""
    state = Path(state)
    db_url = db_url or f"sqlite+aiosqlite:///{(state / 'prefect.db').resolve()}"
    pid = launch(
        "prefect",
        prefect_command(port, services),
        state / "prefect.log",
        prefect_env(db_url, state / "prefect-home"),
        cwd=state,
    )
    return Server("prefect", f"http://{HOST}:{port}/api", pid, state / "prefect.log")


def start_both(mlflow: Server, prefect: Server, timeout: float = 120.0) -> tuple[Server, Server]:
    """Wait for two launched servers (they start in parallel); stop both if either fails."""
    try:
        return wait_healthy(mlflow, "/health", timeout), wait_healthy(prefect, "/health", timeout)
    except BaseException:
        stop(mlflow.pid, prefect.pid)
        raise


def start_mlflow(state: Path, port: int, **kwargs) -> Server:
    return wait_healthy(launch_mlflow(state, port, **kwargs), "/health")


def start_prefect(state: Path, port: int, db_url: str | None = None) -> Server:
    return wait_healthy(launch_prefect(state, port, db_url), "/health")


def tail(log: Path, n: int = 15) -> str:
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop(*pids: int, timeout: float = 15.0) -> None:
    """SIGTERM each process group (server + its workers) at once, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = []
        for pid in pids:
            try:
                os.killpg(pid, sig)
                left.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            left = [p for p in left if _alive(p)]
            time.sleep(0.2)
        if not left:
            return
        pids = tuple(left)


# --- `mlpipe serve` / `mlpipe stop`: background servers with pid files ------------------------


def write_pid(paths: Paths, server: Server) -> None:
    paths.server_pid(server.name).write_text(f"{server.pid}\n{server.url}\n")


def running(paths: Paths) -> dict[str, Server]:
    """The servers whose pid file points at a live process."""
    out = {}
    for f in sorted(paths.servers.glob("*.pid")):
        pid, url = (f.read_text().split("\n") + [""])[:2]
        s = Server(f.stem, url.strip(), int(pid), paths.server_log(f.stem))
        if s.alive():
            out[s.name] = s
    return out


def stop_all(paths: Paths) -> list[str]:
    """Stop every server with a pid file, all at once -> names stopped."""
    files = sorted(paths.servers.glob("*.pid"))
    pids = {f.stem: int(f.read_text().split("\n")[0]) for f in files}
    alive = {name: pid for name, pid in pids.items() if _alive(pid)}
    stop(*alive.values())
    for f in files:
        f.unlink()
    return list(alive)


def serve_all(
    paths: Paths,
    params: Path,
    mlflow_port: int = 5000,
    prefect_port: int = 4200,
    deploy: bool = True,
    model_port: int | None = None,
) -> list[Server]:
    """MLflow + Prefect servers, the deployment's serve process and, with a model_port, the model
    server (`mlpipe serve-model --wait`: it follows @champion on that MLflow server once there is one),
    in the background."""
    if running(paths):
        raise ServerError(f"servers already running ({', '.join(running(paths))}); run `mlpipe stop` first")
    state = paths.servers
    state.mkdir(parents=True, exist_ok=True)
    started: list[Server] = []
    try:
        for port in (mlflow_port, prefect_port, model_port):
            if port is not None:
                _port_free(port)
        started += [launch_mlflow(state, mlflow_port), launch_prefect(state, prefect_port)]
        for s in started:
            write_pid(paths, s)
        start_both(*started)
        if deploy:
            env = {"PREFECT_API_URL": started[1].url, "MLFLOW_TRACKING_URI": started[0].url}
            pid = launch(
                "deploy",
                [tool("mlpipe"), "deploy", "--params", str(params)],
                paths.server_log("deploy"),
                env,
                cwd=paths.root,
            )
            started.append(Server("deploy", started[1].url, pid, paths.server_log("deploy")))
            write_pid(paths, started[-1])
            from components.config import load_config

            wait_healthy(started[-1], f"/deployments/name/mlpipe/{load_config(params).schedule.name}")
        if model_port is not None:
            cmd = [tool("mlpipe"), "serve-model", "--wait", "--params", str(params), "--port", str(model_port)]
            env = {"MLFLOW_TRACKING_URI": started[0].url}
            pid = launch("model", cmd, paths.server_log("model"), env, cwd=paths.root)
            started.append(Server("model", f"http://{HOST}:{model_port}", pid, paths.server_log("model")))
            write_pid(paths, started[-1])
            wait_healthy(started[-1], "/version")  # /ping says 503 until the alias exists
    except BaseException:
        stop_all(paths)
        raise
    return started


def _port_free(port: int) -> None:
    with socket.socket() as s:
        if s.connect_ex((HOST, port)) == 0:
            raise ServerError(
                f"port {port} on {HOST} is already in use; pick another with --mlflow-port/--prefect-port/--model-port"
            )
