"""Runs that cannot corrupt each other or the registry (real flows, a real Prefect server, a real
MLflow store): a stale cache after another source ran in the same folder, two runs at once in
one folder, and the run lock's wait / --no-wait."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import BIN, STAGES_OFF, cli, client_for, sets

pytestmark = pytest.mark.slow
FAST = sets(*STAGES_OFF, "train.epochs=30", "promote.accuracy_floor=0.5", "model.hidden=[16]")


def blobs_csv(path, labels: tuple[str, str, str], seed: int = 0) -> None:
    """Three well-separated blobs in 6 features; `labels` names blob 0, 1, 2 (permute them for
    a source of the same shape whose labels disagree)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, name in enumerate(labels):
        centre = np.zeros(6)
        centre[k] = 6.0
        for x in rng.normal(centre, 1.0, size=(80, 6)):
            rows.append(",".join(f"{v:.5f}" for v in x) + f",{name}")
    path.write_text("f0,f1,f2,f3,f4,f5,label\n" + "\n".join(rows) + "\n")


def model_hash(project) -> str:
    import hashlib

    return hashlib.sha256((project / "models/model.pt").read_bytes()).hexdigest()[:16]


def champion_accuracy(client, name: str, project) -> float:
    """The champion of `name`, loaded as a user loads it, on the test split now in data/prepared."""
    from components import data, registry

    ds = data.load_prepared(project / "data/prepared")
    pred = registry.load(f"models:/{name}@champion").predict(ds.X_test)
    return float((pred["label"].to_numpy() == ds.y_test).mean())


def test_a_b_a_in_one_folder_never_promotes_the_other_sources_model(project, prefect_api):
    """Source a, then b (same shape, labels permuted), then a again: the third run must not reuse
    b's model or metrics from the cache; a's champion keeps predicting a's labels."""
    api = {"PREFECT_API_URL": prefect_api}
    blobs_csv(project / "a.csv", ("x", "y", "z"))
    blobs_csv(project / "b.csv", ("y", "z", "x"))
    a, b = ["--set", "data.source=csv:a.csv"], ["--set", "data.source=csv:b.csv"]

    r = cli("run", *FAST, *a, cwd=project, env=api)
    assert r.returncode == 0, r.stderr[-3000:]
    hash_a = model_hash(project)
    r = cli("run", *FAST, *b, cwd=project, env=api)
    assert r.returncode == 0, r.stderr[-3000:]
    assert model_hash(project) != hash_a
    r = cli("run", *FAST, *a, cwd=project, env=api)
    assert r.returncode == 0, r.stderr[-3000:]

    client = client_for(project)
    champ = client.get_model_version_by_alias("mlpipe-a", "champion")
    assert champ.tags["mlpipe.model_hash"] == hash_a == model_hash(project)
    assert champion_accuracy(client, "mlpipe-a", project) > 0.8  # b's model scores about 0 here
    promotion = json.loads((project / "reports/promotion.json").read_text())
    assert promotion["model_name"] == "mlpipe-a" and promotion["champion"] == str(champ.version)
    # every version of a's model holds a's data, and nothing was registered twice for one file
    versions = client.search_model_versions("name='mlpipe-a'")
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert {v.tags["mlpipe.data_hash"] for v in versions} == {meta["content_hash"]}
    assert len({v.tags["mlpipe.model_hash"] for v in versions}) == len(versions)


def test_two_runs_at_once_in_one_folder_each_register_their_own_data(project, prefect_api):
    api = {"PREFECT_API_URL": prefect_api}
    env = {**api, "PATH": f"{BIN}:/usr/bin:/bin", "PREFECT_HOME": str(project / ".prefect")}
    procs = []
    for source in ("sklearn:digits", "sklearn:breast_cancer"):
        procs.append(
            subprocess.Popen(
                # 3 epochs: the check is on which data each version holds, not on what it learned
                [str(BIN / "mlpipe"), "run", *FAST, *sets("train.epochs=3", f"data.source={source}")],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )
        )
        time.sleep(1.0)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert any("waiting for `mlpipe run" in out + err for out, err in outs), "the second run should have waited"

    client = client_for(project)
    from components import data
    from components.config import load_config

    for (out, _), name in zip(outs, ("digits", "breast_cancer")):
        cfg = load_config(project / "params.yaml", [f"data.source=sklearn:{name}"])
        truth = data.ingest(cfg.data, cfg.seed).meta.content_hash  # what this source's data hashes to
        (v,) = client.search_model_versions(f"name='mlpipe-{name}'")
        assert v.tags["mlpipe.data_hash"] == truth
        assert truth in out, f"the summary of the {name} run names another data hash"


def test_the_run_lock_waits_for_its_holder_or_fails_at_once_naming_it(project):
    from flows.locks import project_lock
    from flows.paths import Paths

    with project_lock(Paths(project), "test holder", say=lambda m: None):
        r = cli("stage", "ingest", "--no-wait", cwd=project, timeout=120)
        assert r.returncode == 2
        assert "test holder" in r.stderr and "--no-wait" in r.stderr and not (project / "data/prepared").exists()
        waiting = subprocess.Popen(
            [str(BIN / "mlpipe"), "stage", "ingest"],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(8)
        assert waiting.poll() is None and not (project / "data/prepared").exists()  # still waiting
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err[-2000:]
    assert "waiting for `test holder`" in err and (project / "data/prepared/meta.json").exists()
    # a holder that died (kill -9) is taken over at once
    holder = subprocess.Popen(
        [
            str(BIN / "python"),
            "-c",
            "import sys, time\nfrom flows.locks import project_lock\n"
            "from flows.paths import Paths\nwith project_lock(Paths(sys.argv[1]), 'doomed'):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(project),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    r = cli("stage", "ingest", "--no-wait", cwd=project, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "taking over the run lock of `doomed`" in r.stderr
