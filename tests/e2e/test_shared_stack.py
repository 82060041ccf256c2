"""Several workers on one shared stack, for real: a Prefect server on Postgres with a process work pool
served by two workers, an MLflow server on Postgres, Optuna's RDB storage on Postgres (fresh databases,
dropped afterwards). Three deployments, each with its own project folder, run at the same time:

- east and west: the digits data in two folders (two machines' disks); their tune stages work on one
  Optuna study (the same data and search space give the same study name) and register into one model;
- wine: another dataset, another registered model.

Afterwards every registered version traces to its own project's data, the shared study holds exactly
its budget of trials (none lost, none run twice), and the promotions took the cluster-wide slot one
at a time. The GPU slots (flows/gpus.py) are checked on the same Prefect server, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flows import servers
from tests.conftest import BIN, PG, REPO, postgres_databases, write_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

POOL = "mlpipe-shared"
N_TRIALS = 4
TUNE = {
    "n_trials": N_TRIALS,
    "n_workers": 1,
    "pruner": "none",
    "epochs": [1, 2],
    "width": [8, 16],
    "depth": [1, 1],
    "batch_size": [64],
    "min_resource": 1,
}
TINY = {
    "model": {"channels": [8], "hidden": [16]},
    "train": {"epochs": 2, "checkpoint_every": 0},
    "tune": TUNE,
    "baseline": {"enabled": False},
    "cv": {"enabled": False},
    "compress": {"enabled": False},
    "explain": {"enabled": False},
    "promote": {"accuracy_floor": 0.0},
}
PROJECTS = {"east": "sklearn:digits", "west": "sklearn:digits", "wine": "sklearn:wine"}


@pytest.fixture(scope="module")
def dbs():
    with postgres_databases("mlflow", "prefect", "optuna") as names:
        yield names


@pytest.fixture(scope="module")
def stack(dbs, tmp_path_factory):
    """The servers on Postgres (started in parallel) and the work pool."""
    state = tmp_path_factory.mktemp("stack")
    mlflow = servers.launch_mlflow(
        state, servers.free_port(), backend=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{dbs['mlflow']}"
    )
    prefect = servers.launch_prefect(
        state, servers.free_port(), f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbs['prefect']}", services=False
    )
    mlflow, prefect = servers.start_both(mlflow, prefect, timeout=180)
    yield {
        "state": state,
        "mlflow": mlflow.url,
        "prefect": prefect.url,
        "optuna": f"postgresql://postgres@127.0.0.1:5432/{dbs['optuna']}",
    }
    servers.stop(mlflow.pid, prefect.pid)


def _env(stack: dict, home: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": stack["prefect"],
        "MLFLOW_TRACKING_URI": stack["mlflow"],
        "OPTUNA_STORAGE": stack["optuna"],  # what every worker's runs tune on (config.py reads it)
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
    }


@pytest.fixture(scope="module")
def runs(stack, tmp_path_factory):
    """Three deployments on the pool, one flow run each, all scheduled at once; two workers take them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.config import load_config
    from flows import deploy

    base = tmp_path_factory.mktemp("projects")
    roots = {}
    with temporary_settings({PREFECT_API_URL: stack["prefect"]}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        ids = {}
        for name, source in PROJECTS.items():
            root = roots[name] = base / name
            root.mkdir()
            tune = {**TUNE, "enabled": name != "wine"}
            params = write_params(
                root,
                data={"source": source},
                schedule={"name": name, "cron": None, "work_pool": POOL},
                **{**TINY, "tune": tune},
            )
            deploy.to_pool(load_config(params), params, [], root)
            ids[name] = run_deployment(f"mlpipe/{name}", timeout=0).id
    workers = []
    for i in (1, 2):
        home = stack["state"] / f"worker-{i}"
        cmd = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", f"worker-{i}", "--limit", "2"]
        workers.append(servers.launch(f"worker-{i}", cmd, home / "worker.log", _env(stack, home), cwd=stack["state"]))
    try:
        states = _wait(stack, ids, timeout=360)
    finally:
        servers.stop(*workers)
    logs = "\n".join(servers.tail(stack["state"] / f"worker-{i}" / "worker.log", 40) for i in (1, 2))
    assert all(s == "COMPLETED" for s in states.values()), (states, logs)
    return {"roots": roots, "ids": ids, "logs": logs}


def _wait(stack: dict, ids: dict, timeout: float) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: stack["prefect"]}), get_client(sync_client=True) as client:
        while True:
            runs = {name: client.read_flow_run(i) for name, i in ids.items()}
            if all(r.state.is_final() for r in runs.values()) or time.monotonic() > deadline:
                return {name: r.state.type.name for name, r in runs.items()}
            time.sleep(1)


