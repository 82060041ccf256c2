"""The time-budget planner (components/budget.py) on fake timings, the budget record on disk
(flows/progress.py) and the epoch cap (train.max_epochs) the plans rely on."""

from __future__ import annotations

import json
import time

import pytest

from components import budget, tune
from components.config import load_config
from components.errors import ConfigError

EPOCH = 0.2  # fake seconds per epoch


def costs(cfg, epoch_s=EPOCH, tail_s=30.0):
    return budget.Costs(epoch_s, budget.variant_costs(cfg, epoch_s), tail_s)


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("1.5h", 5400), ("20", 1200)])
def test_durations(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "15x", "-5m", "1s", "8d"])
def test_bad_durations_name_the_value(text):
    with pytest.raises(ConfigError, match=r"--budget"):
        budget.parse_duration(text)


def planned_total(p: budget.Plan) -> float:
    return sum(p.seconds.values())


@pytest.mark.parametrize("left", [120, 300, 600, 1800])
def test_a_plan_fits_its_budget_and_tuning_gets_the_rest(cfg, left):
    c = costs(cfg)
    p = budget.plan(cfg, c, left, left)
    assert planned_total(p) <= left + 1e-6
    # tuning's study timeout is exactly what the other stages leave
    rest = left - sum(v for k, v in p.seconds.items() if k != "tune")
    if p.trials:
        assert p.overrides["tune.timeout_s"] == pytest.approx(rest, abs=0.1)
        assert p.seconds["tune"] <= rest + 1e-6
    assert p.seconds["tail"] == c.tail_s  # evaluate, explain and the gate are always reserved


def test_a_large_budget_degrades_nothing_and_caps_trials_at_n_trials(cfg):
    p = budget.plan(cfg, costs(cfg), 10**6, 10**6)
    assert p.degradations == [] and p.trials == cfg.tune.n_trials
    assert set(p.overrides) == {"tune.timeout_s"}  # the trial count ends the study first
    assert p.seconds["cv"] == pytest.approx(cfg.cv.folds * (round(sum(cfg.tune.epochs) / 2) * EPOCH + 3.0))


def declared_order(p: budget.Plan) -> list[str]:
    return [d.split(":")[0] for d in p.degradations if not d.startswith("over budget")]


def test_degradations_come_in_the_declared_order_as_the_budget_shrinks(cfg):
    c = costs(cfg)
    order = ["tune", "cv", "compress", "train"]
    seen = []
    for left in (2000, 600, 200, 120, 90, 70, 60, 45, 35):
        p = budget.plan(cfg, c, left, left)
        got = declared_order(p)
        assert got == order[: len(got)], (left, p.degradations)  # each one only after all the earlier ones
        # tuning keeps MIN_TRIALS trials until it is given up as a whole
        assert p.trials >= budget.MIN_TRIALS or p.degradations[0].startswith("tune: no trials")
        seen = seen + [d for d in got if d not in seen]
    assert seen == order


def test_a_small_budget_still_tunes_and_without_room_for_trials_cv_and_compress_get_the_time_back(cfg):
    c = costs(cfg)
    # folds and variants give way so that MIN_TRIALS trials still run
    p = budget.plan(cfg, c, 70, 70)
    assert p.trials == budget.MIN_TRIALS and p.overrides["tune.timeout_s"] >= budget.MIN_TRIALS * 7.5
    assert p.overrides["cv.enabled"] is False and "distilled" not in p.overrides["compress.variants"]
    # not even MIN_TRIALS fit: no tuning, and the plan without it keeps every variant
    p = budget.plan(cfg, c, 60, 60)
    assert p.trials == 0 and p.overrides["tune.timeout_s"] == 0 and p.seconds["tune"] == 0
    assert p.degradations[0].startswith("tune: no trials")
    assert "compress.variants" not in p.overrides and "compress.enabled" not in p.overrides
    assert planned_total(p) <= 60 + 1e-6


def test_each_degradation_in_turn(cfg):
    c = costs(cfg)
    # fewer trials: a study timeout, the trial count it holds
    p = budget.plan(cfg, c, 200, 200)
    assert p.trials is not None and budget.MIN_TRIALS <= p.trials < cfg.tune.n_trials
    assert "tune.enabled" not in p.overrides
    # fewer folds, tuning kept at its minimum
    p = budget.plan(cfg, c, 120, 120)
    assert p.trials >= budget.MIN_TRIALS and p.overrides["cv.folds"] < cfg.cv.folds
    # variants go most expensive first: distilled, then structured
    p = budget.plan(cfg, c, 45, 45)
    kept = p.overrides.get("compress.variants", [] if p.overrides.get("compress.enabled") is False else None)
    assert kept is not None and "distilled" not in kept
    # fewer epochs, the tuned count capped too
    p = budget.plan(cfg, c, 33, 33)
    assert p.overrides["train.epochs"] == p.overrides["train.max_epochs"] < cfg.train.epochs
    assert p.seconds["train"] <= 33 - 30 + 3.0


