"""MLflow requests of one `mlpipe run` against a tracking server, counted from the server's access log.

    python -m benchmarks.tracking [--code DIR] [--auth] [--stage ingest] [--set KEY=VALUE ...]
    python -m benchmarks.tracking --smoke     (`mlpipe stage ingest` alone)

Starts a local MLflow server (SQLite in WAL mode, as `mlpipe serve`), runs the pipeline once in a
fresh project folder with MLFLOW_TRACKING_URI pointing at it, and prints the pipeline's wall time
and the number of requests per endpoint. --code runs another checkout's flows/ and components/
(e.g. a `git worktree` of an earlier commit) with this venv, for a before/after comparison.
Defaults: a short but complete pipeline (tune 4 trials, 2-fold CV, 20 training epochs, no compression);
--stage ingest counts the requests of that one stage instead (`mlpipe stage ingest`: the stage that
needs no earlier stage's files).
Server and project are scratch folders under $MLPIPE_BENCH_DIR (default /tmp), removed after."""

from __future__ import annotations

import argparse
import collections
import re
import secrets
import shutil
import time
from pathlib import Path

from benchmarks.common import REPO, SMOKE_HELP, mlpipe_env, run_mlpipe, scratch, sets
from flows import servers
from flows.paths import Paths

QUICK = [
    "train.epochs=20",
    "tune.n_trials=4",
    "tune.n_workers=1",
    "tune.epochs=[5,5]",
    "cv.folds=2",
    "compress.enabled=false",
]
REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (/[^ ?"]*)')


def count_requests(lines: list[str]) -> collections.Counter:
    """'METHOD /path' -> calls, from access-log lines; run ids in paths become RUN."""
    return collections.Counter(
        f"{m.group(1)} {re.sub(r'/[0-9a-f]{32}/', '/RUN/', m.group(2))}"
        for line in lines
        if (m := REQUEST.search(line))
    )


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tracking", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--code", default=str(REPO), help="checkout whose flows/ and components/ run")
    p.add_argument("--set", action="append", default=[], help="extra config overrides")
    p.add_argument(
        "--auth", action="store_true", help="the server behind MLflow's basic-auth app (as infra's shared setup)"
    )
    p.add_argument("--stage", choices=["ingest"], default=None, help="count one stage's requests, not a whole run's")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}; the same as --stage ingest")
    a = p.parse_args()
    if a.smoke:
        a.stage = "ingest"
    command = ["stage", a.stage] if a.stage else ["run"]
    overrides = a.set if a.stage else QUICK + a.set
    with scratch("tracking") as work:
        state = work / "server"
        state.mkdir()
        auth_env, client_env = {}, {}
        if a.auth:
            ini = state / "auth.ini"
            ini.write_text(
                f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{state / 'auth.db'}\n"
                "admin_username = admin\n"
            )
            password = secrets.token_urlsafe(16)
            auth_env = {
                "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            }
            client_env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        srv = servers.launch_mlflow(state, servers.free_port(), auth=a.auth, env=auth_env)
        try:
            servers.wait_healthy(srv, "/health", timeout=180)
            before = len(srv.log.read_text(errors="replace").splitlines())
            paths = Paths(work / "proj")
            paths.root.mkdir()
            shutil.copy(Path(a.code) / "params.yaml", paths.root)
            env = mlpipe_env(paths.root, MLFLOW_TRACKING_URI=srv.url, PYTHONPATH=str(a.code), **client_env)
            wall = run_mlpipe([*command, *sets(overrides)], paths.root, env)
            time.sleep(1)  # the access log is written by the server process
            hits = count_requests(srv.log.read_text(errors="replace").splitlines()[before:])
        finally:
            servers.stop(srv.pid)
    artifact_puts = sum(n for k, n in hits.items() if k.startswith("PUT") and "/artifacts/" in k)
    print(f"code: {a.code}\noverrides: {overrides}")
    total = sum(hits.values())
    print(f"mlpipe {' '.join(command)}: {wall:.1f} s wall, {total} requests ({artifact_puts} artifact uploads)")
    for k, n in sorted(hits.items(), key=lambda kv: -kv[1]):
        if not (k.startswith("PUT") and "/artifacts/" in k):
            print(f"{n:5d}  {k}")
    folders = collections.Counter(
        re.sub(r"^PUT /api/2.0/mlflow-artifacts/artifacts/(\d+/)?(RUN/|[^/]+/)?", "", k).rsplit("/", 1)[0]
        for k, n in hits.items()
        for _ in range(n)
        if k.startswith("PUT") and "/artifacts/" in k
    )
    print("artifact uploads by folder:", dict(folders.most_common()))


if __name__ == "__main__":
    main()
