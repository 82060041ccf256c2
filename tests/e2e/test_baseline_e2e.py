"""The baseline stage and the gate's baseline and fold rules through registration, on a small
linearly separable table where a logistic regression beats an untrained network: the network is
registered but not promoted (promote.beat_baseline_by); with promote.allow_baseline the baseline
is registered and promoted, and it loads and predicts through its pyfunc (and `mlpipe predict`)
without unpickling anything; with baseline.enabled false the gate is the floor and the champion
rule alone. Stages run in process, as DVC runs them one by one (the Prefect flow: test_pipeline.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from components import data, gate, registry, tracking
from components.config import load_config
from flows import gate_inputs, stages
from flows.paths import Paths
from flows.pipeline import summarize
from tests.conftest import cli, client_for

pytestmark = pytest.mark.slow

# an untrained network (one step at lr 1e-6) against baselines that separate the table exactly
SETS = [
    "data.source=csv:sep.csv",
    "cv.folds=3",
    "train.epochs=1",
    "train.lr=0.000001",
    "train.num_threads=1",
    "augment.enabled=false",
    "promote.accuracy_floor=0.0",
    "baseline.tabular=[logreg,svc]",
    "baseline.threads=1",
]
NAME = "mlpipe-sep"

_events: list[str] = []
_recording = [False]
sys.addaudithook(lambda event, _args: _events.append(event) if _recording[0] and event.startswith("pickle.") else None)


def separable_table(path: Path, n: int = 90, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    s = X @ np.array([1.5, -2.0, 1.0, 0.5, 0.0])
    X, s = X[np.abs(s) > 0.5], s[np.abs(s) > 0.5]  # a margin around the plane
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
    df["label"] = np.where(s > 0, "pos", "neg")
    df.to_csv(path, index=False)


def _run(cfg, paths, names):
    return {n: stages.get(n).run(cfg, paths, None) for n in names}


def _as_flow_out(stage_outputs: dict, project: Path) -> dict:
    """What the flow hands summarize(): the stage outputs, a run id of this store and its URI."""
    client = client_for(project)
    run = client.search_runs([client.get_experiment_by_name("mlpipe").experiment_id], max_results=1)[0]
    return {**stage_outputs, "run_id": run.info.run_id, "tracking_uri": f"sqlite:///{project / 'mlflow.db'}"}


def _tags(project) -> dict[str, dict]:
    """Every version's tags now (a later register run re-decides a reused version)."""
    return {str(v.version): dict(v.tags) for v in client_for(project).search_model_versions(f"name='{NAME}'")}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """The three runs, in order, on one project: their outputs and what was observed while loading."""
    project = tmp_path_factory.mktemp("sep")
    separable_table(project / "sep.csv")
    paths = Paths(project)
    res = {"project": project}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("PREFECT_API_URL", raising=False)  # promotion under the file lock alone
        # 1. the rule on: the network loses to the baseline on the folds
        cfg = load_config(None, [*SETS, "promote.beat_baseline_by=0.0"])
        tracking.setup(cfg.tracking, project)
        names = ["ingest", "validate", "baseline", "augment", "cv", "train", "evaluate", "register"]
        res["rule"] = _run(cfg, paths, names)
        res["tags_rule"] = _tags(project)
        # 2. allow_baseline: the same network and baseline, the baseline goes to the gate
        res["allow"] = _run(load_config(None, [*SETS, "promote.allow_baseline=true"]), paths, ["register"])
        res["tags_allow"] = _tags(project)
        _events.clear()
        _recording[0] = True
        try:
            model = registry.load(f"models:/{NAME}@champion")
            X = np.load(project / "data/prepared/X_test.npy")
            res["pred"] = model.predict(X)
        finally:
            _recording[0] = False
        res["pickle_events"] = list(_events)
        version = res["allow"]["register"]["version"]
        res["artefacts"] = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}"))
        # 3. baseline.enabled false
        off = load_config(None, [*SETS, "baseline.enabled=false"])
        res["off"] = _run(off, paths, ["baseline", "register"])
    return res


