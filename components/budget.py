"""Time budgets: plan the stages of a run inside a wall-time budget, from measured costs.

Pure: typed config and measured seconds in, a Plan out (the config overrides that make the run
fit, the seconds each stage may use, and every degradation, in words). flows/pipeline.py measures,
plans before tune, cv, train and compress with the time then left, and applies the overrides.

Over budget, a run degrades in this declared order, and never by being stopped:
  1. fewer tuning trials (a study timeout), down to MIN_TRIALS: a small budget still tunes
  2. fewer cv folds (down to 2; then no cv)
  3. fewer compression variants (VARIANT_DROP order; then none)
  4. no tuning trials (the best of a resumed study's earlier trials, else the config as written); the
     run is planned again without them, so cv and compression get back the time tuning held
  5. fewer final-training epochs (down to budget.min_epochs; below that the run goes over, and says so)
Validation, evaluation and the promotion gate always run: their time is reserved first. (Before
all this, flows/pipeline.py leaves out a baseline stage the gate does not use: its cost is unknown
until it has run.)"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from components.config import Config
from components.errors import ConfigError

MIN_TRIALS = 3  # a study shorter than this many trials is not worth running: tuning is left out
VARIANT_DROP = ("distilled", "structured", "pruned", "int8")  # dropped first to last (most expensive first)
PRUNED_FRACTION = 0.5  # with a pruner, a trial runs about this share of its epochs on average
PLANNED = ("tune", "cv", "train", "compress", "tail")  # tail: evaluate, explain, register (the gate)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")


def parse_duration(text: str) -> float:
    """'90s' | '15m' | '1.5h' | '20' (minutes) -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"--budget {text!r}: expected a duration such as 90s, 15m or 1h")
    value, unit = float(m.group(1)), (m.group(2) or "m")
    seconds = value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if not 10 <= seconds <= 7 * 86_400:
        raise ConfigError(f"--budget {text!r}: must lie between 10 s and 7 days (got {seconds:g} s)")
    return seconds


def sized_epochs(epochs: int, n_fit: int, samples_seen: int | None, min_epochs: int) -> int:
    """Epochs for n_fit training rows: at most `epochs`, and no more than it takes to see
    `samples_seen` samples (large datasets need fewer passes), but at least min_epochs."""
    if samples_seen is None or n_fit <= 0:
        return epochs
    return min(epochs, max(min_epochs, math.ceil(samples_seen / n_fit)))


def sized_overrides(cfg: Config, n_fit: int) -> dict[str, Any]:
    """Data-size-aware epochs (budget.samples_seen): train.epochs and the tuning range (and the
    pruner's minimum resource) shrink together for a large training split; {} when nothing changes."""
    b, t = cfg.budget, cfg.tune
    epochs = sized_epochs(cfg.train.epochs, n_fit, b.samples_seen, b.min_epochs)
    hi = sized_epochs(t.epochs[1], n_fit, b.samples_seen, b.min_epochs)
    out: dict[str, Any] = {}
    if epochs != cfg.train.epochs:
        out["train.epochs"] = epochs
    if hi != t.epochs[1]:
        lo = max(1, min(hi, round(t.epochs[0] * hi / t.epochs[1])))
        out["tune.epochs"] = [lo, hi]
        out["tune.min_resource"] = max(1, min(t.min_resource, lo))
    return out


@dataclass(frozen=True)
class Costs:
    """Measured (or estimated) seconds."""

    epoch_s: float  # one epoch of the configured model on the training rows, validation included
    variant_s: dict[str, float]  # each compression variant, its measurement included
    tail_s: float  # evaluate + explain + register (the gate) together
    model_s: float = 3.0  # fixed seconds per trained model (a trial, a fold, the final one): its MLflow run, set-up


def variant_costs(cfg: Config, epoch_s: float, measure_s: float = 2.0) -> dict[str, float]:
    """Seconds per compression variant: its fine-tuning epochs at the model's epoch time (the
    student, a smaller net, at half), plus measure_s for timing and scoring it."""
    c = cfg.compress
    epochs = {
        "int8": 0.5,  # calibration and export only
        "pruned": c.prune_steps * c.step_epochs,
        "structured": c.structured_epochs,
        "distilled": 0.5 * c.student_epochs,
    }
    return {v: epochs[v] * epoch_s + measure_s for v in c.variants}


def trial_seconds(cfg: Config, epoch_s: float, model_s: float = 0.0) -> float:
    """Expected seconds of one tuning trial: the mean of the epoch range, less what the pruner cuts,
    plus model_s per model it trains."""
    lo, hi = cfg.tune.epochs
    share = 1.0 if cfg.tune.pruner == "none" else PRUNED_FRACTION
    folds = cfg.cv.folds if cfg.tune.objective == "cv" else 1
    return max(epoch_s, share * (lo + hi) / 2 * epoch_s) * folds + model_s * folds


@dataclass
class Plan:
    budget_s: float  # the whole budget
    left_s: float  # what was left when this plan was made
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> planned seconds
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys -> values that make it fit
    degradations: list[str] = field(default_factory=list)  # what was given up, in the declared order
    trials: int | None = None  # tuning trials expected inside the study timeout

    def to_dict(self) -> dict:
        return {
            "budget_s": round(self.budget_s, 1),
            "left_s": round(self.left_s, 1),
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "overrides": self.overrides,
            "degradations": self.degradations,
            "trials": self.trials,
        }


