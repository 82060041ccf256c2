"""Wall time and test accuracy of the default pipeline: the real `mlpipe run` CLI in a fresh project
folder and store each repeat (Prefect's temporary API server start-up included).

    python -m benchmarks.pipeline [--repeats 3] [--seeds 1 2] [--set KEY=VALUE ...]
    python -m benchmarks.pipeline --smoke     (one run: 1 training epoch; tune, cv, compress, baseline, explain off)

The project folders are scratch folders under $MLPIPE_BENCH_DIR (default /tmp), removed after."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics

from benchmarks.common import REPO, SMOKE_HELP, loadavg, mlpipe_env, run_mlpipe, scratch, sets
from flows.paths import Paths

SMOKE = [
    "train.epochs=1",
    "tune.enabled=false",
    "cv.enabled=false",
    "compress.enabled=false",
    "baseline.enabled=false",
    "explain.enabled=false",
]


def one_run(seed: int, overrides: list[str]) -> tuple[float, float]:
    """One `mlpipe run` in a fresh project -> (wall seconds, test accuracy)."""
    with scratch("pipeline") as root:
        paths = Paths(root)
        shutil.copy(REPO / "params.yaml", paths.root / "params.yaml")
        wall = run_mlpipe(["run", *sets([f"seed={seed}", *overrides])], paths.root, mlpipe_env(paths.root))
        return wall, json.loads(paths.eval_metrics.read_text())["test_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the seed-0 run (timing spread)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="extra seeds (accuracy spread)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}; one run with {' '.join(SMOKE)}")
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.seeds, args.sets = 1, [], SMOKE + args.sets
    print(f"overrides: {args.sets or 'none (default params.yaml)'}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, loadavg before: {loadavg()}")
    walls, accs = [], {}
    for i in range(args.repeats):
        w, a = one_run(0, args.sets)
        walls.append(w)
        accs.setdefault(0, []).append(a)
        print(f"seed 0 repeat {i}: wall {w:.1f} s, test accuracy {a:.4f}", flush=True)
    for s in args.seeds:
        w, a = one_run(s, args.sets)
        accs[s] = [a]
        print(f"seed {s}: wall {w:.1f} s, test accuracy {a:.4f}", flush=True)
    med = statistics.median(walls)
    print(f"wall (seed 0, n={len(walls)}): median {med:.1f} s, min {min(walls):.1f}, max {max(walls):.1f}")
    all_acc = [a for v in accs.values() for a in v]
    mean = statistics.mean(all_acc)
    print(f"test accuracy: seed 0 {accs[0]}, all seeds mean {mean:.4f} min {min(all_acc):.4f} max {max(all_acc):.4f}")
    print(f"loadavg after: {loadavg()}")


if __name__ == "__main__":
    main()
