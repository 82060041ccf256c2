"""Time budgets (issue 20): `mlpipe run --budget B` with the default params.yaml on generated 32x32
RGB images (benchmarks/synth.py), a generated 40-feature CSV and digits, each in a fresh project:
wall time of the command vs the budget (start-up included), and test accuracy vs the same run with
a longer budget (`--long`, default 2x B), with the plan's degradations.

    python -m benchmarks.budget [--budget 3m] [--long 6m] [--images 5000] [--rows 50000] [--datasets images table]
    python -m benchmarks.budget --budget 15m --long 60m --images 20000 --rows 50000     # the issue's full measurement
    python -m benchmarks.budget --smoke      (200 16x16 images, one 45 s budget, no long run)

One JSON line per run, then a markdown table. The figures depend on the machine's load: the
planner measures the model's epoch time at start and plans with what it sees."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import synth
from benchmarks.common import SMOKE_HELP, loadavg, mlpipe_env, scratch, utc_now
from components.budget import parse_duration


def source(dataset: str, data: Path, images: int, rows: int, size: int) -> list[str]:
    """The --set overrides that point a default run at the dataset (generated once under data/)."""
    if dataset == "images":
        folder = synth.images(data / f"images{images}-{size}", images, size)
        return [f"data.source=imagefolder:{folder}", f"data.image_size=[{size},{size}]", "data.grayscale=false"]
    if dataset == "table":
        path = data / f"table{rows}.csv"
        if not path.exists():
            synth.table(path, rows)
        return [f"data.source=csv:{path}"]
    return []  # digits: the default source


def one_run(dataset: str, budget: str, overrides: list[str]) -> dict:
    """`mlpipe run --budget B` in a fresh project -> wall seconds, test accuracy, the plan's degradations."""
    with scratch("budget") as project:
        (project / "params.yaml").write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
        args = ["run", "--budget", budget, *[x for kv in overrides for x in ("--set", kv)]]
        t0 = time.perf_counter()
        r = subprocess.run(
            [str(Path(sys.executable).parent / "mlpipe"), *args],
            cwd=project,
            env=mlpipe_env(project),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"mlpipe {' '.join(args)} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        metrics = json.loads((project / "reports/eval/metrics.json").read_text())
        record = json.loads((project / ".mlpipe/budget.json").read_text())
        promotion = json.loads((project / "reports/promotion.json").read_text())
        degraded = []
        for d in record["decisions"].values():
            degraded += [x for x in d["degradations"] if x not in degraded]
        return {
            "dataset": dataset,
            "budget_s": parse_duration(budget),
            "wall_s": round(wall, 1),
            "wall_over_budget": round(wall / parse_duration(budget), 3),
            "spent_s": record["spent_s"],
            "test_accuracy": metrics["test_accuracy"],
            "promoted": promotion["promoted"],
            "epoch_s": round(record["costs"]["epoch_s"], 3) if record.get("costs") else None,
            "degradations": degraded,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="3m", help="the budget measured (90s, 3m, 1h)")
    ap.add_argument("--long", default=None, help="the longer budget compared with (default 2x --budget)")
    ap.add_argument("--images", type=int, default=5000, help="generated images")
    ap.add_argument("--size", type=int, default=32, help="image side, pixels")
    ap.add_argument("--rows", type=int, default=50_000, help="generated CSV rows")
    ap.add_argument(
        "--datasets", nargs="+", default=["images", "table", "digits"], choices=["images", "table", "digits"]
    )
    ap.add_argument("--data", type=Path, default=None, help="where generated data is kept (default: a scratch folder)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra overrides for every run")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = ap.parse_args(argv)
    budgets = [a.budget, a.long or f"{2 * parse_duration(a.budget):g}s"]
    if a.smoke:
        a.images, a.size, a.datasets, budgets = 200, 16, ["images"], ["45s"]
        a.sets += ["promote.accuracy_floor=0.0"]
    print(
        json.dumps(
            {
                "bench": "budget",
                "date": utc_now(),
                "machine": platform.processor() or platform.machine(),
                "load": loadavg(),
            }
        ),
        flush=True,
    )
    rows = []
    keep = contextlib.nullcontext(a.data) if a.data else scratch("budget-data")
    with keep as data:
        for ds in a.datasets:
            over = source(ds, data, a.images, a.rows, a.size) + a.sets
            for b in budgets:
                row = {**one_run(ds, b, over), "load_after": loadavg()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| dataset | budget | wall | wall / budget | test accuracy | promoted | degraded |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['budget_s']:.0f} s | {r['wall_s']:.0f} s | {r['wall_over_budget']:.2f} | "
            f"{r['test_accuracy']:.4f} | {r['promoted']} | {'; '.join(r['degradations']) or '-'} |"
        )
    for ds in a.datasets:
        acc = [r["test_accuracy"] for r in rows if r["dataset"] == ds]
        if len(acc) == 2:
            print(f"{ds}: accuracy {budgets[0]} - {budgets[1]}: {acc[0] - acc[1]:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