def _client(stack: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(stack["mlflow"], registry_uri=stack["mlflow"])


def test_the_runs_ran_at_once_on_both_workers(stack, runs):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack["prefect"]}), get_client(sync_client=True) as client:
        fr = {name: client.read_flow_run(i) for name, i in runs["ids"].items()}
    by_worker = {
        i: [
            name
            for name in fr
            if str(runs["ids"][name]) in servers.tail(stack["state"] / f"worker-{i}" / "worker.log", 400)
        ]
        for i in (1, 2)
    }
    assert by_worker[1] and by_worker[2], by_worker  # each worker ran at least one of the three
    east, west = fr["east"], fr["west"]
    assert east.start_time < west.end_time and west.start_time < east.end_time, "east and west did not overlap"


def _parent(client, runs: dict, name: str):
    """The pipeline run of the project's flow run (tagged with the Prefect flow-run id)."""
    exp = client.get_experiment_by_name("mlpipe").experiment_id
    (parent,) = client.search_runs([exp], f"tags.`mlpipe.prefect_flow_run_id` = '{runs['ids'][name]}'")
    return parent


def test_every_version_traces_to_its_own_data(stack, runs):
    from components import data

    client = _client(stack)
    hashes = {}
    for name, root in runs["roots"].items():
        meta = data.load_meta(root / "data" / "prepared")
        hashes[name] = meta.content_hash
        parent = _parent(client, runs, name)
        assert parent.data.tags["mlpipe.data_hash"] == meta.content_hash
        assert parent.data.tags["mlpipe.source"] == PROJECTS[name]
        # the version the run registered, or reused (east and west may train the same model on the same data)
        v = client.get_model_version(
            f"mlpipe-{data.dataset_name(meta.source)}", parent.data.tags["mlpipe.registered_version"]
        )
        assert v.tags["mlpipe.data_hash"] == meta.content_hash
    assert hashes["east"] == hashes["west"] != hashes["wine"]
    for model, name in (("mlpipe-digits", "east"), ("mlpipe-wine", "wine")):
        versions = client.search_model_versions(f"name = '{model}'")
        assert versions
        for v in versions:  # each version's own run saw the data its tag names
            assert v.tags["mlpipe.data_hash"] == hashes[name]
            assert client.get_run(v.tags["mlpipe.run_id"]).data.tags["mlpipe.data_hash"] == hashes[name]


def test_the_shared_study_holds_its_budget_no_trial_lost_or_run_twice(stack, runs):
    import optuna

    from components import tune

    client = _client(stack)
    studies = {_parent(client, runs, name).data.tags["mlpipe.tune.study"] for name in ("east", "west")}
    (study_name,) = studies  # both tune stages worked on one study
    study = optuna.load_study(study_name=study_name, storage=tune._with_driver(stack["optuna"]))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == N_TRIALS, [(t.number, t.state.name) for t in trials]  # the budget, not one per stage
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))
    assert sum(bool(t.user_attrs.get("default_config")) for t in trials) == 1  # queued once, not per stage
    # every trial is one MLflow child run, under the tune run of the stage that ran it
    trial_runs = client.search_runs(
        [client.get_experiment_by_name("mlpipe").experiment_id], f"tags.`optuna.study` = '{study_name}'"
    )
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs) == list(range(N_TRIALS))
    # between them the two stages ran the budget once: each trial under one of their tune runs (how many
    # each ran depends on who got there first)
    tune_runs = {
        name: client.search_runs(
            [client.get_experiment_by_name("mlpipe").experiment_id],
            f"tags.`mlpipe.stage` = 'tune' and tags.`mlflow.parentRunId` = '{_parent(client, runs, name).info.run_id}'",
        )[0].info.run_id
        for name in ("east", "west")
    }
    by_stage = {
        name: sum(r.data.tags["mlflow.parentRunId"] == rid for r in trial_runs) for name, rid in tune_runs.items()
    }
    assert sum(by_stage.values()) == N_TRIALS, by_stage
    print("trials run by each stage:", by_stage)


