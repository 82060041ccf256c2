"""`mlpipe score` and its drift check (issue 21), through the CLI in-process against a real MLflow store:
every row scored in chunks with its input row id and the model version, the run linked to the version
and the input's hash, the bad inputs `mlpipe predict` refuses, and Evidently's verdict on shifted and
unshifted tables and images."""

from __future__ import annotations

import hashlib
import json
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from components import models, registry, tracking
from components.config import ModelConfig, TrackingConfig
from flows.cli import app
from tests.code.test_serving_package import make_store, rows
from tests.conftest import make_images

NO_DRIFT = ["--set", "drift.enabled=false"]


def table_rows(n: int, seed: int, shift=(0.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, 4)) * [1, 2, 3, 4] + shift).astype(np.float32)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """mlpipe-t: an image model (1 x 8 x 8) v1; mlpipe-tab: a 4-feature table model v1; both @champion,
    each with its training reference sample."""
    root = tmp_path_factory.mktemp("project")
    make_store(root)
    tracking.setup(TrackingConfig(), root)
    spec = models.model_args(ModelConfig(hidden=(8,)), (4,), 3, "table")
    torch.manual_seed(0)
    models.save(models.build(spec), spec, ["a", "b", "c"], root / "tab.pt")
    with mlflow.start_run():
        uri = registry.log_model(root / "tab.pt", table_rows(5, 0), table_rows(1000, 1))
    registry.set_champion("mlpipe-tab", registry.register(uri, "mlpipe-tab", {"variant": "fp32"}))
    return root


def score(project, monkeypatch, *args):
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = CliRunner().invoke(app, ["score", *args])
    run = re.search(r"MLflow run (\w+)", r.stdout)
    return r, run.group(1) if run else None


