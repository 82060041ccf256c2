"""Text and Transformers through the whole flow (issue 19): `mlpipe run` on a small generated text CSV with
tune, cv and compress on (small budgets) ends with a promoted champion that takes raw strings, through
`mlflow.pyfunc`, `mlflow models serve` (a real subprocess) and `mlpipe predict` on a .txt file; and a ViT on
digits through the flow; `mlpipe score` drift on text embeddings; `dvc repro` on a text source. One text run,
shared by the module's tests."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows import servers
from flows.cli import app
from tests.conftest import BIN, REPO, cli, client_for, write_params
from tests.e2e.test_dvc import ran, sh
from tests.e2e.test_serve_model import http

pytestmark = pytest.mark.slow

NAME = "mlpipe-texts"
WORDS = {
    "sport": "ball goal team match score player win coach league referee".split(),
    "tech": "code chip data cloud server bug network compiler kernel cache".split(),
    "food": "bread soup salad pasta cheese apple sauce bake spice dinner".split(),
}
FILLER = "the a of and to in is it for on".split()

# a tiny Transformer (d_model 32, 2 heads, 1 block); 2 tune trials, 2 folds, 2 compress variants
TEXT = {
    "data": {"source": "csv:texts.csv", "text_column": "text", "vocab_size": 120, "max_length": 24},
    "model": {"kind": "auto", "d_model": 32, "heads": 2, "layers": 1, "ff": 64},
    "train": {"epochs": 4, "batch_size": 16, "lr": 0.01},
    "tune": {
        "n_trials": 2,
        "n_workers": 1,
        "epochs": [4, 4],
        "lr": [0.005, 0.02],
        "batch_size": [16],
        "d_model": [32],
        "heads": [2],
        "layers": [1, 1],
        "ff_mult": [2],
        "min_resource": 1,
        "pruner": "none",
    },
    "cv": {"folds": 2},
    "compress": {"variants": ["int8", "distilled"], "student_epochs": 2, "repeats": 3},
    "explain": {"samples": 20},
    "promote": {"accuracy_floor": 0.4},
}


def texts(n_per_class: int = 60, seed: int = 0) -> pd.DataFrame:
    """Three classes told apart by their words, with shared filler words; every row unique (a row number)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_per_class * len(WORDS)):
        label = list(WORDS)[i % len(WORDS)]
        words = [*rng.choice(WORDS[label], 4), *rng.choice(FILLER, 3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" n{i}", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("textflow")
    texts().to_csv(root / "texts.csv", index=False)
    write_params(root, **TEXT)
    r = cli("run", cwd=root, env={"PREFECT_API_URL": prefect_api}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client_for(root)
    return root, r


@pytest.fixture(scope="module")
def champion(text_run):
    import mlflow

    root, _ = text_run
    client_for(root)
    return mlflow.pyfunc.load_model(f"models:/{NAME}@champion")


def test_text_run_tunes_cross_validates_compresses_and_promotes(text_run, champion):
    root, r = text_run
    assert f"{NAME} v" in r.stdout and "promoted" in r.stdout
    client = client_for(root)
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert (root / "data/prepared/tokenizer.json").exists() and meta["text"]
    trials = pd.read_csv(root / "reports/tune/trials.csv")
    assert len(trials) == 2 and {"params_d_model", "params_layers"} <= set(trials.columns)
    assert len(json.loads((root / "reports/cv/cv_folds.json").read_text())["folds"]) == 2
    variants = {v.tags["variant"]: v for v in client.search_model_versions(f"name='{NAME}'")}
    assert set(variants) == {"fp32", "int8", "distilled"}
    assert variants["int8"].tags["mlpipe.method"].startswith("onnxruntime dynamic int8")
    champ = client.get_model_version_by_alias(NAME, "champion")
    assert champ.tags["mlpipe.decision"] == "promoted" and champ.tags["mlpipe.data_hash"] == meta["content_hash"]
    assert champ.tags["mlpipe.baseline_best"] == "tfidf"

    # the champion is a raw-string classifier: its signature is one string column, `text`
    schema = champion.metadata.get_input_schema()
    assert schema.input_names() == ["text"] and str(schema.input_types()[0]) == "DataType.string"
    test = pd.read_parquet(root / "data/prepared/texts_test.parquet")
    y = np.load(root / "data/prepared/y_test.npy")
    out = champion.predict(pd.DataFrame({"text": test["text"].astype(str)}))
    acc = (out["label"].to_numpy() == y).mean()
    assert acc == pytest.approx(float(champ.tags["mlpipe.test_accuracy_measured"]), abs=1e-6)
    assert acc > 0.4  # three classes: better than chance

    # every registered variant (the fp32 file and the int8 ONNX one) takes the same raw strings
    import mlflow

    for variant in ("fp32", "int8"):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{variants[variant].version}")
        acc_v = (model.predict(pd.DataFrame({"text": test["text"]}))["label"].to_numpy() == y).mean()
        assert acc_v == pytest.approx(float(variants[variant].tags["test_accuracy"]), abs=1e-6), variant


def test_mlflow_models_serve_and_mlpipe_predict_answer_raw_strings(text_run, champion):
    root, _ = text_run
    few = ["goal team win the match", "kernel chip cache on a server", "soup and bread for dinner", "unseen words zz"]
    want = champion.predict(pd.DataFrame({"text": few}))

    # `mlpipe predict` on a text file, one text per line
    (root / "few.txt").write_text("\n".join(few) + "\n")
    r = cli("predict", "--model", f"models:/{NAME}@champion", "few.txt", cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    got = pd.read_csv(pd.io.common.StringIO(r.stdout))
    assert list(got["class"]) == list(want["class"])
    assert np.allclose(got["confidence"], want["confidence"], atol=1e-4)

    # a bare `mlflow models serve` (the shipped code, no mlpipe CLI) in a subprocess, as a user starts it
    port = servers.free_port()
    log = root / "mlflow-serve.log"
    cmd = [servers.tool("mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PATH": f"{BIN}:{os.environ['PATH']}"}
    pid = servers.launch("mlflow-serve", [*cmd, "-h", "127.0.0.1", "-p", str(port)], log, env=env, cwd=root)
    srv = servers.Server("mlflow-serve", f"http://127.0.0.1:{port}", pid, log)
    try:
        servers.wait_healthy(srv, "/ping", timeout=120)
        bodies = [
            {"inputs": few},
            {"dataframe_split": {"columns": ["text"], "data": [[t] for t in few]}},
            {"dataframe_records": [{"text": t} for t in few]},
        ]
        for body in bodies:
            status, _, answer = http(srv.url + "/invocations", body)
            assert status == 200, (body, answer, servers.tail(log, 30))
            preds = (answer if isinstance(answer, dict) else json.loads(answer))["predictions"]
            assert [p["class"] for p in preds] == list(want["class"]), body
            assert np.allclose([p["confidence"] for p in preds], want["confidence"], atol=1e-5)
        status, _, answer = http(srv.url + "/invocations", {"dataframe_split": {"columns": ["body"], "data": [["x"]]}})
        assert status == 400, answer
    finally:
        servers.stop(pid)


def test_mlpipe_score_flags_drift_of_text_embeddings(text_run, monkeypatch):
    """`mlpipe score` on texts checks drift on the model's penultimate-layer (pooled) embeddings against the
    training rows logged with the version: new texts of the same kind pass, texts of other words are flagged."""
    root, _ = text_run
    other = "river mountain forest cloud rain snow valley lake storm desert".split()
    rng = np.random.default_rng(2)
    shifted = [" ".join(rng.choice(other, 7)) for _ in range(120)]
    texts(40, seed=1).to_csv(root / "same.csv", index=False)
    pd.DataFrame({"text": shifted}).to_csv(root / "shifted.csv", index=False)
    monkeypatch.chdir(root)  # the CLI in-process (tests/e2e/test_score.py): no interpreter start per command
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, want in (("same.csv", "drift check: no drift"), ("shifted.csv", "drift check: DRIFTED")):
        r = CliRunner().invoke(app, ["score", name, "--out", f"{name}.parquet", "--model", f"models:/{NAME}@champion"])
        said = " ".join(r.output.split())
        assert r.exit_code == 0, said[-3000:]
        assert want in said and "embeddings columns" in said, (name, said[-3000:])
        assert len(pd.read_parquet(root / f"{name}.parquet")) == 120


def test_vit_on_digits_through_the_flow(tmp_path, prefect_api):
    """model.kind=vit on 8x8 digits (4 patches of 4x4), tune/cv/compress/baseline off: trains, evaluates, registers.
    Five epochs of one block reach ~0.55 test accuracy (chance 0.1); benchmarks/vit.py has the real figures."""
    write_params(tmp_path)
    sets = {
        "model.kind": "vit",
        "model.d_model": 64,
        "model.heads": 4,
        "model.layers": 1,
        "model.ff": 128,
        "train.epochs": 5,
        "train.lr": 0.01,
        "tune.enabled": "false",
        "cv.enabled": "false",
        "compress.enabled": "false",
        "explain.enabled": "false",
        "baseline.enabled": "false",
        "promote.accuracy_floor": 0.3,
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    r = cli("run", *args, cwd=tmp_path, env={"PREFECT_API_URL": prefect_api}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = client_for(tmp_path)
    champ = client.get_model_version_by_alias("mlpipe-digits", "champion")
    assert champ.tags["variant"] == "fp32" and champ.tags["mlpipe.decision"] == "promoted"
    import mlflow

    model = mlflow.pyfunc.load_model("models:/mlpipe-digits@champion")
    X = np.load(tmp_path / "data/prepared/X_test.npy")
    y = np.load(tmp_path / "data/prepared/y_test.npy")
    acc = (model.predict(X)["label"].to_numpy() == y).mean()
    metrics = json.loads((tmp_path / "reports/eval/metrics.json").read_text())
    assert acc == pytest.approx(metrics["test_accuracy"]) and acc > 0.3
    run = client.get_run(champ.tags["mlpipe.run_id"])
    assert run.data.params.get("model.kind") == "vit"


def test_dvc_repro_on_a_text_source(tmp_path):
    """`dvc repro` of the data stages on a text CSV: ingest (tokenizer fitted, token ids written) and the text
    GX gate run, and a second repro runs nothing (the BPE tokenizer and the prepared data are reproducible).
    The whole stage graph under `dvc repro` and re-runs after a parameter change are tests/e2e/test_dvc.py
    (digits); the text run through every stage is above."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("components", "flows"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", proj)
    texts().to_csv(proj / "texts.csv", index=False)
    write_params(proj, data=TEXT["data"])
    sh("git", "init", "-q", cwd=proj)
    sh(str(BIN / "dvc"), "init", "-q", cwd=proj)

    first = sh(str(BIN / "dvc"), "repro", "validate", cwd=proj)
    assert ran(first) == ["ingest", "validate"]
    assert (proj / "data/prepared/tokenizer.json").exists()
    assert json.loads((proj / "reports/validation/report.json").read_text())["success"] is True
    X = np.load(proj / "data/prepared/X_train.npy")
    assert X.dtype == np.int32 and X.shape[1] == 24

    second = sh(str(BIN / "dvc"), "repro", "validate", cwd=proj)
    assert ran(second) == [] and "up to date" in second
