"""The local server stack (issue 6): MLflow's server on SQLite with WAL vs the default rollback
journal under concurrent writers, and the start-up time of `mlflow server` as `mlpipe serve`
launches it (flows.servers).

    python -m benchmarks.stack [--writers 4] [--runs 3] [--metrics 150] [--repeats 3]
    python -m benchmarks.stack [--server-workers 2]
    python -m benchmarks.stack --smoke     (2 writers x 1 run x 5 calls, 1 repeat, 1 server worker)

Each writer process creates `--runs` runs and logs `--metrics` single metrics into each (one
REST call each, like a training loop's per-epoch logging). Prints start-up seconds, wall seconds
per trial and failed calls (e.g. 'database is locked' surfacing as HTTP 500 after retries).
The servers' files go to a scratch folder under $MLPIPE_BENCH_DIR (default /tmp)."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from multiprocessing import Pool

from benchmarks.common import SMOKE_HELP, loadavg, scratch
from flows import servers


def _writer(args) -> int:
    url, n_runs, n_metrics, seed = args
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # count failures instead of hiding them
    from mlflow.tracking import MlflowClient

    client, failed = MlflowClient(tracking_uri=url), 0
    exp = client.get_experiment_by_name("bench").experiment_id
    for r in range(n_runs):
        run = client.create_run(exp, run_name=f"w{seed}-{r}")
        for step in range(n_metrics):
            try:
                client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
            except Exception:  # noqa: BLE001 - counted: the point of the benchmark
                failed += 1
        client.set_terminated(run.info.run_id)
    return failed


def trial(wal: bool, writers: int, runs: int, metrics: int, server_workers: int) -> tuple[float, float, int]:
    from mlflow.tracking import MlflowClient

    with scratch("stack") as state:
        backend = servers.sqlite_wal(state / "mlflow.db") if wal else f"sqlite:///{state / 'mlflow.db'}"
        t0 = time.perf_counter()
        srv = servers.start_mlflow(state, servers.free_port(), backend=backend, workers=server_workers)
        started = time.perf_counter() - t0
        try:
            MlflowClient(tracking_uri=srv.url).create_experiment("bench")
            t0 = time.perf_counter()
            with Pool(writers) as pool:
                failed = sum(pool.map(_writer, [(srv.url, runs, metrics, i) for i in range(writers)]))
            return started, time.perf_counter() - t0, failed
        finally:
            servers.stop(srv.pid)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--metrics", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--server-workers", type=int, default=2, help="the server's worker processes (`mlpipe serve`: 2)")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = ap.parse_args()
    if a.smoke:
        a.writers, a.runs, a.metrics, a.repeats, a.server_workers = 2, 1, 5, 1, 1
    print(f"loadavg at start: {loadavg()}")
    print(
        f"{a.writers} writers x {a.runs} runs x {a.metrics} log_metric calls, {a.repeats} repeats, alternating; "
        f"{a.server_workers} server workers"
    )
    res = {True: [], False: []}
    for _ in range(a.repeats):
        for wal in (True, False):
            res[wal].append(trial(wal, a.writers, a.runs, a.metrics, a.server_workers))
            s, w, f = res[wal][-1]
            print(
                f"  {'WAL   ' if wal else 'delete'} start {s:5.1f} s  writes {w:6.1f} s  failed calls {f}", flush=True
            )
    for wal in (True, False):
        w = [r[1] for r in res[wal]]
        start = statistics.median(r[0] for r in res[wal])
        print(
            f"{'WAL   ' if wal else 'delete'}: writes median {statistics.median(w):.1f} s (min {min(w):.1f}, "
            f"max {max(w):.1f}); failed calls {sum(r[2] for r in res[wal])}; server start median {start:.1f} s"
        )
    ratio = statistics.median(r[1] for r in res[False]) / statistics.median(r[1] for r in res[True])
    print(f"rollback-journal / WAL write time (medians): {ratio:.2f}x")
    print(f"loadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
