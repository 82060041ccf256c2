"""Why is this the champion: one real `mlpipe run` (shrunk: 2 epochs, 2 CV folds, int8 only, no tuning
or baseline), then `mlpipe lineage` of its champion and of the version it did not choose, the model
cards the register stage wrote, and the MLflow UI in headless Chromium: the model page shows the
card, the experiment opens on its runs."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from components import tracking
from components.config import TrackingConfig
from flows import servers
from flows.cli import app
from tests.conftest import REPO, cli, client_for

pytestmark = pytest.mark.slow

RUN = [
    f"--set={kv}"
    for kv in (
        "train.epochs=2",
        "tune.enabled=false",
        "cv.folds=2",
        "baseline.enabled=false",
        "compress.variants=[int8]",
        "compress.repeats=3",
        "compress.max_accuracy_drop=1.0",  # int8 is always registered: a second version the gate may not choose
        "promote.accuracy_floor=0.5",
        "explain.samples=60",
        "explain.steps=16",
    )
]
NAME = "mlpipe-digits"
CHROMIUM = "/usr/bin/chromium"
LINKS = [
    "source",
    "data",
    "validation",
    "baseline",
    "tuning",
    "cv",
    "training",
    "evaluation",
    "attributions",
    "compression",
    "promotion",
    "card",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api) -> Path:
    folder = tmp_path_factory.mktemp("lineage")
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    r = cli("run", *RUN, cwd=folder, env={"PREFECT_API_URL": prefect_api}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def versions(project) -> dict:
    """{"champion": version, "other": version, "fp32": version}"""
    client = client_for(project)
    champ = client.get_model_version_by_alias(NAME, "champion").version
    found = {v.tags["variant"]: v.version for v in client.search_model_versions(f"name='{NAME}'")}
    assert set(found) == {"fp32", "int8"}
    (other,) = [v for v in found.values() if v != champ]
    return {"champion": str(champ), "other": str(other), "fp32": str(found["fp32"])}


def lineage_json(project: Path, uri: str, monkeypatch, tracking: str | None = None) -> dict:
    """`mlpipe lineage --json URI` in this process (the CLI command itself, without a new interpreter)."""
    monkeypatch.chdir(project)
    r = CliRunner().invoke(app, ["lineage", "--json", uri], env={"MLFLOW_TRACKING_URI": tracking})
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_lineage_of_the_champion_names_every_link_and_each_exists(project, versions, monkeypatch):
    monkeypatch.chdir(project)
    r = CliRunner().invoke(app, ["lineage", f"models:/{NAME}@champion"], env={"MLFLOW_TRACKING_URI": None})
    assert r.exit_code == 0, r.output
    text = r.output
    assert text.startswith(f"models:/{NAME}@champion = {NAME} v{versions['champion']} (")
    assert "why: the champion: promoted: " in text
    assert [m for m in re.findall(r"^  (\w+) ", text, re.M)] == LINKS

    lin = lineage_json(project, f"models:/{NAME}@champion", monkeypatch)
    assert [link["link"] for link in lin["chain"]] == LINKS and lin["is_champion"]
    assert lin["version"] == versions["champion"] and lin["alias"] == "champion"
    status = {link["link"]: link["status"] for link in lin["chain"]}
    assert status == {**dict.fromkeys(LINKS, "ok"), "baseline": "disabled", "tuning": "disabled"}, status
    client = client_for(project)
    assert client.get_run(lin["pipeline_run"]["run_id"]).info.status == "FINISHED"
    for link in lin["chain"]:
        run = client.get_run(link["run_id"])  # every run id resolves
        assert run.data.tags["mlpipe.stage"] == link["stage"]
        stored = _artifacts(client, link["run_id"])
        assert set(link["artifacts"]) <= stored, link["link"]
        assert link["artifacts"] or link["status"] == "disabled" or link["link"] == "data", link["link"]
        for f in link["files"]:
            assert Path(f).is_file(), f

    by = {link["link"]: link for link in lin["chain"]}
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert by["data"]["facts"]["data_hash"] == meta["content_hash"] == by["data"]["facts"]["ingest_data_hash"]
    assert by["data"]["facts"]["dvc"] is None and "no dvc.lock" in by["data"]["summary"]
    assert by["data"]["files"] == [str(project / "data/prepared/meta.json")]
    assert "validation/report.json" in by["validation"]["artifacts"]
    cv = json.loads((project / "reports/cv/cv_metrics.json").read_text())
    assert (
        by["cv"]["facts"]["cv_accuracy_mean"] == pytest.approx(cv["accuracy_mean"])
        and len(by["cv"]["fold_run_ids"]) == 2
    )
    ev = json.loads((project / "reports/eval/metrics.json").read_text())
    assert by["evaluation"]["facts"]["test_accuracy"] == pytest.approx(ev["test_accuracy"])
    assert by["training"]["facts"]["config_artifact"] == f"runs:/{lin['pipeline_run']['run_id']}/config.json"
    assert "config.json" in _artifacts(client, lin["pipeline_run"]["run_id"])
    assert all(client.get_run(f).data.tags["mlpipe.stage"] == "cv.fold" for f in by["cv"]["fold_run_ids"])
    assert {"explain/class_maps.png", "explain/examples.png"} <= set(by["attributions"]["artifacts"])
    assert by["compression"]["facts"]["variants"] == ["fp32", "int8"]
    promo = by["promotion"]["facts"]
    assert promo["decision"] == "promoted" and promo["champion_before"] == "none" and promo["reasons"]
    assert promo["register_run_id"] == by["card"]["run_id"] == by["promotion"]["run_id"]
    assert lin["experiment_url"].endswith("workflowType=machine_learning") and lin["version_url"] is None  # local store


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_lineage_of_a_version_not_promoted_shows_why(project, versions, monkeypatch, tmp_path):
    lin = lineage_json(project, f"models:/{NAME}/{versions['other']}", monkeypatch)
    assert not lin["is_champion"] and lin["champion"] == versions["champion"]
    assert lin["why"].startswith(f"not the champion (the champion is v{versions['champion']}): not chosen: ")
    assert "promote.objective accuracy chose" in lin["why"]
    promo = {link["link"]: link for link in lin["chain"]}["promotion"]["facts"]
    assert promo["decision"] == "not chosen" and promo["champion_now"] == versions["champion"]
    if lin["variant"] == "int8":  # attributions are of the fp32 model it was made from
        attributions = {link["link"]: link for link in lin["chain"]}["attributions"]
        assert attributions["status"] == "ok" and "of the fp32 model" in attributions["summary"]

    monkeypatch.chdir(project)
    for bad, says in ((f"models:/{NAME}/99", "has no version 99"), ("runs:/abc/model", "lineage needs a registered")):
        r = CliRunner().invoke(app, ["lineage", bad], env={"MLFLOW_TRACKING_URI": None})
        assert r.exit_code == 2 and "error:" in r.output and says in r.output, r.output
    monkeypatch.chdir(tmp_path)  # a folder without a store: lineage reads, it creates nothing
    r = CliRunner().invoke(app, ["lineage", f"models:/{NAME}@champion"], env={"MLFLOW_TRACKING_URI": None})
    assert r.exit_code == 2 and "no MLflow store here" in r.output and not (tmp_path / "mlflow.db").exists()


def _table(text: str, first: str) -> dict[str, list[str]]:
    """A Markdown table's rows under a header starting `| first |` -> {first cell: the other cells}."""
    lines = text[text.index(f"| {first} |") :].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_card_metrics_equal_the_evaluation_and_the_card_is_logged(project, versions):
    client = client_for(project)
    v = client.get_model_version(NAME, versions["fp32"])
    desc = v.description
    ev = json.loads((project / "reports/eval/metrics.json").read_text())
    cv = json.loads((project / "reports/cv/cv_metrics.json").read_text())
    metrics = _table(desc, "metric")
    assert metrics["accuracy"] == [
        f"{ev['test_accuracy']:.4f}",
        f"{cv['accuracy_mean']:.4f} +- {cv['accuracy_std']:.4f}",
    ]
    assert metrics["macro F1"][0] == f"{ev['test_f1_macro']:.4f}"
    assert metrics["ROC AUC (one-vs-rest, macro)"][0] == f"{ev['test_roc_auc_ovr']:.4f}"
    # per class: the evaluation's confusion matrix gives the same precision and recall
    cm = np.array(json.loads((project / "reports/eval/confusion_matrix.json").read_text())["matrix"])
    per_class = _table(desc, "class")
    for i, c in enumerate(json.loads((project / "data/prepared/meta.json").read_text())["classes"]):
        precision = cm[i, i] / max(cm[:, i].sum(), 1)
        assert per_class[c][:2] == [f"{precision:.3f}", f"{cm[i, i] / cm[i].sum():.3f}"], c
        assert per_class[c][3] == str(cm[i].sum())
    assert "## The gate's decision" in desc and "## Known limits" in desc and "raw text is not accepted" in desc
    # the same card is an artefact of the register run, which the version's tag names
    uri = v.tags["mlpipe.card"]
    run_id, path = uri.removeprefix("runs:/").split("/", 1)
    assert client.get_run(run_id).data.tags["mlpipe.stage"] == "register"
    logged = Path(client.download_artifacts(run_id, path)).read_text()
    assert logged == desc and len(desc) <= 5000
    explain_run = json.loads((project / "reports/explain/attributions.json").read_text())["run_id"]
    assert f"get-artifact?path=explain/class_maps.png&run_uuid={explain_run}" in desc


