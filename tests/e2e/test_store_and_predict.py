"""Issue 18 through the real components: two first runs creating the local MLflow store at the same
moment, and `mlpipe predict` / `mlpipe stage ingest` (the CLI in-process, through typer's runner) on
hostile inputs, predict against a model registered in a real MLflow store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from components import models, registry, tracking
from components.config import ModelConfig, TrackingConfig
from components.errors import MlpipeError
from flows.cli import app
from tests.code.test_hostile_inputs import bomb_png
from tests.conftest import REPO, make_images

# one first run: its heavy imports, then (released by the barrier file) the default tracking set-up
# of the project in its cwd and a run with a metric
FIRST_RUN = """
import sys, time
from pathlib import Path
import mlflow
from components import tracking
from components.config import TrackingConfig
name = sys.argv[1]
Path(name + ".ready").touch()
while not Path("go").exists():
    time.sleep(0.001)
tracking.setup(TrackingConfig(), Path.cwd())
with tracking.stage_run(name, None):
    tracking.log_metrics({"x": 1.0})
"""


def test_two_first_runs_on_a_new_store_both_succeed_and_leave_a_working_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it for children
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_RUN, name],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{n}.ready").exists() for n in "ab") and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()  # both are past their imports: release them together
    results = [p.communicate(timeout=180) for p in procs]
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]

    db = tmp_path / "mlflow.db"
    assert not list(tmp_path.glob("mlflow.db.creating-*"))
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tracking.setup(TrackingConfig(), tmp_path)  # the store works afterwards: a third run, the registry
    runs = mlflow.search_runs(experiment_names=["mlpipe"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["a", "b"] and all(r.data.metrics == {"x": 1.0} for r in runs)
    with tracking.stage_run("c", None):
        pass
    MlflowClient().create_registered_model("m")
    assert MlflowClient().get_registered_model("m").name == "m"


def test_a_half_migrated_store_is_named_not_migrated_again(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with sqlite3.connect(tmp_path / "mlflow.db") as con:  # what an interrupted MLflow schema creation leaves
        con.execute("CREATE TABLE runs (run_uuid TEXT)")
        con.execute("CREATE TABLE _alembic_tmp_latest_metrics (x INTEGER)")
    with pytest.raises(
        MlpipeError,
        match=r"mlflow.db: a half-migrated MLflow store \(leftover table "
        r"_alembic_tmp_latest_metrics.*holds 0 run\(s\). With none, move it aside",
    ):
        tracking.setup(TrackingConfig(), tmp_path)


# ---------------------------------------------------------------- predict on hostile inputs


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A project with an (untrained) CNN for 1 x 8 x 8 inputs registered as mlpipe-t@champion: the
    predict checks do not depend on what the weights learned."""
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.setup(TrackingConfig(), root)
        spec = models.model_args(ModelConfig(), (1, 8, 8), 2, "image")
        torch.manual_seed(0)
        models.save(models.build(spec), spec, ["bar", "dot"], root / "model.pt")
        with mlflow.start_run():
            uri = registry.log_model(root / "model.pt", np.zeros((5, 1, 8, 8), np.float32))
        registry.set_champion("mlpipe-t", registry.register(uri, "mlpipe-t", {}))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by mlflow.set_tracking_uri
    yield root


def predict(project, monkeypatch, *args):
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return CliRunner().invoke(app, ["predict", "--model", "models:/mlpipe-t@champion", *args])


def rows(n: int, bad: dict[int, float] | None = None) -> pd.DataFrame:
    X = np.random.default_rng(0).random((n, 64)).astype(np.float32)
    for i, v in (bad or {}).items():
        X[i, 3] = v
    return pd.DataFrame(X, columns=[f"p{i}" for i in range(64)])


def test_empty_header_only_and_zero_row_inputs_exit_2(champion, monkeypatch, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    rows(0).to_csv(tmp_path / "header.csv", index=False)
    np.savez(tmp_path / "none.npz", X=np.zeros((0, 64), np.float32))
    for name, says in [("empty.csv", "empty file"), ("header.csv", "header only"), ("none.npz", "0 rows")]:
        r = predict(champion, monkeypatch, str(tmp_path / name))
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error: ") and f"{name}: " in r.stderr and says in r.stderr, r.stderr
        assert "Traceback" not in r.output and r.stdout == ""


def test_nan_and_inf_rows_are_named_or_skipped_never_a_nan_confidence(champion, monkeypatch, tmp_path):
    rows(6, {1: np.nan, 4: np.inf}).to_csv(tmp_path / "x.csv", index=False)
    r = predict(champion, monkeypatch, str(tmp_path / "x.csv"))
    assert r.exit_code == 2 and "x.csv: 2 row(s) with NaN or infinite values: rows 1, 4" in r.stderr, r.output

    r = predict(champion, monkeypatch, str(tmp_path / "x.csv"), "--skip-invalid")
    assert r.exit_code == 0, r.output
    assert "skipped 2 invalid row(s): 1, 4" in r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "input,class,confidence" and [ln.split(",")[0] for ln in lines[1:]] == ["0", "2", "3", "5"]
    assert all(0 < float(ln.split(",")[2]) <= 1 for ln in lines[1:])

    # finite, but far outside anything seen in training: +inf and -inf meet in the first layer
    huge = np.where(np.arange(64) % 2, 3e38, -3e38).astype(np.float32)
    np.savez(tmp_path / "huge.npz", X=np.vstack([rows(2).to_numpy(), huge]))
    r = predict(champion, monkeypatch, str(tmp_path / "huge.npz"))
    assert r.exit_code == 2 and "huge.npz: 1 row(s) where the model's output is not finite" in r.stderr, r.output
    r = predict(champion, monkeypatch, str(tmp_path / "huge.npz"), "--skip-invalid")
    assert r.exit_code == 0 and "nan" not in r.stdout and len(r.stdout.strip().splitlines()) == 3, r.output


def test_predict_on_an_image_folder_with_a_bomb_exits_2_naming_it(champion, monkeypatch, tmp_path):
    root = make_images(tmp_path / "imgs", n_per_class=2, size=8)
    bomb_png(root / "dot" / "bomb.png", 20000, 20000)
    r = predict(champion, monkeypatch, str(root))
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and "dot/bomb.png: image too large" in r.stderr and r.stdout == ""
    r = predict(champion, monkeypatch, str(root / "bar"))  # the same model on the folder without it
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 3, r.output


def test_ingest_of_an_over_limit_jpeg_exits_2_naming_it(tmp_path, monkeypatch):
    root = make_images(tmp_path / "imgs", n_per_class=4, size=8)
    Image.new("L", (400, 300)).save(root / "bar" / "big.jpg")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = CliRunner().invoke(
        app, ["stage", "ingest", "--set", f"data.source=imagefolder:{root}", "--set", "data.max_pixels=100000"]
    )
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]  # after MLflow's first-run INFO lines
    assert len(errors) == 1 and "Traceback" not in r.output
    assert "bar/big.jpg: image too large: 400 x 300 = 120,000 pixels, over data.max_pixels 100,000" in errors[0]
    assert not (tmp_path / "data" / "prepared").exists()
