"""The compress stage through registration on digits, with a shrunk config: variants are
measured, the one over budget is not registered, every registered variant loads back from the
registry (one through `mlpipe predict`), and promote.objective picks the version."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from components import registry, tracking
from components.config import load_config
from flows import stages
from flows.paths import Paths
from tests.conftest import cli, write_params

pytestmark = pytest.mark.slow

SHRUNK = {
    "train": {"epochs": 4, "num_threads": 1},
    # structured keeps 10% of the units with no fine-tuning: far beyond a 5-point budget
    "compress": {
        "max_accuracy_drop": 0.05,
        "prune_steps": 2,
        "step_epochs": 1,
        "sparsity": 0.5,
        "keep": 0.1,
        "structured_epochs": 0,
        "student_epochs": 2,
        "repeats": 5,
        "calibration_samples": 64,
    },
    "promote": {"accuracy_floor": 0.5},
}


def _stages(cfg, paths, names):
    return {n: stages.get(n).run(cfg, paths, None) for n in names}


def test_compress_register_and_objective(project):
    params = write_params(project, **SHRUNK)
    cfg = load_config(params)
    paths = Paths(project)
    tracking.setup(cfg.tracking, project)
    out = _stages(cfg, paths, ["ingest", "augment", "train", "evaluate", "compress", "register"])

    table = json.loads((project / "reports/compress/table.json").read_text())["rows"]
    rows = {r["variant"]: r for r in table}
    assert set(rows) == {"fp32", "int8", "pruned", "structured", "distilled"}
    assert not rows["structured"]["accepted"] and rows["structured"]["accuracy_drop"] > 0.05
    assert rows["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rows["structured"]["macs"] < rows["fp32"]["macs"] / 10
    assert rows["int8"]["size_bytes"] == (project / "models/compressed/int8.onnx").stat().st_size
    eval_acc = json.loads((project / "reports/eval/metrics.json").read_text())["test_accuracy"]
    assert rows["fp32"]["accuracy"] == pytest.approx(eval_acc)  # the same test set as evaluate
    for f in ("metrics.json", "pareto.png", "table.md"):
        assert (project / "reports/compress" / f).stat().st_size > 0

    reg = out["register"]
    name = reg["model_name"]
    accepted = {v for v, r in rows.items() if r["accepted"]}
    assert set(reg["variants"]) == accepted and "structured" in reg["rejected"]
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(v.tags["variant"] for v in versions) == sorted(accepted)  # the rejected one is not registered
    assert reg["variant"] == "fp32" or rows[reg["variant"]]["accuracy"] >= rows["fp32"]["accuracy"]

    # every registered variant loads back from the registry and scores what the table says
    ds_X = np.load(project / "data/prepared/X_test.npy")
    ds_y = np.load(project / "data/prepared/y_test.npy")
    for variant, version in reg["variants"].items():
        pred = registry.load(f"models:/{name}/{version}").predict(ds_X)
        assert (pred["label"].to_numpy() == ds_y).mean() == pytest.approx(rows[variant]["accuracy"]), variant

    # every variant's package is models-from-code: no pickle anywhere in the store (issue 21)
    assert not [p for p in (project / "mlartifacts").rglob("*.pkl")]
    mlmodels = list((project / "mlartifacts").rglob("MLmodel"))
    assert len(mlmodels) == len(accepted) and all("mlflow.pyfunc.loaders.code_model" in m.read_text() for m in mlmodels)

    # the CLI entry point serves the int8 (ONNX) variant
    np.savez(project / "rows.npz", X=ds_X[:10])
    res = cli("predict", "rows.npz", "--model", f"models:/{name}/{reg['variants']['int8']}", cwd=project)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "input,class,confidence" and len(lines) == 11

    # another objective: no new versions (dedup by file hash), the chosen version carries the decision
    cfg2 = load_config(params, ["promote.objective=smallest_within_budget"])
    again = stages.get("register").run(cfg2, paths, None)
    smallest = min((r for r in table if r["accepted"]), key=lambda r: r["size_bytes"])
    assert again["variant"] == smallest["variant"] and again["variants"] == reg["variants"]
    assert len(client.search_model_versions(f"name='{name}'")) == len(accepted)
    tags = client.get_model_version(name, again["version"]).tags
    assert tags["mlpipe.objective"] == "smallest_within_budget" and "smallest within budget" in tags["mlpipe.selection"]
    assert "| structured |" in tags["mlpipe.variant_table"] and tags["mlpipe.decision"] in ("promoted", "rejected")