def _chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    from tests.e2e.test_servers import CHROME_FLAGS

    return subprocess.run(
        [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *mode, url], capture_output=True, text=True, timeout=120
    )


def test_mlflow_ui_shows_the_card_and_opens_the_experiment_on_its_runs(project, versions, monkeypatch, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (`make test` installs it as root)")
    srv = servers.launch_mlflow(
        tmp_path / "server",
        servers.free_port(),
        backend=f"sqlite:///{project / 'mlflow.db'}",
        artifacts=str(project / "mlartifacts"),
        workers=1,
    )
    try:
        servers.wait_healthy(srv, "/health", timeout=120)
        client = client_for(project)
        exp = client.get_experiment_by_name("mlpipe")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        old = client.create_experiment("made-before-the-tags")  # an older experiment gets them at the next setup
        tracking.setup(
            TrackingConfig(uri=f"sqlite:///{project / 'mlflow.db'}", experiment="made-before-the-tags"), project
        )
        assert client.get_experiment(old).tags == tracking.EXPERIMENT_TAGS
        lin = lineage_json(project, f"models:/{NAME}@champion", monkeypatch, tracking=srv.url)
        assert lin["version_url"] == f"{srv.url}/#/models/{NAME}/versions/{versions['champion']}"
        assert lin["pipeline_run"]["url"].startswith(f"{srv.url}/#/experiments/{exp.experiment_id}/runs/")
        assert all(link["url"].startswith(srv.url) for link in lin["chain"] if link["run_id"])

        # the model page: the card as the version's description, its attribution maps served inline
        shot = tmp_path / "mlflow-model-card.png"  # the screenshots stay in the test's tmp folder
        dom = _chromium(lin["version_url"], tmp_path / "p1", "--dump-dom", f"--screenshot={shot}")
        assert dom.returncode == 0 and shot.stat().st_size > 20_000, dom.stderr[-2000:]
        assert f"Model card: {NAME} v{versions['champion']}" in dom.stdout and "The gate's decision" in dom.stdout
        img = re.search(r'<img src="(get-artifact\?path=explain/class_maps\.png&amp;run_uuid=\w+)"', dom.stdout)
        assert img, "the card's attribution map is not on the model page"
        with urllib.request.urlopen(f"{srv.url}/{img.group(1).replace('&amp;', '&')}", timeout=30) as r:
            assert r.read()[:8] == b"\x89PNG\r\n\x1a\n"

        # the experiment link opens on the runs table (not the GenAI overview), key metrics as columns
        shot = tmp_path / "mlflow-experiment-runs.png"
        dom = _chromium(lin["experiment_url"], tmp_path / "p2", "--dump-dom", f"--screenshot={shot}")
        assert dom.returncode == 0 and shot.stat().st_size > 20_000, dom.stderr[-2000:]
        assert "<title>Runs - Experiment" in dom.stdout, re.findall(r"<title>[^<]*", dom.stdout)
        # as model training: not the GenAI layout of the same page (its sidebar has judges, "Training runs")
        assert "Training runs" not in dom.stdout and "Judges" not in dom.stdout
        pipeline = client_for(project).get_run(lin["pipeline_run"]["run_id"]).info.run_name
        assert pipeline in dom.stdout
        for column in ("test_accuracy", "test_f1_macro", "cv_accuracy_mean"):  # off-screen columns are not drawn
            assert re.search(rf'role="columnheader"[^>]*col-id="metrics.`{column}`"', dom.stdout), column
    finally:
        servers.stop(srv.pid)