def test_every_row_is_scored_in_chunks_with_its_id_and_the_model_version(project, monkeypatch, tmp_path):
    X = rows(50, seed=4)
    np.savez(tmp_path / "x.npz", X=X)
    pd.DataFrame(X.reshape(50, 64), columns=[f"p{i}" for i in range(64)]).to_csv(tmp_path / "x.csv", index=False)
    want = registry.load("models:/mlpipe-t/1").predict(X)
    outs = {}
    for name in ("x.npz", "x.csv"):
        out = tmp_path / f"{name}.parquet"
        r, run_id = score(
            project,
            monkeypatch,
            str(tmp_path / name),
            "--out",
            str(out),
            "--model",
            "models:/mlpipe-t@champion",
            "--set",
            "score.chunk_rows=7",
            *NO_DRIFT,
        )
        assert r.exit_code == 0, r.output
        got = outs[name] = pd.read_parquet(out)
        assert list(got.columns) == ["row", "label", "class", "confidence", "model_name", "model_version"]
        assert got["row"].tolist() == list(range(50))
        assert (got["model_name"] == "mlpipe-t").all() and (got["model_version"] == "1").all()
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_allclose(got["confidence"], want["confidence"], rtol=1e-5)
        run = MlflowClient().get_run(run_id)
        assert run.info.run_name == "score" and run.data.metrics["rows"] == 50
        assert run.data.tags["mlpipe.input_hash"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert run.data.tags["mlpipe.model_version"] == "1"
        source = MlflowClient().get_model_version("mlpipe-t", "1").source  # models:/<logged model id>
        assert [f"models:/{m.model_id}" for m in run.inputs.model_inputs] == [source]
    pd.testing.assert_frame_equal(outs["x.npz"], outs["x.csv"])

    folder = make_images(tmp_path / "imgs", n_per_class=3, size=8)
    r, _ = score(
        project,
        monkeypatch,
        str(folder),
        "--out",
        str(tmp_path / "imgs.parquet"),
        "--model",
        "models:/mlpipe-t/1",
        "--set",
        "score.chunk_rows=4",
        *NO_DRIFT,
    )
    assert r.exit_code == 0, r.output
    got = pd.read_parquet(tmp_path / "imgs.parquet")
    assert got["row"].tolist() == list(range(6)) and got["file"].tolist()[:2] == ["bar/000.jpg", "bar/001.png"]


def test_bad_inputs_exit_2_naming_the_problem_and_write_nothing(project, monkeypatch, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    pd.DataFrame(columns=[f"p{i}" for i in range(64)]).to_csv(tmp_path / "header.csv", index=False)
    pd.DataFrame(np.zeros((3, 5)), columns=list("abcde")).to_csv(tmp_path / "five.csv", index=False)
    np.savez(tmp_path / "none.npz", Y=np.zeros(3))
    text = pd.DataFrame(rows(12).reshape(12, 64), columns=[f"p{i}" for i in range(64)]).astype(object)
    text.loc[10, "p7"] = "seven"  # a text value in the second chunk
    text.to_csv(tmp_path / "text.csv", index=False)
    X = rows(30, seed=2)
    X[[3, 21], 0, 2, 2] = [np.nan, np.inf]
    np.savez(tmp_path / "nan.npz", X=X)
    model = ["--model", "models:/mlpipe-t@champion", "--set", "score.chunk_rows=8", *NO_DRIFT]
    for name, args, says in [
        ("empty.csv", model, "empty.csv: empty file"),
        ("header.csv", model, "header.csv: no rows to score (0 rows)"),
        ("five.csv", model, "five.csv: rows have 5 values, model expects 64 (shape [1, 8, 8])"),
        ("none.npz", model, "none.npz: missing array 'X'; found ['Y']"),
        ("text.csv", model, "text.csv: cannot read as csv (In CSV column #7: CSV conversion error to float"),
        ("nan.npz", model, "nan.npz: 1 row(s) with NaN or infinite values: row 3"),  # stops at its chunk
        ("nan.npz", ["--model", "models:/nothing@champion"], "no registered model 'nothing'"),
        ("missing.csv", model, "missing.csv: input not found"),
        ("nan.npz", ["--model", "models:/mlpipe-t@nope"], "has no alias @nope"),
    ]:
        out = tmp_path / "out.parquet"
        r, _ = score(project, monkeypatch, str(tmp_path / name), "--out", str(out), *args)
        assert r.exit_code == 2, (name, r.output)
        assert r.stderr.startswith("error: ") and says in r.stderr, r.stderr
        assert not out.exists() and not list(tmp_path.glob(".out.parquet.*"))

    r, _ = score(project, monkeypatch, str(tmp_path / "nan.npz"), "--out", str(out), *model, "--skip-invalid")
    assert r.exit_code == 0, r.output
    assert pd.read_parquet(out)["row"].tolist() == [i for i in range(30) if i not in (3, 21)]
    assert "skipped 2 invalid row(s)" in r.stderr


def drift_of(project, run_id: str) -> dict:
    path = MlflowClient().download_artifacts(run_id, "drift/drift.json", str(project / f"dl-{run_id}"))
    return json.loads(open(path).read())


def test_drift_flags_a_shifted_table_and_not_an_unshifted_one(project, monkeypatch, tmp_path):
    cols = ["f0", "f1", "f2", "f3"]
    pd.DataFrame(table_rows(600, 7), columns=cols).to_csv(tmp_path / "same.csv", index=False)
    pd.DataFrame(table_rows(600, 8, (1.0, 2.0, 3.0, 0.0)), columns=cols).to_parquet(tmp_path / "shifted.parquet")
    model = ["--model", "models:/mlpipe-tab@champion"]
    r, run_id = score(project, monkeypatch, str(tmp_path / "same.csv"), "--out", str(tmp_path / "a.parquet"), *model)
    assert r.exit_code == 0, r.output
    assert "drift check: no drift" in r.stderr
    found = drift_of(project, run_id)
    assert found["basis"] == "features" and not found["drifted"] and found["share"] < 0.5
    assert MlflowClient().get_run(run_id).data.metrics["drift_share"] == found["share"]
    assert "drift/report.html" in [a.path for a in MlflowClient().list_artifacts(run_id, "drift")]

    r, run_id = score(
        project, monkeypatch, str(tmp_path / "shifted.parquet"), "--out", str(tmp_path / "b.parquet"), *model
    )
    assert r.exit_code == 0 and "drift check: DRIFTED: 75% of 4 features columns" in r.stderr, r.output
    found = drift_of(project, run_id)
    assert found["drifted"] and found["drifted_columns"] == ["f0", "f1", "f2"]

    r, run_id = score(
        project,
        monkeypatch,
        str(tmp_path / "shifted.parquet"),
        "--out",
        str(tmp_path / "c.parquet"),
        *model,
        "--set",
        "drift.on_drift=fail",
    )
    assert r.exit_code == 2 and "shifted.parquet: data drift: 75% of 4 features columns drifted" in r.stderr, r.output
    assert not (tmp_path / "c.parquet").exists()


def test_drift_flags_shifted_images_and_not_unshifted_ones(project, monkeypatch, tmp_path):
    np.savez(tmp_path / "same.npz", X=rows(400, seed=7))  # the reference is rows(300, seed=1): same distribution
    np.savez(tmp_path / "bright.npz", X=rows(400, seed=8) + 8.0)
    verdicts = {}
    for name in ("same.npz", "bright.npz"):
        r, run_id = score(
            project,
            monkeypatch,
            str(tmp_path / name),
            "--out",
            str(tmp_path / f"{name}.parquet"),
            "--model",
            "models:/mlpipe-t@champion",
        )
        assert r.exit_code == 0, r.output
        verdicts[name] = drift_of(project, run_id)
        assert verdicts[name]["basis"] == "embeddings" and len(verdicts[name]["columns"]) == 16
    assert not verdicts["same.npz"]["drifted"] and verdicts["bright.npz"]["drifted"], verdicts


def test_a_pipeline_run_records_drift_of_its_new_data_against_the_champion(project, monkeypatch):
    """flows.monitor.champion_drift, as the pipeline calls it after ingest, on the pipeline run."""
    from components import data
    from components.config import DataConfig, load_config
    from flows.monitor import champion_drift
    from flows.paths import Paths

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.setup(TrackingConfig(), project)
    paths, cfg = Paths(project), load_config(None, ["promote.model_name=mlpipe-t"])
    lines = {}
    for name, shift in (("same", 0.0), ("bright", 8.0)):
        raw = data.Raw(rows(400, seed=9) + shift, np.array(["bar", "dot"] * 200), "image", None)
        data.save_prepared(data.split(raw, DataConfig(source=f"npz:{name}.npz"), 0), paths.prepared)
        with mlflow.start_run(run_name=f"pipeline-{name}") as run:
            lines[name] = champion_drift(cfg, paths, run.info.run_id)
        logged = MlflowClient().get_run(run.info.run_id)
        assert logged.data.tags["mlpipe.drift"] == ("drifted" if shift else "no drift"), lines[name]
        assert "drift_share" in logged.data.metrics
        assert "drift/report.html" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "drift")]
    assert lines["same"].startswith("vs champion v1: no drift: ") and "embeddings columns" in lines["same"]
    assert lines["bright"].startswith("vs champion v1: DRIFTED: "), lines["bright"]
    nobody = load_config(None, ["promote.model_name=nobody"])
    assert champion_drift(nobody, paths, "unused") == "no champion of nobody yet"