def plan(cfg: Config, costs: Costs, left_s: float, budget_s: float, stages: tuple[str, ...] = PLANNED) -> Plan:
    """Plan `stages` (those still to run, a suffix of PLANNED) inside left_s seconds.

    The tail (evaluate, explain, register) is reserved first; tuning gets what cv, train and
    compress leave (the bulk, on a budget that holds them), capped by tune.n_trials, and at least
    MIN_TRIALS trials' time while folds and variants can give way. When MIN_TRIALS trials do not fit
    even then, the run is planned again without tuning (its folds and variants cut only as far as that
    plan needs). Degradations come in the module's declared order."""
    tuning = "tune" in stages and cfg.tune.enabled
    p, fits = _fit(cfg, costs, left_s, budget_s, stages, tuning)
    if tuning and not fits:
        p, _ = _fit(cfg, costs, left_s, budget_s, stages, tuning, trials=False)
    return p


def _fit(
    cfg: Config, costs: Costs, left_s: float, budget_s: float, stages: tuple[str, ...], tuning: bool, trials=True
) -> tuple[Plan, bool]:
    """One plan (tuning with at least MIN_TRIALS trials, or with trials=False none) -> (plan, whether it
    fits without cutting final-training epochs)."""
    p = Plan(budget_s, left_s)
    ep = costs.epoch_s
    # the tuned epoch count is not known yet: the range's middle
    epochs = round(sum(cfg.tune.epochs) / 2) if tuning and trials else cfg.train.epochs
    folds = cfg.cv.folds if ("cv" in stages and cfg.cv.enabled) else 0
    variants = [v for v in cfg.compress.variants if cfg.compress.enabled and "compress" in stages]
    train_on = "train" in stages
    tune_s = 0.0  # seconds held for tuning

    def need() -> float:
        models = folds + (1 if train_on else 0)
        return (
            tune_s
            + models * costs.model_s
            + (folds * epochs + (epochs if train_on else 0)) * ep
            + sum(costs.variant_s.get(v, 0.0) for v in variants)
        )

    p.seconds["tail"] = costs.tail_s
    avail = left_s - costs.tail_s
    # 1. fewer trials, down to MIN_TRIALS (held while folds and variants give way)
    fewer = None  # where the line for fewer trials goes, written once the timeout is known
    if tuning:
        trial = trial_seconds(cfg, ep, costs.model_s)
        full = cfg.tune.n_trials * trial
        if trials:
            tune_s = min(full, max(avail - need(), MIN_TRIALS * trial))
            if tune_s < full:
                fewer = len(p.degradations)
                p.degradations.append("tune")
        else:  # 4. no tuning: a resumed study's best so far, else the config as written
            p.degradations.append(f"tune: no trials ({MIN_TRIALS} need ~{MIN_TRIALS * trial:.0f} s)")
    # 2. fewer folds
    if folds:
        want = folds
        while folds > 2 and need() > avail:
            folds -= 1
        if need() > avail:
            folds = 0
            p.overrides["cv.enabled"] = False
            p.degradations.append(f"cv: off ({want} folds do not fit)")
        elif folds != want:
            p.overrides["cv.folds"] = folds
            p.degradations.append(f"cv: {folds} of {want} folds")
    # 3. fewer variants
    if variants:
        want_v = list(variants)
        for v in VARIANT_DROP:
            if need() <= avail:
                break
            if v in variants:
                variants.remove(v)
        if len(variants) < len(want_v):
            dropped = [v for v in want_v if v not in variants]
            if variants:
                p.overrides["compress.variants"] = variants
            else:
                p.overrides["compress.enabled"] = False
            p.degradations.append(f"compress: without {', '.join(dropped)}")
    fits = need() <= avail
    if tuning:  # the study timeout: all the time the other stages leave (the n_trials cap normally ends it first)
        timeout = max(0.0, avail - (need() - tune_s)) if tune_s > 0 else 0.0
        p.seconds["tune"] = min(timeout, full)
        p.overrides["tune.timeout_s"] = round(timeout, 1)
        p.trials = min(cfg.tune.n_trials, int(timeout // trial))
        if fewer is not None:
            p.degradations[fewer] = (
                f"tune: about {p.trials} of {cfg.tune.n_trials} trials fit "
                f"(study timeout {timeout:.0f} s, ~{trial:.1f} s a trial)"
            )
    # 5. fewer epochs
    if train_on and need() > avail:
        fixed = need() - (folds + 1) * epochs * ep  # what fewer epochs cannot save
        least = min(epochs, cfg.budget.min_epochs)  # fewer would not make a model worth registering
        fit = max(least, int((avail - fixed) // ((folds + 1) * ep))) if ep > 0 else epochs
        if fit < epochs:
            p.degradations.append(f"train: {fit} of {epochs} epochs")
            epochs = fit
            p.overrides["train.epochs"] = fit
            p.overrides["train.max_epochs"] = fit  # caps the tuned count too
    if folds:
        p.seconds["cv"] = folds * (epochs * ep + costs.model_s)
    if train_on:
        p.seconds["train"] = epochs * ep + costs.model_s
    if "compress" in stages:
        p.seconds["compress"] = sum(costs.variant_s.get(v, 0.0) for v in variants)
    if need() > avail and train_on:
        p.degradations.append(
            f"over budget: the smallest run needs ~{need() + costs.tail_s:.0f} s, {max(left_s, 0.0):.0f} s were left"
        )
    return p, fits


def table(p: Plan, used: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """(stage, 'planned N s[, used M s]') rows for the summary and the start-up print."""
    used = used or {}
    rows = []
    for name in PLANNED:
        if name in p.seconds:
            u = f", used {used[name]:.0f} s" if name in used else ""
            rows.append((name, f"planned {p.seconds[name]:.0f} s{u}"))
    return rows
