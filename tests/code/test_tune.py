"""components/tune.py on tiny data with real Optuna studies (in memory, journal file, Postgres)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from components import tune
from components.config import load_config
from components.errors import ConfigError, MlpipeError
from tests.conftest import PG, REPO, postgres_databases

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = [
    "tune.epochs=[2,3]",
    "tune.width=[4]",
    "tune.depth=[1,1]",
    "tune.batch_size=[16]",
    "tune.min_resource=1",
    "model.kind=mlp",
    "data.val_size=0.25",
    "tune.objective=holdout",
]


def tabular(n_per_class=20, k=3, d=4, seed=0) -> tune.TrialData:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    X = (rng.normal(size=(len(y), d)) + y[:, None] * 3.0).astype(np.float32)
    return tune.TrialData(X, y.astype(np.int64), "tabular", None, [str(i) for i in range(k)], [d])


@pytest.mark.parametrize(
    "item,key,words",
    [
        ("tune.lr=[0.01,0.001]", "tune.lr", "out of order"),
        ("tune.epochs=[30,5]", "tune.epochs", "out of order"),
        ("tune.dropout=[0.1,1.5]", "tune.dropout", "must lie in [0.0, 0.95]"),
        ("tune.weight_decay=[0,0.1]", "tune.weight_decay", "must lie in (0.0, 1.0]"),
        ("tune.width=[]", "tune.width", "non-empty"),
        ("cv.folds=1", "cv.folds", "greater than or equal to 2"),
    ],
)
def test_bad_bounds_name_the_key(item, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert key in str(e.value) and words in str(e.value)


def test_search_space_gives_valid_configs_for_both_archs():
    params = {
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "batch_size": 32,
        "epochs": 20,
        "dropout": 0.1,
        "width": 16,
        "depth": 3,
        "aug_strength": 2.0,
    }
    cfg = load_config(None)
    cnn = tune.search_space(optuna.trial.FixedTrial(params), cfg, "cnn")
    assert cnn["model.channels"] == [16, 32, 64] and cnn["train.epochs"] == 20
    assert cnn["augment.rotation"] == 2 * cfg.augment.rotation and cnn["augment.shift"] == 2 * cfg.augment.shift
    mlp = tune.search_space(optuna.trial.FixedTrial(params), cfg, "mlp")
    assert mlp["model.hidden"] == [16, 16, 16] and "model.channels" not in mlp
    new = tune.apply_overrides(cfg, cnn)
    assert new.model.channels == (16, 32, 64) and new.train.lr == 1e-3 and new.seed == cfg.seed


def test_default_config_is_a_new_studys_first_trial_and_trains_the_config_as_written():
    cfg = load_config(None)
    study = optuna.create_study()
    assert tune.enqueue_default(study, cfg, "cnn")
    trial = study.ask()
    assert trial.user_attrs["default_config"]
    overrides = tune.search_space(trial, cfg, "cnn")
    assert tune.apply_overrides(cfg, overrides) == cfg  # exactly the untuned config
    assert not tune.enqueue_default(study, cfg, "cnn")  # a resumed study is left as it is
    assert tune.default_params(cfg, "mlp") is None  # hidden [128] is not among tune.width's choices
    assert tune.default_params(load_config(None, ["train.lr=0.05"]), "cnn") is None  # outside tune.lr
    assert tune.default_params(load_config(None, ["model.channels=[32,32]"]), "cnn") is None  # widths do not double


def test_augment_scaling_is_clipped_to_allowed_range():
    cfg = load_config(None, ["augment.rotation=40"])
    assert tune.scale_augment(cfg.augment, 3.0)["augment.rotation"] == 45.0


def test_study_name_follows_data_and_search_space_not_budget():
    base = load_config(None)
    name = tune.study_name(base, "abc", "digits")
    assert name.startswith("mlpipe-digits-")
    assert tune.study_name(load_config(None, ["tune.n_trials=99", "tune.n_workers=1"]), "abc", "digits") == name
    assert tune.study_name(load_config(None, ["train.epochs=3", "train.lr=0.1"]), "abc", "digits") == name  # searched
    assert tune.study_name(load_config(None, ["train.patience=3"]), "abc", "digits") != name
    assert (
        tune.study_name(load_config(None, ["train.val_every=5"]), "abc", "digits") == name
    )  # trials validate every epoch
    assert tune.study_name(base, "abd", "digits") != name
    assert tune.study_name(load_config(None, ["tune.lr=[0.001,0.002]"]), "abc", "digits") != name


def test_objective_completes_and_records_attrs():
    cfg = load_config(None, TINY)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: tune.objective(t, cfg, tabular()), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE
    assert t.value == pytest.approx(t.user_attrs["val_loss"]) and 0 <= t.user_attrs["val_accuracy"] <= 1
    assert t.user_attrs["overrides"]["model.hidden"] == [4]


def test_cv_objective_is_the_mean_over_the_folds_of_the_cv_stage():
    from components import cv, models

    cfg = load_config(None, [*TINY, "tune.objective=cv", "cv.folds=3"])
    td = tabular()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: tune.objective(t, cfg, td), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and "best_epoch" not in t.user_attrs  # no single holdout run
    # the same config through the cv stage's function: the trial's value is its mean fold loss
    tcfg = tune.apply_overrides(cfg, t.user_attrs["overrides"])
    spec = models.model_args(tcfg.model, td.feature_shape, len(td.classes), td.kind)
    s = cv.summarize(cv.cross_validate(td.X, td.y, spec, tcfg, td.kind, td.value_range, td.classes))
    assert s["folds"] == 3
    assert t.value == pytest.approx(s["loss_mean"], rel=1e-4)
    assert t.user_attrs["val_accuracy"] == pytest.approx(s["accuracy_mean"]) and t.user_attrs[
        "val_accuracy_std"
    ] == pytest.approx(s["accuracy_std"])


def test_trial_child_run_holds_every_epoch_params_and_state(tmp_path):
    """Per-epoch metrics are buffered and written in one batch at the trial's end: the run
    must still hold each epoch at its own step."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from components import tracking
    from components.config import TrackingConfig
    from flows.stages.tune_worker import tracked_objective

    tracking.setup(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"), tmp_path)
    cfg = load_config(None, [*TINY, "tune.epochs=[3,3]", "train.patience=10"])
    study = optuna.create_study()
    with tracking.stage_run("tune", None) as tune_run:
        study.optimize(tracked_objective(cfg, tabular(), tune_run, None), n_trials=1)
    client = MlflowClient()
    (run,) = client.search_runs(
        [mlflow.get_experiment_by_name("mlpipe").experiment_id], "tags.`mlpipe.stage` = 'tune.trial'"
    )
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3] and history[0].timestamp <= history[-1].timestamp
    assert run.data.params["lr"] == str(study.trials[0].params["lr"]) and run.data.tags["optuna.state"] == "COMPLETE"
    assert run.data.tags["mlflow.parentRunId"] == tune_run and run.info.status == "FINISHED"
    assert run.data.metrics["best_epoch"] == study.trials[0].user_attrs["best_epoch"]


