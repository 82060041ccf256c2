"""Every benchmark module runs end to end in its --smoke mode (tiny sizes, CPU): `python -m
benchmarks.NAME --smoke` from the repo root, as a user runs it, scratch files under tmp_path.

The modules are found by listing the package (all but benchmarks.HELPERS), so a new benchmark
without a smoke mode, or without its figures named in FIGURES, fails here. They run two at a
time, slowest first, in one fixture; each test then checks one module's exit code and output."""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import benchmarks
from tests.conftest import REPO

pytestmark = pytest.mark.bench  # `make bench-smoke` (CI runs it after `make test`)

MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in benchmarks.HELPERS)

# what each smoke run must print: its figures (the values mean nothing at smoke sizes)
FIGURES = {
    "baseline": [
        r"\| table50k \| [\d.]+ \(logreg\) \| [\d.]+ \| [\d.]+ \| (network|baseline) x1 \| [+-][\d.]+ \| [\d.]+ ",
        r"baseline stage: [\d.]+ s mean over 1 runs",
    ],
    "budget": [
        r'"dataset": "images", "budget_s": 45.0, "wall_s": [\d.]+, "wall_over_budget": [\d.]+',
        r"\| images \| 45 s \| \d+ s \| [\d.]+ \| [\d.]+ \|",
    ],
    "compress": [
        r"\| int8 onnxruntime static \(pipeline\) \| [\d.]+ \|",
        r"\| structured \(pipeline\) \|",
        r"torchao rows: left out",
    ],
    "cv_configs": [r'"cv_accuracy": [\d.]+', r"default +mean [\d.]+"],
    "gpu": [r'"samples_s_steady": [\d.]+'],
    "multinode": [
        r'"bench": "multinode", "repeat": 0, "1x2": \{"wall_s": [\d.]+, "train_s": [\d.]+, "test_accuracy": [\d.]+\}',
        r"2 nodes x 1 rank / 1 node x 2 ranks, wall: median [\d.]+x",
    ],
    "pipeline": [r"wall \(seed 0, n=1\): median [\d.]+ s", r"test accuracy: seed 0 \[[\d.]+\]"],
    "overhead": [
        r'"bench": "overhead", "kind": "table", "n": 2000, .*"ratio_wall": \{"median": [\d.]+',
        r"table 2,000: pipeline/plain wall [\d.]+x .*peak RSS pipeline \d+ MB, plain \d+ MB",
    ],
    "stack": [r"WAL +: writes median [\d.]+ s", r"rollback-journal / WAL write time \(medians\): [\d.]+x"],
    "serving": [
        r'"bench": "latency", "server": "mlpipe serve-model".*"failed": 0, "req_s": [\d.]+, "p50_ms": [\d.]+',
        r'"bench": "swap", "consistent": true, "alias_moves": 2, "requests": 60, "failed": 0,.*"wrong_version": 0, '
        r'"not_champion_while_answered": 0,',
        r'"bench": "score", "input": "csv", "rows": 3000,.*"peak_rss_mb": [\d.]+',
    ],
    "tracking": [r"mlpipe stage ingest: [\d.]+ s wall, [1-9]\d* requests", r"POST /api/2.0/mlflow/runs/create"],
    "text_data": [
        r"dataset: [1-9]\d* paragraphs, 7 families",
        r"tfidf\+logreg over 1 seeds: test accuracy [\d.]+ \+- [\d.]+, macro F1 [\d.]+",
    ],
    "text_model": [
        r'"bench": "text-overhead-summary".*"recipe_no_buckets_over_bare": \{"median": [\d.]+',
        r'"bench": "text-int8-summary".*"accuracy_drop_points": -?[\d.]+.*"pt_over_int8_size": [\d.]+',
    ],
    "text_pipeline": [
        r'"bench": "text-pipeline-seed".*"transformer": \{"accuracy": [\d.]+.*"tfidf": \{"accuracy": [\d.]+',
        r"promoted Transformer over 1 seeds: test accuracy [\d.]+ \+- [\d.]+, macro F1 [\d.]+",
    ],
    "vit": [r"\| digits \| vit \| [\d.]+ \+- [\d.]+ \| [\d.]+ \+- [\d.]+ \|", r"\| shapes32 \| cnn \| [\d.]+ "],
    "train": [
        r'"bench": "overhead".*"ratio_wall": \{"median": [\d.]+',
        r'"bench": "memmap".*"peak_rss_gb": [\d.]+',
        r'"bench": "omp-wait".*"policy": "PASSIVE"',
        r'"bench": "checkpoint-cost".*"epoch_with_checkpoint_over_alone"',
        r'"bench": "checkpoint-parts".*"store_ms_writer_thread"',
    ],
    "tune": [
        r"trials ratio halving/none: [\d.]+x",
        r"journal / memory: [\d.]+",
        r"speed-up 1 -> 2 workers: [\d.]+x",
        r"\| SVC, grid-searched .* \| [\d.]+ \| [\d.]+ \|",
    ],
}
# seconds each, two at a time on the 2-core VM (2026-12-02, other jobs running): pipeline 38, train 27, stack 19,
# tune 23, tracking 13, compress 9, gpu 5, cv_configs 4; the file 65-80 s. serving: 26 s alone (2026-12-02)
# baseline: 20 s alone (27 s with loadavg 4-5): every stage on a 400-row table
SLOWEST_FIRST = [
    "pipeline",
    "overhead",
    "budget",
    "baseline",
    "train",
    "serving",
    "stack",
    "tune",
    "tracking",
    "compress",
    "multinode",
    "gpu",
    "cv_configs",
    "text_data",
    "text_model",
    "text_pipeline",
    "vit",
]


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory, prefect_api) -> dict[str, tuple[subprocess.CompletedProcess, float]]:
    """The smoke run of every module this session selected, two at a time -> {name: (process, seconds)}.
    Their `mlpipe run`s share this worker's Prefect server (as under `mlpipe serve`) instead of each
    starting Prefect's temporary one: the figures of a smoke run mean nothing anyway."""
    wanted = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.path == request.path and hasattr(item, "callspec")
    }
    scratch = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PREFECT_API_URL": prefect_api}
    # two runs at a time on two cores: one torch thread each (a stage may still ask for more)
    env.update(
        MLPIPE_BENCH_DIR=str(scratch),
        PREFECT_HOME=str(scratch / ".prefect"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
    )

    def run(name: str):
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", "--smoke"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=400,
        )
        return name, p, time.perf_counter() - t0

    results_before = sorted((REPO / "benchmarks" / "results").iterdir())
    order = sorted(wanted, key=lambda n: SLOWEST_FIRST.index(n) if n in SLOWEST_FIRST else len(SLOWEST_FIRST))
    with ThreadPoolExecutor(2) as pool:
        runs = {name: (p, s) for name, p, s in pool.map(run, order)}
    assert sorted((REPO / "benchmarks" / "results").iterdir()) == results_before, (
        "a smoke run wrote into benchmarks/results"
    )
    assert not list(REPO.glob("bench-*")), "a smoke run left scratch files in the repo"
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("bench-")], "scratch folders were not removed"
    return runs


def test_every_benchmark_names_its_figures():
    assert set(MODULES) == set(FIGURES), "each benchmark module needs its smoke figures in FIGURES (and no stale entry)"


@pytest.mark.parametrize("name", MODULES)
def test_smoke_run_prints_its_figures(name, smoke_runs):
    p, seconds = smoke_runs[name]
    out = p.stdout + p.stderr
    assert p.returncode == 0, (
        f"python -m benchmarks.{name} --smoke: exit {p.returncode} after {seconds:.0f} s\n{out[-4000:]}"
    )
    missing = [f for f in FIGURES.get(name, []) if not re.search(f, p.stdout)]
    assert not missing, f"benchmarks.{name} --smoke did not print {missing}:\n{p.stdout[-4000:]}"
