"""MLflow requests of one `mlpipe run` against a tracking server, counted from the server's access log.

    .venv/bin/python benchmarks/bench_tracking.py [--code DIR] [--auth] [--set KEY=VALUE ...]

Starts a local MLflow server (SQLite in WAL mode, as `mlpipe serve`), runs the pipeline once in a
fresh project folder with MLFLOW_TRACKING_URI pointing at it, and prints the pipeline's wall time
and the number of requests per endpoint. --code runs another checkout's flows/ and components/
(e.g. a `git worktree` of an earlier commit) with this venv, for a before/after comparison.
Defaults: a short but complete pipeline (tune 4 trials, 2-fold CV, 20 training epochs, no compression)."""
from __future__ import annotations

import argparse
import collections
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flows import servers  # noqa: E402

QUICK = ["train.epochs=20", "tune.n_trials=4", "tune.n_workers=1", "tune.epochs=[5,5]", "cv.folds=2",
         "compress.enabled=false"]
REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (/[^ ?"]*)')


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--code", default=str(REPO), help="checkout whose flows/ and components/ run")
    p.add_argument("--set", action="append", default=[], help="extra config overrides")
    p.add_argument("--auth", action="store_true", help="the server behind MLflow's basic-auth app (as infra's shared setup)")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    (work / "server").mkdir()
    auth_env, client_env = {}, {}
    if a.auth:
        ini = work / "server" / "auth.ini"
        ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{work / 'server' / 'auth.db'}\n"
                       "admin_username = admin\n")
        password = secrets.token_urlsafe(16)
        auth_env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        client_env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    srv = servers.launch_mlflow(work / "server", servers.free_port(), auth=a.auth, env=auth_env)
    try:
        servers.wait_healthy(srv, "/health", timeout=180)
        before = len(srv.log.read_text(errors="replace").splitlines())
        proj = work / "proj"
        proj.mkdir()
        shutil.copy(Path(a.code) / "params.yaml", proj)
        env = {**os.environ, "MLFLOW_TRACKING_URI": srv.url, "PYTHONPATH": str(a.code), "PREFECT_HOME": str(proj / ".prefect"), **client_env}
        sets = [x for kv in QUICK + a.set for x in ("--set", kv)]
        t0 = time.perf_counter()
        r = subprocess.run([str(Path(sys.executable).parent / "mlpipe"), "run", *sets], cwd=proj, env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"mlpipe run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        time.sleep(1)  # the access log is written by the server process
        lines = srv.log.read_text(errors="replace").splitlines()[before:]
        hits = collections.Counter(f"{m.group(1)} {re.sub(r'/[0-9a-f]{32}/', '/RUN/', m.group(2))}"
                                   for line in lines if (m := REQUEST.search(line)))
        artifact_puts = sum(n for k, n in hits.items() if k.startswith("PUT") and "/artifacts/" in k)
        print(f"code: {a.code}\nmlpipe run: {wall:.1f} s wall, {sum(hits.values())} requests "
              f"({artifact_puts} artifact uploads)")
        for k, n in sorted(hits.items(), key=lambda kv: -kv[1]):
            if not (k.startswith("PUT") and "/artifacts/" in k):
                print(f"{n:5d}  {k}")
        folders = collections.Counter(re.sub(r"^PUT /api/2.0/mlflow-artifacts/artifacts/(\d+/)?(RUN/|[^/]+/)?", "", k).rsplit("/", 1)[0]
                                      for k, n in hits.items() for _ in range(n) if k.startswith("PUT") and "/artifacts/" in k)
        print("artifact uploads by folder:", dict(folders.most_common()))
    finally:
        servers.stop(srv.pid)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