def test_nan_loss_prunes_with_reason_never_completes():
    cfg = load_config(None, TINY)
    td = tabular()
    td.X[3, 0] = np.nan  # normalization statistics become NaN, so does every loss
    study = optuna.create_study()
    study.optimize(lambda t: tune.objective(t, cfg, td), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(
        "diverged" in t.user_attrs["pruned_reason"] and "nan" in t.user_attrs["pruned_reason"] for t in study.trials
    )


def test_pruner_stops_training_between_epochs():
    cfg = load_config(None, [*TINY, "tune.epochs=[6,6]"])
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-9))  # every val_loss is above it
    study.optimize(lambda t: tune.objective(t, cfg, tabular()), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["pruned_at"] == 1 and list(t.intermediate_values) == [1]
    assert "epoch 1" in t.user_attrs["pruned_reason"]


def test_unrelated_errors_fail_the_trial():
    cfg = load_config(None, [*TINY, "model.kind=cnn"])  # cnn on tabular data: a config error, not a pruned trial
    study = optuna.create_study()
    with pytest.raises(MlpipeError, match="cnn needs image data"):
        study.optimize(lambda t: tune.objective(t, cfg, tabular()), n_trials=1)
    assert study.trials[0].state == TrialState.FAIL


def test_stale_running_trial_is_failed_and_retried(tmp_path):
    cfg = load_config(None, TINY)
    storage = tune.make_storage(cfg, tmp_path / "journal.log")
    study = tune.open_study(cfg, "s", storage)
    dead = study.ask()  # a worker took this trial and was killed
    dead.suggest_float("lr", 1e-3, 1e-2, log=True)
    lr = dead.params["lr"]
    study.tell(study.ask(), 0.5)
    assert tune.retry_stale(study, heartbeat=False) == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL and TrialState.WAITING in states.values()
    seen = []
    tune.run_one(study, lambda t: seen.append(t.suggest_float("lr", 1e-3, 1e-2, log=True)) or 1.0, 5, tmp_path / "lock")
    assert seen == [lr]
    retry = study.get_trials(states=(TrialState.COMPLETE,))[-1]
    assert retry.user_attrs["retry_of"] == dead.number


def test_budget_counts_finished_trials_of_earlier_runs(tmp_path):
    cfg = load_config(None)
    study = tune.open_study(cfg, "b", tune.make_storage(cfg, tmp_path / "journal.log"))
    for _ in range(3):
        tune.run_one(study, lambda t: t.suggest_float("x", 0, 1), 3, tmp_path / "lock")
    ran = 0
    while tune.run_one(study, lambda t: t.suggest_float("x", 0, 1), 5, tmp_path / "lock"):
        ran += 1
    assert ran == 2 and len(study.trials) == 5
    assert not tune.run_one(study, lambda t: 0.0, 5, tmp_path / "lock")


def test_best_params_roundtrip_and_foreign_data(tmp_path):
    cfg = load_config(None, TINY)
    study = optuna.create_study()
    study.optimize(lambda t: tune.objective(t, cfg, tabular()), n_trials=2)
    payload = tune.best_params(study, cfg, "h1")
    tune.write_best(tmp_path / "b.json", payload)
    tuned = tune.apply_best(load_config(None), tmp_path / "b.json", "h1")
    assert tuned.model.hidden == (4,) and tuned.train.lr == payload["params"]["lr"]
    with pytest.warns(UserWarning, match="tuned params ignored"):
        assert tune.apply_best(load_config(None), tmp_path / "b.json", "other") == load_config(None)
    assert tune.apply_best(load_config(None), tmp_path / "missing.json") == load_config(None)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(MlpipeError, match="not an mlpipe best-params file"):
        tune.apply_best(load_config(None), tmp_path / "bad.json")


def test_no_completed_trial_is_a_clear_error():
    cfg = load_config(None)
    study = optuna.create_study()
    study.tell(study.ask(), state=TrialState.PRUNED)
    with pytest.raises(MlpipeError, match=r"no trial .* completed \(1 pruned"):
        tune.best_params(study, cfg, "h")


# ---- several processes on one study ------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, time, optuna
    from components import tune
    from components.config import load_config
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_arg, root, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sets = [f"tune.storage={storage_arg}"] if storage_arg != "journal" else []
    cfg = load_config(None, sets)
    from pathlib import Path
    study = tune.open_study(cfg, "parallel", tune.make_storage(cfg, Path(root) / 'journal.log'), worker)
    (Path(root) / f"ready-{worker}").touch()  # both start together: on a fast machine one could finish all 12 first
    deadline = time.monotonic() + 60
    while not all((Path(root) / f"ready-{i}").exists() for i in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.01)
    def objective(t):
        time.sleep(0.05)
        return t.suggest_float("x", 0, 1)
    n = 0
    while tune.run_one(study, objective, 12, Path(root) / "budget.lock"):
        n += 1
    print(n)
""")


def run_two_workers(storage_arg: str, root) -> list[int]:
    """As the tune stage does: create the study (and a database's schema) first, then start workers."""
    cfg = load_config(None, [f"tune.storage={storage_arg}"] if storage_arg != "journal" else [])
    storage = tune.make_storage(cfg, Path(root) / "journal.log")
    tune.open_study(cfg, "parallel", storage)
    if hasattr(storage, "engine"):
        storage.engine.dispose()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, storage_arg, str(root), str(i)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [int(o[0].strip()) for o in outs]


def check_study(study: optuna.Study, per_worker: list[int]) -> None:
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(12))  # unique numbers, nothing beyond the budget
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sum(per_worker) == 12 and min(per_worker) >= 1  # both workers took part


def test_two_workers_share_a_journal_study(tmp_path):
    per_worker = run_two_workers("journal", tmp_path)
    cfg = load_config(None)
    check_study(
        optuna.load_study(study_name="parallel", storage=tune.make_storage(cfg, tmp_path / "journal.log")), per_worker
    )


@pytest.fixture
def postgres_url():
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    with postgres_databases("tune") as names:
        yield f"{PG}/{names['tune']}"


def test_two_workers_share_a_postgres_study(tmp_path, postgres_url):
    per_worker = run_two_workers(postgres_url, tmp_path)
    cfg = load_config(None, [f"tune.storage={postgres_url}"])
    storage = tune.make_storage(cfg, tmp_path / "journal.log")
    check_study(optuna.load_study(study_name="parallel", storage=storage), per_worker)
    storage.engine.dispose()  # let the fixture drop the database


def test_bad_storage_url_is_a_config_error(tmp_path):
    cfg = load_config(None, ["tune.storage=nosuchdb://x"])
    with pytest.raises(ConfigError, match="tune.storage"):
        tune.make_storage(cfg, tmp_path / "journal.log")
