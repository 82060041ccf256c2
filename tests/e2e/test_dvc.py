"""`dvc repro` in a temporary copy of the project: the same stages, skipped when unchanged,
and only the downstream stages re-run after a parameter change."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import BIN, REPO

pytestmark = pytest.mark.slow


def sh(*cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(cwd / ".prefect"), "PYTHONPATH": str(cwd)}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout + r.stderr


def ran(log: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", log)


def test_repro_runs_skips_and_reruns_downstream(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("components", "flows"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", proj)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=proj)
    sh(str(BIN / "dvc"), "init", "-q", cwd=proj)

    first = sh(str(BIN / "dvc"), "repro", cwd=proj)
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert ran(first) == stages
    assert (proj / "reports/promotion.json").exists()

    second = sh(str(BIN / "dvc"), "repro", cwd=proj)
    assert ran(second) == [] and "up to date" in second

    params["train"]["epochs"] = 3
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = sh(str(BIN / "dvc"), "repro", cwd=proj)
    downstream = stages[stages.index("train"):]
    assert ran(third) == downstream
