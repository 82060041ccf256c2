"""Serving and batch scoring (issue 21): `mlpipe serve-model` against `mlflow models serve` of the same
version, the server while @champion moves, and `mlpipe score` throughput and peak memory by input size.

    python -m benchmarks.serving [--requests 2000] [--repeats 3] [--concurrency 1] [--swap-requests 2000] [--poll 0.5]
                                 [--score-rows 200000 1000000] [--score-images 10000 50000] [--epochs 40]
                                 [--no-mlflow-serve] [--skip latency swap] [--score-set drift.enabled=false]
    python -m benchmarks.serving --smoke   (untrained CNNs registered directly, 40 requests, 3k CSV rows)

Models: the digits CNN trained by `mlpipe run` (tune and cv off, compress to int8 only) in a scratch
project, its fp32 and int8 versions; with --smoke, two untrained CNNs for the digits shape.
Load: a fixed count of POST /invocations at batch 1 (one digits row, JSON `inputs`), over keep-alive
connections from `--concurrency` client threads, on loopback; each server is a separate process, all
started first, then `--repeats` interleaved rounds (median and range over rounds).
Latency also times the fp32 champion served through its alias with `serve.consistent` (one registry read
per request, shared by concurrent ones) beside the same version served by number.
Swap: the same load while the alias moves fp32 -> int8 -> fp32 (every third of the requests), once with
`serve.consistent` and once polling only; each response's version header is checked against the alias
history: `not_champion_while_answered` counts responses from a version that was not champion at any
moment while the request was in flight (0 is the goal, and what consistent mode promises);
`wrong_version` those not even within the poll lag (poll interval + load) of a move.
Score: `mlpipe score` of a CSV of N digits rows (64 columns, whole-number pixels) and of a folder of N
digits PNGs, in a subprocess: its rows/s (the chunk loop), wall seconds and peak RSS (ru_maxrss), drift
check included unless --score-set drift.enabled=false.
Prints one JSON line per measurement."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, SMOKE_HELP, loadavg, mlpipe_env, run_mlpipe, scratch, sets, utc_now
from flows import servers

NAME = "mlpipe-digits"


def build_models(project: Path, smoke: bool, epochs: int) -> dict[str, str]:
    """-> {"fp32": version, "int8": version}, registered in the project's store (mlflow.db)."""
    if not smoke:
        overrides = ["tune.enabled=false", "cv.enabled=false", "compress.variants=[int8]", f"train.epochs={epochs}"]
        run_mlpipe(["run", *sets(overrides)], project, mlpipe_env(project))
        promo = json.loads((project / "reports" / "promotion.json").read_text())
        return {v: promo["variants"][v] for v in ("fp32", "int8") if v in promo["variants"]}
    import mlflow
    import torch

    from components import compress, models, registry, tracking
    from components.config import ModelConfig, TrackingConfig

    tracking.setup(TrackingConfig(), project)
    spec = models.model_args(ModelConfig(), (1, 8, 8), 10, "image")
    torch.manual_seed(0)
    model = models.build(spec)
    models.save(model, spec, [str(i) for i in range(10)], project / "model.pt")
    onnx = compress.export_onnx(model, spec, [str(i) for i in range(10)], project / "int8.onnx", "int8")
    out = {}
    for variant, f in (("fp32", project / "model.pt"), ("int8", onnx)):
        with mlflow.start_run():
            uri = registry.log_model(f, np.zeros((5, 1, 8, 8), np.float32), np.random.rand(200, 1, 8, 8) * 16)
        out[variant] = registry.register(uri, NAME, {"variant": variant})
    registry.set_champion(NAME, out["fp32"])
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return out


def set_champion(project: Path, version: str) -> None:
    from components import registry, tracking
    from components.config import TrackingConfig

    tracking.setup(TrackingConfig(), project)
    registry.set_champion(NAME, version)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def start(kind: str, project: Path, uri: str, poll: float, consistent: bool = True) -> servers.Server:
    """`mlpipe serve-model` or `mlflow models serve` (one worker, the local environment) of uri, healthy."""
    port, log = servers.free_port(), project / f"{kind}.log"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "PREFECT_HOME": str(project / ".prefect")}
    if kind == "mlpipe":
        cmd = [
            servers.tool("mlpipe"),
            "serve-model",
            "--model",
            uri,
            "--port",
            str(port),
            "--set",
            f"serve.poll_s={poll}",
            "--set",
            f"serve.consistent={str(consistent).lower()}",
        ]
    else:
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # it execs `uvicorn` by name
        cmd = [servers.tool("mlflow"), "models", "serve", "-m", uri, "--env-manager", "local", "-w", "1"]
        cmd += ["-h", servers.HOST, "-p", str(port)]
    pid = servers.launch(kind, cmd, log, env, cwd=project)
    return servers.wait_healthy(servers.Server(kind, f"http://{servers.HOST}:{port}", pid, log), "/ping", 180)


