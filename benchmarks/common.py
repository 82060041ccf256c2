"""What the benchmarks share: scratch folders, machine load, a bootstrap interval, and running
the `mlpipe` CLI in a fresh project folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]  # params.yaml: the defaults a fresh project starts from
SMOKE_HELP = "tiny sizes on the CPU, seconds to a minute: the measurement code end to end (its figures mean nothing)"


def loadavg() -> list[str]:
    """1-, 5- and 15-minute load averages (2.0 = both cores of a 2-core VM busy)."""
    return Path("/proc/loadavg").read_text().split()[:3]


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def median_ci(values: list[float], level: float = 0.95, resamples: int = 4000) -> list[float]:
    """Percentile-bootstrap interval of the median (seeded: the same values give the same interval)."""
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(np.asarray(values), size=(resamples, len(values))), axis=1)
    return [float(q) for q in np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])]


def scratch_root() -> Path:
    """Where scratch folders go: $MLPIPE_BENCH_DIR, else the system's temporary folder."""
    root = Path(os.environ.get("MLPIPE_BENCH_DIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def scratch(prefix: str, root: Path | None = None) -> Iterator[Path]:
    """A fresh folder under root (default scratch_root()), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-", dir=root or scratch_root()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mlpipe_env(project: Path, **extra: str) -> dict[str, str]:
    """The environment of an `mlpipe` process in a fresh project: its own Prefect home, and the
    project's own MLflow store unless extra names one."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PREFECT_HOME": str(project / ".prefect"), **extra}


def run_mlpipe(args: list[str], project: Path, env: dict[str, str]) -> float:
    """`mlpipe ARGS` in project -> wall seconds; exits with its output tail when it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [str(Path(sys.executable).parent / "mlpipe"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"mlpipe {' '.join(args)} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return wall


def sets(overrides: list[str]) -> list[str]:
    """['a=1', 'b=2'] -> ['--set', 'a=1', '--set', 'b=2']"""
    return [x for kv in overrides for x in ("--set", kv)]