def test_promotions_took_the_slot_one_at_a_time(stack, runs):
    client = _client(stack)
    registers = client.search_runs(
        [client.get_experiment_by_name("mlpipe").experiment_id], "tags.`mlpipe.stage` = 'register'"
    )
    assert len(registers) == 3
    spans = sorted((r.info.start_time, r.info.end_time) for r in registers)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, spans  # the promotion slot (flows/locks.py) holds across the register stage
    # east and west gate into one model: the first found no champion, the second found the first's outcome
    # (reports/promotion.json of each project; an identical model reuses the version and is gated again)
    before = [json.loads((runs["roots"][n] / "reports" / "promotion.json").read_text()) for n in ("east", "west")]
    seen = sorted(str(b["champion_before"]) for b in before)
    versions = {v.version for v in client.search_model_versions("name = 'mlpipe-digits'")}
    assert seen[1] == "None" and seen[0] in versions, seen


# ---- GPU slots, on CPU: the limit without the devices ------------------------------------------------

HOLD = """
import json, sys, time
from flows import gpus
t0 = time.time()
with gpus.gpu_slot(1, 1, name=sys.argv[1]):
    t1 = time.time()
    time.sleep(float(sys.argv[2]))
    t2 = time.time()
print(json.dumps([t0, t1, t2]))
"""


def test_two_holders_of_one_gpu_slot_queue(stack):
    name = f"gpu:test-{uuid.uuid4().hex[:6]}"
    env = {**_env(stack, stack["state"] / "gpu-home"), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", HOLD, name, "3"], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    spans = sorted(json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1]) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    (a0, a1, a2), (b0, b1, b2) = sorted(spans, key=lambda s: s[1])
    assert b0 < a2, "the second holder did not ask while the first held the slot"
    assert b1 >= a2, f"both held the one slot at once: {spans}"


def test_gpu_slot_asks_for_more_than_the_node_has(stack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.errors import ConfigError
    from flows import gpus

    with temporary_settings({PREFECT_API_URL: stack["prefect"]}):
        with pytest.raises(ConfigError, match=r"train.gpus_per_run: 2 is more than the 1 slot"):
            with gpus.gpu_slot(2, 1, name=f"gpu:test-{uuid.uuid4().hex[:6]}"):
                pass


def test_devices_are_claimed_one_holder_each(tmp_path):
    from components.errors import MlpipeError
    from flows import gpus

    with gpus.claim_devices(1, ["0", "1"], tmp_path) as a, gpus.claim_devices(1, ["0", "1"], tmp_path) as b:
        assert a != b and sorted(a + b) == ["0", "1"]
        with pytest.raises(MlpipeError, match="1 free GPU"):
            with gpus.claim_devices(1, ["0", "1"], tmp_path):
                pass
    with gpus.claim_devices(2, ["0", "1"], tmp_path) as both:  # released on exit
        assert both == ["0", "1"]


def test_gpus_per_run_sets_the_ranks():
    from components.config import load_config
    from components.errors import ConfigError
    from flows.stages.train import _ranks

    with pytest.raises(ConfigError, match=r"nproc_per_node 2 is more ranks than train.gpus_per_run 1"):
        load_config(None, ["train.gpus_per_run=1", "train.distributed.nproc_per_node=2"])
    cfg = load_config(None, ["train.gpus_per_run=2"])
    assert _ranks(cfg, ["3", "5"]) == 2  # auto: one rank per device taken
    assert _ranks(cfg, None) == 1  # no slots (no Prefect server); this CPU machine: auto is 1
    assert _ranks(load_config(None, ["train.gpus_per_run=2", "train.distributed.nproc_per_node=1"]), ["3", "5"]) == 1


def _open_storage(url: str, barrier, out) -> None:
    from components import tune
    from components.config import load_config

    barrier.wait()
    try:
        tune.make_storage(load_config(None, [f"tune.storage={url}"]), Path("/nonexistent"))
        out.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.put(f"{type(e).__name__}: {e}")


def test_stages_opening_a_fresh_optuna_database_at_once_all_succeed():
    """Two machines' first tune stages on a new database: Optuna creates its tables in the first
    RDBStorage; unserialised, one of them fails with a duplicate key."""
    import multiprocessing as mp

    with postgres_databases("optuna_race") as names:
        ctx = mp.get_context("fork")
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [
            ctx.Process(target=_open_storage, args=(f"{PG}/{names['optuna_race']}", barrier, out)) for _ in range(4)
        ]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert results == ["ok"] * 4, results