def test_later_plans_cover_only_the_stages_left(cfg):
    c = costs(cfg)
    p = budget.plan(cfg, c, 50, 600, stages=("train", "compress", "tail"))
    assert set(p.seconds) <= {"train", "compress", "tail"}
    assert not any(k.startswith(("tune.", "cv.")) for k in p.overrides)
    assert planned_total(p) <= 50 + 1e-6


def test_too_small_a_budget_still_trains_validates_and_gates_and_says_so(cfg):
    p = budget.plan(cfg, costs(cfg), 5, 5)
    assert p.overrides["train.epochs"] == cfg.budget.min_epochs and "tail" in p.seconds
    assert p.degradations[-1].startswith("over budget")


def test_sized_epochs_follow_the_training_rows(cfg):
    assert budget.sized_overrides(cfg, 1293) == {}  # digits: the configured counts (samples_seen not reached)
    big = budget.sized_overrides(cfg, 18_000)  # 20,000 images
    assert big["train.epochs"] == 12 and big["tune.epochs"][1] == 12 and big["tune.epochs"][0] <= 12
    huge = budget.sized_overrides(cfg, 10**7)
    assert huge["train.epochs"] == cfg.budget.min_epochs
    sized = tune.apply_overrides(cfg, big)  # a valid config
    assert sized.tune.min_resource <= sized.tune.epochs[0]
    off = tune.apply_overrides(cfg, {"budget.samples_seen": None})
    assert budget.sized_overrides(off, 10**7) == {}


def test_max_epochs_caps_tuned_and_untuned_counts(cfg, tmp_path):
    capped = tune.apply_overrides(cfg, {"train.max_epochs": 7})
    assert tune.apply_best(capped, tmp_path / "missing.json").train.epochs == 7
    best = tmp_path / "best.json"
    tune.write_best(best, {**tune.untuned("h"), "tuned": True, "overrides": {"train.epochs": 55}})
    assert tune.apply_best(capped, best, "h").train.epochs == 7
    assert tune.apply_best(cfg, best, "h").train.epochs == 55


def test_the_budget_record_resumes_an_unfinished_run_only(tmp_path):
    from flows.progress import BudgetRecord

    path = tmp_path / "budget.json"
    with BudgetRecord(path, "k1", 100.0, every=0.05) as r:
        r.decide("tune", lambda: {"overrides": {"tune.timeout_s": 50}})
        r.finish("tune")
        r.decide("cv", lambda: {"overrides": {"cv.folds": 3}})  # cv did not finish
        path_during = json.loads(path.read_text())
    assert path_during["state"] == "running" and json.loads(path.read_text())["state"] == "done"
    # a finished run: the next one starts afresh
    assert not BudgetRecord(path, "k1", 100.0).resumed
    # a killed run (state left 'running'): the same command resumes with its spent time
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "state": "running", "spent_s": 40.0}))
    r = BudgetRecord(path, "k1", 100.0)
    assert r.resumed and r.attempts == 2
    assert 59 < r.left() <= 60
    # a finished stage keeps its plan (its cached result was made with it); an unfinished one is planned again
    assert r.decide("tune", lambda: pytest.fail("a finished stage's plan is reused")) == {
        "overrides": {"tune.timeout_s": 50}
    }
    assert r.decide("cv", lambda: {"overrides": {"cv.enabled": False}}) == {"overrides": {"cv.enabled": False}}
    # start-up counts: a command that started 5 s ago has 5 s less
    assert 54 < BudgetRecord(path, "k1", 100.0, started=time.time() - 5).left() <= 55
    # another command (other params, overrides or budget) does not resume it, nor the same one much later
    assert not BudgetRecord(path, "k2", 100.0).resumed
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "state": "running", "updated": time.time() - 2 * 3600}))
    assert not BudgetRecord(path, "k1", 100.0).resumed


def test_under_a_budget_a_baseline_the_gate_does_not_use_is_left_out(cfg, tmp_path):
    from flows.paths import Paths
    from flows.pipeline import Budgeter
    from flows.progress import BudgetRecord, Stages

    def baseline_cfg(c, budgeted: bool):
        rec = BudgetRecord(tmp_path / "budget.json", "k", 600.0) if budgeted else None
        b = Budgeter(c, Paths(tmp_path), rec, Stages(("baseline",)))
        return b.before("baseline", "hash"), b.degradations

    got, why = baseline_cfg(cfg, budgeted=True)
    assert got.baseline.enabled is False and why[0].startswith("baseline: skipped")
    assert baseline_cfg(cfg, budgeted=False)[0].baseline.enabled  # no budget: as configured
    gated = tune.apply_overrides(cfg, {"promote.beat_baseline_by": 0.0})
    assert baseline_cfg(gated, budgeted=True) == (gated, [])  # the gate uses it: it runs