def load(url: str, body: bytes, n: int, concurrency: int, records: list | None = None) -> dict:
    """n POSTs of body to /invocations from `concurrency` threads, keep-alive -> figures and the records
    (start, end, HTTP status or 0 for a broken connection, version header), appended to `records` as they come."""
    host, port = url.removeprefix("http://").split(":")
    records = [] if records is None else records
    counter = iter(range(n))
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                rec = (t0, time.perf_counter(), r.status, r.getheader("X-Mlpipe-Model-Version"))
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                rec = (t0, time.perf_counter(), 0, None)
            with lock:
                records.append(rec)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([e - s for s, e, _, _ in records]) * 1000
    return {
        "requests": len(records),
        "failed": sum(st != 200 for _, _, st, _ in records),
        "req_s": round(len(records) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "records": records,
    }


def body_row() -> bytes:
    from sklearn.datasets import load_digits

    return json.dumps({"inputs": load_digits().data[:1].reshape(1, 1, 8, 8).tolist()}).encode()


def bench_latency(project, versions, args) -> None:
    """Every server (ours and MLflow's, per variant) started, then `--repeats` rounds in which each takes the
    same fixed load in turn (interleaved, so a change in machine load hits them all); a line per round and
    a summary line per server: median and range over rounds."""
    kinds = ["mlpipe"] + ([] if args.no_mlflow_serve else ["mlflow"])
    started = {}
    try:
        for variant, version in versions.items():
            for kind in kinds:
                if variant in args.variants:
                    started[(variant, kind)] = start(kind, project, f"models:/{NAME}/{version}", args.poll)
        # the champion (fp32) followed with serve.consistent: one alias read per request (shared when concurrent)
        set_champion(project, versions["fp32"])
        started[("fp32", "mlpipe@champion")] = start("mlpipe", project, f"models:/{NAME}@champion", args.poll)
        rounds: dict[tuple, list[dict]] = {key: [] for key in started}
        for r in range(args.repeats):
            for (variant, kind), srv in started.items():
                load(srv.url, body_row(), min(50, args.requests), args.concurrency)  # warm-up
                res = load(srv.url, body_row(), args.requests, args.concurrency)
                res.pop("records")
                rounds[(variant, kind)].append(res)
                head = {"bench": "latency", "server": SERVERS[kind], "variant": variant, "version": versions[variant]}
                print(
                    json.dumps(head | {"round": r, "concurrency": args.concurrency, **res, "loadavg": loadavg()}),
                    flush=True,
                )
    finally:
        servers.stop(*(srv.pid for srv in started.values()))
    for (variant, kind), res in rounds.items():
        summary = {"bench": "latency-summary", "server": SERVERS[kind], "variant": variant, "rounds": len(res)}
        for k in ("req_s", "p50_ms", "p99_ms"):
            values = [x[k] for x in res]
            summary[k] = {"median": round(float(np.median(values)), 3), "range": [min(values), max(values)]}
        summary["failed"] = sum(x["failed"] for x in res)
        print(json.dumps(summary), flush=True)


SERVERS = {
    "mlpipe": "mlpipe serve-model",
    "mlflow": "mlflow models serve",
    "mlpipe@champion": "mlpipe serve-model @champion, consistent",
}


def bench_swap(project, versions, args, consistent: bool) -> None:
    """The load while the alias moves fp32 -> int8 -> fp32 (after a third and two thirds of the requests)."""
    a, b = versions["fp32"], versions.get("int8", versions["fp32"])
    set_champion(project, a)
    srv = start("mlpipe", project, f"models:/{NAME}@champion", args.poll, consistent)
    moves = [(-np.inf, -np.inf, a)]  # (time before, time after the alias call, version)
    records: list = []
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(load(srv.url, body_row(), args.swap_requests, args.concurrency, records))
    )
    try:
        worker.start()
        for k, v in enumerate((b, a), 1):
            while worker.is_alive() and len(records) < k * args.swap_requests // 3:
                time.sleep(0.002)
            t0 = time.perf_counter()
            set_champion(project, v)
            moves.append((t0, time.perf_counter(), v))
        worker.join()
    finally:
        servers.stop(srv.pid)
    result.pop("records")
    allow = args.poll + 10.0  # the server looks every poll_s, then loads (seconds at most here)

    def champions(start_t: float, end_t: float) -> set:
        """Versions that were (or, within a move's uncertainty, may have been) champion at some moment in
        [start_t, end_t]: version i holds from moves[i] (before the call) to moves[i + 1] (after it)."""
        return {
            v
            for i, (t_before, _, v) in enumerate(moves)
            if t_before <= end_t and (i + 1 == len(moves) or moves[i + 1][1] >= start_t)
        }

    wrong, stale, behind, lag = 0, 0, 0, 0.0
    for start_t, end_t, _, version in records:
        if version not in champions(start_t - allow, end_t):
            wrong += 1  # not even a recent champion
        if version not in champions(start_t, end_t):
            stale += 1  # not the champion at any moment while the request was in flight
        i = max(k for k, (_, t_after, _) in enumerate(moves) if t_after <= start_t)  # the champion at the start
        if i > 0 and version == moves[i - 1][2] != moves[i][2]:
            behind += 1  # answered by the champion before: the server had not looked yet
            lag = max(lag, end_t - moves[i][1])
    out = {"bench": "swap", "consistent": consistent, "alias_moves": len(moves) - 1, **result, "wrong_version": wrong}
    out |= {"not_champion_while_answered": stale, "from_previous_champion": behind, "max_lag_s": round(lag, 3)}
    out |= {"poll_s": args.poll, "loadavg": loadavg()}
    print(json.dumps(out), flush=True)


