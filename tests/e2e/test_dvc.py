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


def _outs(stage: dict) -> list[str]:
    items = stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
    return [next(iter(o)) if isinstance(o, dict) else o for o in items]


def downstream_of_param(dvc: dict, section: str) -> set[str]:
    """Stages that read params `section` (or a key in it), and every stage that depends on them."""
    stages = dvc["stages"]
    hit = {n for n, st in stages.items()
           if any((p if isinstance(p, str) else next(iter(p))).split(".")[0] == section for p in st.get("params", []))}
    changed = True
    while changed:
        produced = [o for n in hit for o in _outs(stages[n])]
        new = {n for n, st in stages.items() if n not in hit and any(
            d == o or d.startswith(o.rstrip("/") + "/") for d in st.get("deps", []) for o in produced)}
        hit |= new
        changed = bool(new)
    return hit


def test_repro_runs_skips_and_reruns_downstream(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("components", "flows"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", proj)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    for section in ("tune", "cv", "compress"):  # covered by their own tests; no-op stages here
        params[section]["enabled"] = False
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=proj)
    sh(str(BIN / "dvc"), "init", "-q", cwd=proj)

    first = sh(str(BIN / "dvc"), "repro", cwd=proj)
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    first_ran = ran(first)
    assert sorted(first_ran) == sorted(dvc["stages"])
    assert first_ran.index("validate") < first_ran.index("train") < first_ran.index("register")
    assert (proj / "reports/promotion.json").exists()

    second = sh(str(BIN / "dvc"), "repro", cwd=proj)
    assert ran(second) == [] and "up to date" in second

    params["train"]["epochs"] = 3
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = sh(str(BIN / "dvc"), "repro", cwd=proj)
    expected = downstream_of_param(dvc, "train")
    assert {"train", "evaluate", "register"} <= expected and "ingest" not in expected
    assert set(ran(third)) == expected
