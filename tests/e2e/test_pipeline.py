"""The real entry point (`mlpipe run`, a real Prefect flow) on a shrunk config, with a temporary
MLflow store; asserts on the registry and the run structure a user sees in the MLflow UI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.stages import BY_NAME as STAGES
from tests.conftest import STAGES_OFF, cli, client_for, make_images, sets

pytestmark = pytest.mark.slow
# tuning, CV and compression have their own end-to-end tests; here they run as no-op stages
FAST = ["--set", "tune.enabled=false", "--set", "cv.enabled=false", "--set", "compress.enabled=false"]
SHRUNK = ["--set", "train.epochs=3", "--set", "promote.accuracy_floor=0.5", *FAST]


def versions(client, name):
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


def test_flow_tracks_registers_gates_and_survives_bad_input(project, prefect_api):
    api = {"PREFECT_API_URL": prefect_api}  # a running Prefect server; test_imagefolder.py uses the temporary one
    r = cli("run", *SHRUNK, cwd=project, env=api)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mlpipe-digits v1" in r.stdout and "promoted" in r.stdout and "mlflow ui --backend-store-uri" in r.stdout

    client = client_for(project)
    champ = client.get_model_version_by_alias("mlpipe-digits", "champion")
    assert str(champ.version) == "1" and champ.tags["mlpipe.decision"] == "promoted" and champ.tags["variant"] == "fp32"
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert champ.tags["mlpipe.data_hash"] == meta["content_hash"]

    # run structure: one parent, a child per stage, tags and artifacts
    exp = client.get_experiment_by_name("mlpipe")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for tag in ("mlpipe.git_commit", "mlpipe.data_hash", "mlpipe.prefect_flow_run_id"):
        assert parent.data.tags.get(tag) not in (None, "", "none"), tag
    assert parent.data.params["train.epochs"] == "3"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(STAGES)
    assert len(client.get_metric_history(children["train"].info.run_id, "val_loss")) == 3  # per epoch
    assert {d.dataset.name for d in children["ingest"].inputs.dataset_inputs} == {"digits-train", "digits-test"}
    arts = {a.path for a in client.list_artifacts(children["evaluate"].info.run_id, "evaluate")}
    assert {"evaluate/confusion_matrix.png", "evaluate/learning_curves.png", "evaluate/metrics.json"} <= arts
    assert client.list_artifacts(children["validate"].info.run_id, "validation")

    # the champion loads into a working classifier that reproduces the evaluated accuracy
    import mlflow

    model = mlflow.pyfunc.load_model("models:/mlpipe-digits@champion")
    X = np.load(project / "data/prepared/X_test.npy")
    y = np.load(project / "data/prepared/y_test.npy")
    acc = (model.predict(X)["label"].to_numpy() == y).mean()
    metrics = json.loads((project / "reports/eval/metrics.json").read_text())
    assert acc == pytest.approx(metrics["test_accuracy"])

    # predict through the CLI
    np.savez(project / "few.npz", X=X[:4])
    r = cli("predict", "--model", "models:/mlpipe-digits@champion", "few.npz", cwd=project, env=api)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "input,class,confidence" and len(lines) == 5

    # a re-run with nothing changed reuses the cached stages and the registered version
    r = cli("run", *SHRUNK, cwd=project, env=api)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Cached" in r.stdout + r.stderr
    assert versions(client, "mlpipe-digits") == [1]

    # a weaker challenger (one epoch, a tiny model) is registered but rejected by the gate
    r = cli(
        "run",
        "--set",
        "train.epochs=1",
        "--set",
        "model.channels=[4]",
        "--set",
        "model.hidden=[8]",
        "--set",
        "promote.accuracy_floor=0.5",
        "--set",
        "promote.tolerance=0.0",
        *sets(*STAGES_OFF),
        cwd=project,
        env=api,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert versions(client, "mlpipe-digits") == [1, 2]
    v2 = client.get_model_version("mlpipe-digits", "2")
    assert v2.tags["mlpipe.decision"] == "rejected" and "< champion" in v2.tags["mlpipe.reasons"]
    assert v2.tags["mlpipe.champion_before"] == "1"
    runs = client.search_runs([exp.experiment_id])

    # bad input: a corrupt image stops the run, names the file, and changes nothing registered
    root = make_images(project / "raw")
    bad = root / "dot" / "003.png"
    bad.write_bytes(bad.read_bytes()[:50])
    r = cli("run", *SHRUNK, "--set", f"data.source=imagefolder:{root}", cwd=project, env=api)
    assert r.returncode == 2
    assert "003.png: unreadable or corrupt image" in r.stderr
    # (a failed GX gate in the flow: tests/e2e/test_servers.py, the scheduled run; NaN: tests/data)
    # malformed params
    (project / "broken.yaml").write_text("train: [1\n")
    r = cli("run", "--params", "broken.yaml", cwd=project, env=api)
    assert r.returncode == 2 and "broken.yaml: malformed YAML at line" in r.stderr

    assert versions(client, "mlpipe-digits") == [1, 2]
    assert str(client.get_model_version_by_alias("mlpipe-digits", "champion").version) == "1"
    assert [m.name for m in client.search_registered_models()] == ["mlpipe-digits"]
    runs_after = client.search_runs([exp.experiment_id])
    before = {r.info.run_id: r.info.status for r in runs}
    assert all(r.info.status == before[r.info.run_id] for r in runs_after if r.info.run_id in before)
    failed = [
        r
        for r in runs_after
        if r.info.run_id not in before and "mlflow.parentRunId" not in r.data.tags and r.info.status == "FAILED"
    ]
    assert len(failed) == 1 and "003.png" in failed[0].data.tags["mlpipe.error"]
