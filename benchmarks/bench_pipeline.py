"""Wall time and test accuracy of the default pipeline (`mlpipe run`, real CLI, fresh project
and store each repeat). Usage: python benchmarks/bench_pipeline.py [--repeats 3] [--seeds 0 1 2]"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def one_run(seed: int, sets: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        shutil.copy(REPO / "params.yaml", d / "params.yaml")
        env = {**os.environ, "PREFECT_HOME": str(d / ".prefect")}
        env.pop("MLFLOW_TRACKING_URI", None)
        t = time.perf_counter()
        r = subprocess.run([str(BIN / "mlpipe"), "run", "--set", f"seed={seed}", *[a for kv in sets for a in ("--set", kv)]], cwd=d, env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            sys.exit(f"mlpipe run failed:\n{r.stderr[-3000:]}")
        acc = json.loads((d / "reports/eval/metrics.json").read_text())["test_accuracy"]
        return wall, acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the seed-0 run (timing spread)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="extra seeds (accuracy spread)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    args = ap.parse_args()
    print(f"overrides: {args.sets or 'none (default params.yaml)'}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, loadavg before: {open('/proc/loadavg').read().split()[:3]}")
    walls, accs = [], {}
    for i in range(args.repeats):
        w, a = one_run(0, args.sets)
        walls.append(w)
        accs.setdefault(0, []).append(a)
        print(f"seed 0 repeat {i}: wall {w:.1f} s, test accuracy {a:.4f}")
    for s in args.seeds:
        w, a = one_run(s, args.sets)
        accs[s] = [a]
        print(f"seed {s}: wall {w:.1f} s, test accuracy {a:.4f}")
    print(f"wall (seed 0, n={len(walls)}): median {statistics.median(walls):.1f} s, min {min(walls):.1f}, max {max(walls):.1f}")
    all_acc = [a for v in accs.values() for a in v]
    print(f"test accuracy: seed 0 {accs[0]}, all seeds mean {statistics.mean(all_acc):.4f} min {min(all_acc):.4f} max {max(all_acc):.4f}")
    print(f"loadavg after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