def test_network_that_loses_to_the_baseline_is_registered_not_promoted(scenario):
    out, project = scenario["rule"], scenario["project"]
    b = out["baseline"]
    assert b["enabled"] and b["best"] in ("logreg", "svc") and b["cv_accuracy_mean"] > 0.9 and b["folds"] == 3
    reg = out["register"]
    assert reg["version"] == "1" and not reg["promoted"] and reg["champion"] is None
    assert reg["rule"] == "baseline-folds" and reg["comparisons"]["baseline"]["verdict"] == "loss"
    v1 = scenario["tags_rule"]["1"]
    assert v1["mlpipe.decision"] == "rejected" and v1["mlpipe.rule"] == "baseline-folds"
    assert "does not beat the best baseline by 0.0000: 3 cv folds" in v1["mlpipe.reasons"]
    folds = json.loads((project / "reports/cv/cv_folds.json").read_text())["folds"]
    assert json.loads(v1["mlpipe.fold_accuracy"]) == pytest.approx([f["accuracy"] for f in folds], abs=1e-6)
    client = client_for(project)
    # the summary puts the baseline next to the network and says what the gate made of them
    rows = dict(summarize(_as_flow_out(out, project)))
    assert rows["baseline"].startswith(f"{b['best']}: test ") and "loss" in rows["network vs baseline"]
    assert rows["gate rule"] == "baseline-folds"
    # each baseline model is a child run of the baseline stage's run
    exp = client.get_experiment_by_name("mlpipe")
    runs = client.search_runs([exp.experiment_id])
    first, off = sorted((r for r in runs if r.info.run_name == "baseline"), key=lambda r: r.info.start_time)
    kids = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == first.info.run_id}
    assert kids == {"baseline/logreg", "baseline/svc"}
    assert not [r for r in runs if r.data.tags.get("mlflow.parentRunId") == off.info.run_id]  # baseline.enabled false


def test_allow_baseline_registers_promotes_and_serves_it_without_pickle(scenario):
    reg, project = scenario["allow"]["register"], scenario["project"]
    assert reg["variant"] == "baseline" and reg["promoted"] and reg["version"] == "2" and reg["champion"] == "2"
    assert reg["network_version"] == "1" and reg["network_vs_baseline"]["verdict"] == "loss"
    v1, v2 = scenario["tags_allow"]["1"], scenario["tags_allow"]["2"]
    assert v2["variant"] == "baseline" and v2["mlpipe.decision"] == "promoted" and v2["mlpipe.rule"] == "no-champion"
    assert v1["mlpipe.decision"] == "rejected" and "promote.allow_baseline" in v1["mlpipe.reasons"]
    # an MLflow sklearn model in skops format; no pickle file among its artefacts, none unpickled at load
    files = {p.name for p in scenario["artefacts"].rglob("*") if p.is_file()}
    assert "model.skops" in files and not [f for f in files if f.endswith((".pkl", ".pickle"))]
    mlmodel = (scenario["artefacts"] / "MLmodel").read_text()
    assert "serialization_format: skops" in mlmodel and "loader_module: mlflow.sklearn" in mlmodel
    assert scenario["pickle_events"] == []
    pred, y = scenario["pred"], np.load(project / "data/prepared/y_test.npy")
    assert list(pred.columns) == ["label", "class", "confidence"]  # as the network's pyfunc
    assert (pred["label"].to_numpy() == y).mean() == pytest.approx(reg["test_accuracy"])
    # `mlpipe predict` serves it as it serves a network
    pd.read_csv(project / "sep.csv").drop(columns="label").head(4).to_csv(project / "few.csv", index=False)
    r = cli("predict", "--model", f"models:/{NAME}@champion", "few.csv", cwd=project)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "input,class,confidence" and len(lines) == 5 and lines[1].split(",")[1] in ("pos", "neg")
    # and `mlpipe score` scores with it (no embeddings or drift sample: drift is skipped, not an error)
    r = cli("score", "--model", f"models:/{NAME}@champion", "few.csv", "--out", "scored.parquet", cwd=project)
    assert r.returncode == 0, r.stderr[-2000:]
    scored = pd.read_parquet(project / "scored.parquet")
    assert len(scored) == 4 and scored["class"].tolist() == [line.split(",")[1] for line in lines[1:]]


def test_nothing_changes_with_baseline_disabled(scenario):
    out, project = scenario["off"], scenario["project"]
    paths = Paths(project)
    assert out["baseline"] == {"enabled": False} and not any(paths.baseline_models.iterdir())
    reg = out["register"]
    assert reg["baseline"] is None and set(reg["comparisons"]) == {"champion"}
    assert not any("baseline" in r for r in reg["reasons"])
    rows = summarize(_as_flow_out({**scenario["rule"], **out}, project))
    assert not [k for k, _ in rows if k in ("baseline", "network vs baseline")]
    # the gate is the floor and the champion rule alone, on the same scores
    champion = client_for(project).get_model_version(NAME, reg["champion_before"])
    folds = gate_inputs.network_folds(paths, data.load_meta(paths.prepared))
    want = gate.decide(
        gate.Scores(f"v{reg['version']} (fp32)", reg["test_accuracy"], *folds),
        gate_inputs.champion_scores(champion, reg["champion_accuracy"]),
        0.0,
        0.002,
    )
    assert reg["promoted"] is want.promote and reg["reasons"] == want.reasons and reg["rule"] == want.rule
