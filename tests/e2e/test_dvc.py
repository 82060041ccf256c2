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
from tests.e2e.test_tune_e2e import journal_study

pytestmark = pytest.mark.slow


def sh(*cmd, cwd):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(cwd / ".prefect"),
        "PYTHONPATH": str(cwd),
    }
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
    hit = {
        n
        for n, st in stages.items()
        if any((p if isinstance(p, str) else next(iter(p))).split(".")[0] == section for p in st.get("params", []))
    }
    changed = True
    while changed:
        produced = [o for n in hit for o in _outs(stages[n])]
        new = {
            n
            for n, st in stages.items()
            if n not in hit
            and any(d == o or d.startswith(o.rstrip("/") + "/") for d in st.get("deps", []) for o in produced)
        }
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
    # a tiny study and 2-fold CV; compression has its own end-to-end test
    params["tune"].update(
        n_trials=3, n_workers=1, epochs=[2, 3], width=[8], depth=[1, 1], batch_size=[64], min_resource=1
    )
    params["cv"]["folds"] = 2
    params["compress"]["enabled"] = False
    # the baseline and explain stages run as DVC stages that only say they are off (their own tests cover them)
    params["baseline"]["enabled"] = False
    params["explain"]["enabled"] = False
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=proj)
    sh(str(BIN / "dvc"), "init", "-q", cwd=proj)

    first = sh(str(BIN / "dvc"), "repro", cwd=proj)
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    first_ran = ran(first)
    assert sorted(first_ran) == sorted(dvc["stages"])
    assert first_ran.index("validate") < first_ran.index("train") < first_ran.index("register")
    assert (proj / "reports/promotion.json").exists()
    assert (proj / "reports/tune/best_params.json").exists() and (proj / "reports/cv/cv_metrics.json").exists()
    assert journal_study(proj).trials and len([t for t in journal_study(proj).trials if t.state.is_finished()]) == 3

    second = sh(str(BIN / "dvc"), "repro", cwd=proj)
    assert ran(second) == [] and "up to date" in second

    # the stage graph says what a parameter reaches: train.* reaches tune..register, promote.* register only
    assert {"tune", "cv", "train", "evaluate", "register"} <= downstream_of_param(dvc, "train")
    assert "ingest" not in downstream_of_param(dvc, "train")
    assert downstream_of_param(dvc, "promote") == {"register"}
    params["promote"]["tolerance"] = 0.01
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = sh(str(BIN / "dvc"), "repro", cwd=proj)
    assert ran(third) == ["register"]
