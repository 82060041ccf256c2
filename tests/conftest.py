"""Shared fixtures. Every test gets its own MLflow store and Prefect home under tmp_path."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flows.cli import _env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

_env()  # the tools' quiet, offline defaults, as every `mlpipe` command sets them
# two pytest workers on two cores: torch's OpenMP threads must sleep, not spin, while they wait
# (two 2-thread trainings at once: 3-4x slower spinning; `python -m benchmarks.train omp-wait`)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The slowest files first (about 1-2.5 min each on the 2-core VM; "Test suite time" in BENCHMARKS.md):
# with two pytest workers, `make test` hands out one file at a time, so the short files fill the gaps
# at the end instead of one long file running alone.
SLOWEST_FIRST = [  # seconds in a fresh clone, 2026-12-02 (junit times, two workers)
    "test_shared_stack.py",  # 147
    "test_multinode.py",  # 134
    "test_dvc.py",  # 134
    "test_isolation.py",  # 130
    "test_budget_e2e.py",  # 124
    "test_text_flow.py",  # 110
    "test_servers.py",  # 102
    "test_pipeline.py",  # 99
    "test_crash.py",  # 98
    "test_shared_postgres.py",  # 96
    "test_ddp.py",  # 94
    "test_tune_e2e.py",  # 91
    "test_imagefolder.py",  # 67
    "test_lineage.py",  # 61
    "test_baseline_e2e.py",  # 49
    "test_text_bad_input.py",  # 26
]


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every other file keeps its place


def need_service(reason: str) -> None:
    """A required local service is missing: skip on a developer's machine, fail in CI, where
    PostgreSQL always runs (a skip there would hide the lost coverage)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the service is expected)")
    pytest.skip(reason)


PG = "postgresql://postgres@127.0.0.1:5432"  # the machine's PostgreSQL (trust auth), here and in CI


def pg_admin(sql: str) -> None:
    """One statement on the server's `postgres` database, autocommit."""
    psycopg2 = pytest.importorskip("psycopg2")
    con = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
    con.autocommit = True
    try:
        con.cursor().execute(sql)
    finally:
        con.close()


@contextlib.contextmanager
def postgres_databases(*kinds: str) -> Iterator[dict[str, str]]:
    """Fresh databases on the local PostgreSQL, one per kind -> {kind: name}; dropped afterwards
    (WITH (FORCE): a server still connected does not keep one)."""
    names = {k: f"mlpipe_{k}_{uuid.uuid4().hex[:10]}" for k in kinds}
    try:
        pg_admin("select 1")
    except Exception as e:  # noqa: BLE001
        need_service(f"PostgreSQL on 127.0.0.1:5432 not reachable: {e}")
    try:
        for n in names.values():
            pg_admin(f'create database "{n}"')
        yield names
    finally:
        for n in names.values():
            pg_admin(f'drop database if exists "{n}" with (force)')


# the stages that have their own end-to-end tests, off: a run of ingest, validate, augment, train, evaluate, register
STAGES_OFF = (
    "tune.enabled=false",
    "cv.enabled=false",
    "compress.enabled=false",
    "baseline.enabled=false",
    "explain.enabled=false",
)


def sets(*overrides: str) -> list[str]:
    """KEY=VALUE overrides -> `mlpipe run` arguments (--set KEY=VALUE ...)."""
    return [f"--set={kv}" for kv in overrides]


def write_params(folder: Path, **sections) -> Path:
    """params.yaml with the repo's defaults, sections updated (shallowly per section)."""
    import yaml

    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project folder with the default params.yaml; cwd is set to it."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    return tmp_path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """One real Prefect server for the end-to-end tests of this pytest worker (SQLite; the API without
    the scheduler's background services).

    Without PREFECT_API_URL every `mlpipe run` starts Prefect's temporary server (and a fresh
    PREFECT_HOME migrates its database): ~10-20 s of CPU per run. Tests that run several flows use
    this server, as a user with `mlpipe serve` does; tests/e2e/test_imagefolder.py keeps its run on
    the temporary server (the default `make run` path)."""
    from flows import servers

    state = tmp_path_factory.mktemp("prefect-server")
    srv = servers.launch_prefect(state, servers.free_port(), services=False)
    try:
        servers.wait_healthy(srv, "/health", timeout=180)
        yield srv.url
    finally:
        servers.stop(srv.pid)


def child_processes(pid: int, module: str) -> list:
    """The live descendants of process pid whose command line names `module`; one that exits while
    they are listed is left out (as is everything, once pid itself is gone)."""
    import psutil

    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for p in children:
        try:
            if module in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real entry point, as a user runs it."""
    full_env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(cwd / ".prefect"),
        **(env or {}),
    }
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [str(BIN / "mlpipe"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def client_for(project: Path):
    """An MLflow client on the project's default local store (mlflow.db)."""
    import mlflow

    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.tracking.MlflowClient()


def make_images(root: Path, n_per_class: int = 12, size: int = 10, classes=("bar", "dot"), rgb=False, seed=0) -> Path:
    """A tiny image-folder dataset: class 'bar' has a vertical bar, 'dot' a centre blob."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 40, (size, size)).astype(np.uint8)
            if c == classes[0]:
                col = rng.integers(2, size - 2)
                img[:, col] = 255
            else:
                img[size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = 255
            im = Image.fromarray(np.stack([img] * 3, -1) if rgb else img)
            im.save(root / c / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def make_table(n: int = 60, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = np.repeat(["a", "b", "c"], n // 3)
    X = rng.normal(size=(n, 4)) + (np.searchsorted(["a", "b", "c"], y)[:, None] * 2.0)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)])
    df["label"] = y
    return df