WRAPPER = (  # runs a command -> its wall seconds and peak RSS (the largest child's ru_maxrss), on stderr
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); "
    "print(json.dumps({'wall_s': time.perf_counter() - t, 'maxrss_kb': "
    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr); sys.exit(r.returncode)"
)


def _score(project: Path, path: Path, args) -> dict:
    """`mlpipe score PATH` of the champion in a subprocess -> rows/s (its own figure), wall s, peak RSS MB."""
    out = project / "scored.parquet"
    cmd = [sys.executable, "-c", WRAPPER, servers.tool("mlpipe"), "score", str(path), "--out", str(out)]
    cmd += ["--model", f"models:/{NAME}@champion", *sets(args.score_sets)]
    r = subprocess.run(cmd, cwd=project, env=mlpipe_env(project), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"mlpipe score failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    usage = json.loads(r.stderr.strip().splitlines()[-1])
    out.unlink()
    return {
        "rows_s_scoring": float(r.stdout.split("(")[-1].split(" rows/s")[0]),
        "wall_s_command": round(usage["wall_s"], 2),
        "peak_rss_mb": round(usage["maxrss_kb"] / 1024, 1),
    }


def bench_score(project, args) -> None:
    """CSVs of n digits rows and folders of n digits PNGs, each scored by `mlpipe score`."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().data.astype(np.float32)
    for n in args.score_rows:
        path = project / f"rows-{n}.csv"
        idx = np.random.default_rng(n).integers(0, len(digits), n)
        pacsv.write_csv(pa.table({f"p{i}": digits[idx, i] for i in range(64)}), path)
        res = {"bench": "score", "input": "csv", "rows": n, "mb": round(path.stat().st_size / 2**20, 1)}
        print(json.dumps(res | _score(project, path, args) | {"loadavg": loadavg()}), flush=True)
        path.unlink()
    for n in args.score_images:
        folder = project / f"images-{n}"
        idx = np.random.default_rng(n).integers(0, len(digits), n)
        for k, i in enumerate(idx):
            sub = folder / str(k // 1000)  # 1000 files per sub-folder
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits[i].reshape(8, 8) * 15).astype(np.uint8)).save(sub / f"{k}.png")
        res = {"bench": "score", "input": "image folder", "rows": n}
        print(json.dumps(res | _score(project, folder, args) | {"loadavg": loadavg()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.serving", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=2000, help="timed requests per server, variant and round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the latency load")
    ap.add_argument("--concurrency", type=int, default=1, help="client threads (keep-alive connections)")
    ap.add_argument("--swap-requests", type=int, default=2000, help="requests while the alias moves twice")
    ap.add_argument("--poll", type=float, default=0.5, help="serve.poll_s of the server under test")
    ap.add_argument("--score-rows", type=int, nargs="*", default=[200_000, 1_000_000], help="CSV sizes scored")
    ap.add_argument("--score-images", type=int, nargs="*", default=[10_000, 50_000], help="image folder sizes scored")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs of the digits CNN")
    ap.add_argument("--no-mlflow-serve", action="store_true", help="skip the `mlflow models serve` baseline")
    ap.add_argument("--skip", nargs="*", default=[], choices=["latency", "swap"], help="phases left out")
    ap.add_argument("--variants", nargs="*", default=["fp32", "int8"], help="versions timed at batch 1")
    ap.add_argument("--score-set", dest="score_sets", action="append", default=[], help="--set for `mlpipe score`")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:  # one server per phase, no baseline, one small input without the drift check
        args.requests, args.swap_requests, args.score_rows, args.score_images, args.poll = 40, 60, [3_000], [], 0.2
        args.repeats = 1
        args.variants, args.no_mlflow_serve, args.score_sets = ["fp32"], True, ["drift.enabled=false"]
    print(f"# benchmarks.serving {utc_now()} loadavg {' '.join(loadavg())}", flush=True)
    with scratch("serving") as project:
        (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
        versions = build_models(project, args.smoke, args.epochs)
        print(json.dumps({"bench": "models", "versions": versions}), flush=True)
        if "latency" not in args.skip:
            bench_latency(project, versions, args)
        if "swap" not in args.skip:
            for consistent in (True,) if args.smoke else (True, False):  # smoke: the default mode only
                bench_swap(project, versions, args, consistent)
        bench_score(project, args)


if __name__ == "__main__":
    main()
