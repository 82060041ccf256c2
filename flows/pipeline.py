"""The Prefect flow: a short script of stage tasks.

Stage results are cached on (data hash, the config keys the stage reads, the code), as the stage
table (flows/stages/__init__.py) says, so a re-run after a failure skips the stages that finished.
Ingest always runs (it computes the data hash); register is never cached: it changes the registry."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import traceback
from functools import cache
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from components import budget, tracking, tune
from components.config import Config, load_config
from components.errors import MlpipeError
from components.fileio import write_json
from flows.locks import command_line, project_lock
from flows.paths import Paths
from flows.progress import BudgetRecord, Stages, budget_key, clock, probe_epoch, say
from flows.provenance import run_tags
from flows.stages import BY_NAME, STAGES, Stage


@cache
def code_hash() -> str:
    h = hashlib.sha256()
    repo = Path(__file__).resolve().parents[1]
    for f in sorted([*(repo / "components").glob("*.py"), *(repo / "flows").rglob("*.py")]):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def config_slice(cfg: Config, keys: tuple[str, ...]) -> dict:
    """The values of config keys ("train", "data.val_size") -> {key: value}."""
    d = cfg.to_dict()
    out = {}
    for key in keys:
        v = d
        for part in key.split("."):
            v = v[part]
        out[key] = v
    return out


def _cache_key(stage: Stage):
    def key(_ctx, params: dict) -> str:
        material = {
            "stage": stage.name,
            "config": config_slice(params["cfg"], stage.reads),
            "upstream": params.get("upstream"),
            "root": str(params["paths"].root),
            "code": code_hash(),
        }
        return (
            f"mlpipe-{stage.name}-"
            + hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]
        )

    return key


def _transient(_task, _run, state) -> bool:
    """Retry IO failures; a user-facing error (bad data, bad config, failed gate) is final."""
    try:
        state.result()
    except MlpipeError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


def _task(stage: Stage):
    """The Prefect task of a stage, as the table describes it."""

    def run(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
        return stage.run(cfg, paths, parent)

    opts = dict(name=stage.name, retries=stage.retries, retry_condition_fn=_transient if stage.retries else None)
    if stage.cached:
        opts.update(cache_key_fn=_cache_key(stage), persist_result=True)
    if stage.retries:
        opts.update(retry_delay_seconds=exponential_backoff(backoff_factor=1), retry_jitter_factor=0.5)
    return task(**opts)(run)


TASKS = {name: _task(stage) for name, stage in BY_NAME.items()}


def output_hashes(paths: Paths, stage: Stage) -> dict[str, str | None]:
    """Content hash of each file or folder the stage writes (None: missing)."""
    out = {}
    for w in stage.writes:
        path = getattr(paths, w)
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path] if path.exists() else []
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(hashlib.sha256(f.read_bytes()).digest())
        out[w] = h.hexdigest()[:16] if files else None
    return out


def _call(name: str, cfg: Config, paths: Paths, upstream: dict, parent: str, refresh: bool) -> dict:
    """Run a stage task. A cached result is reused only when the files the stage wrote are still
    the ones it wrote then: their content hashes, recorded after each run under the cache key,
    are checked first (another run in this folder may have replaced them)."""
    stage, t = BY_NAME[name], TASKS[name]
    stale = True
    manifest = None
    if stage.cached:
        key = _cache_key(stage)(None, {"cfg": cfg, "paths": paths, "upstream": upstream})
        manifest = paths.cache_manifest(key)
        stale = not manifest.exists() or json.loads(manifest.read_text()) != output_hashes(paths, stage)
    paths.prefect_results.mkdir(parents=True, exist_ok=True)
    result = t.with_options(refresh_cache=refresh or stale, result_storage=paths.prefect_results)(
        cfg, paths, upstream, parent
    )
    if manifest is not None:
        write_json(manifest, output_hashes(paths, stage))
    return result


def _tune_rows(out: dict) -> list[tuple[str, str]]:
    t, c = out.get("tune", {}), out.get("cv", {})
    rows = (
        [
            (
                "tuning",
                f"study {t['study']}: best trial {t['best_trial']} of {t['complete']} complete + {t['pruned']} pruned, "
                f"val accuracy {t['best_val_accuracy']:.4f}",
            )
        ]
        if t.get("study")
        else []
    )
    if c.get("folds"):
        rows.append(("cv accuracy", f"{c['accuracy_mean']:.4f} +- {c['accuracy_std']:.4f} ({c['folds']} folds)"))
    return rows


def _baseline_rows(out: dict) -> list[tuple[str, str]]:
    """The best baseline next to the network, and what the gate made of them (none with baseline.enabled false)."""
    b, reg = out.get("baseline") or {}, out["register"]
    if not b.get("enabled"):
        return []
    others = ", ".join(f"{n} {m['test_accuracy']:.4f}" for n, m in b["models"].items() if n != b["best"])
    rows = [
        (
            "baseline",
            f"{b['best']}: test {b['test_accuracy']:.4f}, cv {b['cv_accuracy_mean']:.4f} +- {b['cv_accuracy_std']:.4f} "
            f"({b['folds']} folds){f'; others: {others}' if others else ''}; {b['seconds']:.1f} s",
        )
    ]
    comp = (reg.get("network_vs_baseline") or (reg.get("comparisons") or {}).get("baseline") or {}).get("text")
    if comp:
        rows.append(("network vs baseline", comp))
    return rows


def summarize(out: dict) -> list[tuple[str, str]]:
    reg, ev = out["register"], out["evaluate"]
    return [
        ("data hash", out["ingest"]["data_hash"]),
        *([("drift", out["drift"])] if out.get("drift") else []),
        ("validation", f"passed ({out['validate']['expectations']} expectations)"),
        *_tune_rows(out),
        ("test accuracy", f"{ev['test_accuracy']:.4f}"),
        ("test macro F1", f"{ev['test_f1_macro']:.4f}"),
        ("test ROC AUC (ovr)", f"{ev['test_roc_auc_ovr']:.4f}"),
        *_baseline_rows(out),
        ("registered", f"{reg['model_name']} v{reg['version']}"),
        (
            "variants",
            ", ".join(f"{k} v{v}" for k, v in reg.get("variants", {}).items())
            + "".join(f"; {k} rejected: {why}" for k, why in reg.get("rejected", {}).items()),
        ),
        ("gate considered", f"{reg.get('variant', 'fp32')} ({reg.get('selection', '')})"),
        ("promoted", ("yes: " if reg["promoted"] else "no: ") + "; ".join(reg["reasons"])),
        *([("gate rule", reg["rule"])] if reg.get("rule") else []),
        ("MLflow run", out["run_id"]),
        ("MLflow UI", tracking.ui_command(out["tracking_uri"])),
        *_runs_rows(out),
    ] + ([("MLflow run link", link)] if (link := tracking.run_url(out["tracking_uri"], out["run_id"])) else [])


def _runs_rows(out: dict) -> list[tuple[str, str]]:
    """The experiment's runs table in the MLflow UI, as model training with the key metrics as columns."""
    exp = tracking.get_run(out["run_id"]).info.experiment_id
    url = tracking.experiment_url(out["tracking_uri"], exp)
    return [("MLflow runs", url)] if url else []


@flow(name="mlpipe", log_prints=True)
def pipeline(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    root: str = ".",
    refresh: bool = False,
    wait: bool = True,
    budget_s: float | None = None,
    started: float | None = None,
) -> dict:
    """ingest -> validate (GX gate) -> baseline -> augment -> tune -> cv -> train -> evaluate -> explain ->
    compress -> register/promote.
    One run per project folder at a time: a second one waits (wait False: fails, naming the holder).
    budget_s: a wall-time budget (else budget.minutes); started: when the command started (epoch
    seconds; the budget counts from there, start-up included)."""
    cfg = load_config(params, overrides or [])
    paths = Paths(root)
    if budget_s is None and cfg.budget.minutes is not None:
        budget_s = cfg.budget.minutes * 60
    with project_lock(paths, command_line(), wait):
        if budget_s is None:
            return run_stages(cfg, paths, refresh)
        key = budget_key(params, list(overrides or []), budget_s, paths.root)
        with BudgetRecord(paths.run_budget, key, budget_s, started=started) as record:
            return run_stages(cfg, paths, refresh, record)


def _costs(cfg: Config, paths: Paths) -> budget.Costs:
    """One epoch's time of the configured model on the prepared data, and what follows from it."""
    from components import data

    ds = data.load_prepared(paths.prepared, mmap=True)
    epoch_s = probe_epoch(cfg, ds)
    n_models = 1 + (len(cfg.compress.variants) if cfg.compress.enabled else 0)
    # evaluate, explain and register (a registered version per variant): measured on the 2-core VM
    return budget.Costs(epoch_s, budget.variant_costs(cfg, epoch_s), tail_s=20.0 + 4.0 * n_models)


_GOVERNS = {  # the config keys a plan made before each stage decides (later plans replace earlier ones)
    "baseline": ("baseline.",),
    "tune": ("tune.", "cv.", "compress.", "train.epochs", "train.max_epochs"),
    "cv": ("cv.", "compress.", "train.epochs", "train.max_epochs"),
    "train": ("compress.", "train.epochs", "train.max_epochs"),
    "compress": ("compress.",),
}


class Budgeter:
    """Plans the rest of the run before tune, cv, train and compress with the time left (a budget);
    without one it only applies the data-size-aware epochs, and the stage lines show no ETA."""

    def __init__(self, cfg: Config, paths: Paths, record: BudgetRecord | None, progress: Stages):
        self.base, self.paths, self.record, self.progress = cfg, paths, record, progress
        self.costs: budget.Costs | None = None
        self.active: dict = {}  # config overrides in force
        self.plans: dict[str, dict] = {}  # stage -> the plan made before it
        self.degradations: list[str] = []

    def size(self, n_train: int) -> dict:
        """Data-size-aware epochs (budget.samples_seen) -> the overrides applied."""
        sized = budget.sized_overrides(self.base, round(n_train * (1 - self.base.data.val_size)))
        if sized:
            self.base = tune.apply_overrides(self.base, sized, "budget.samples_seen")
        return sized

    def cfg(self) -> Config:
        return tune.apply_overrides(self.base, self.active, "time budget") if self.active else self.base

    def before(self, stage: str, data_hash: str) -> Config:
        if stage not in _GOVERNS:
            return self.cfg()
        rec = self.record
        if stage == "baseline":
            return self._baseline()
        if rec is None:  # no budget: nothing to plan, and no epoch is timed (it would cost every run)
            return self.cfg()
        if self.costs is None and rec.costs:
            self.costs = budget.Costs(**rec.costs)  # measured by an earlier attempt of this run
        if self.costs is None and stage not in rec.finished:
            self.costs = _costs(self.cfg(), self.paths)
            rec.costs = dataclasses.asdict(self.costs)
        planned = tuple(budget.PLANNED[budget.PLANNED.index(stage) :])

        def make() -> dict:
            pcfg = tune.apply_best(self.base, self.paths.best_params, data_hash) if stage != "tune" else self.base
            return budget.plan(pcfg, self.costs, rec.left(), rec.budget_s, planned).to_dict()

        p = rec.decide(stage, make)
        self.plans[stage] = p
        for k, v in p["seconds"].items():
            self.progress.planned[k] = v
        self.active = {k: v for k, v in self.active.items() if not k.startswith(_GOVERNS[stage])}
        self.active.update(p["overrides"])
        for d in p["degradations"]:
            if d not in self.degradations:
                self.degradations.append(d)
                say(f"      budget: {d}")
        return self.cfg()

    def _baseline(self) -> Config:
        """Under a budget, a baseline the gate does not use (promote.beat_baseline_by null, allow_baseline
        false) is left out: its cost is not known before it runs (245 s of a 3-minute budget on 5,000
        32x32 RGB images on the 2-core VM) and it only informs the summary."""
        rec, c = self.record, self.base
        if rec is None or not c.baseline.enabled or c.promote.beat_baseline_by is not None or c.promote.allow_baseline:
            return self.cfg()

        def make() -> dict:
            why = "baseline: skipped (informational under a time budget; promote.beat_baseline_by keeps it)"
            return {"seconds": {}, "overrides": {"baseline.enabled": False}, "degradations": [why]}

        p = rec.decide("baseline", make)
        self.active.update(p["overrides"])
        for d in p["degradations"]:
            if d not in self.degradations:
                self.degradations.append(d)
                say(f"      budget: {d}")
        return self.cfg()


def _log_plan(b: Budgeter, parent: str) -> None:
    first = next(iter(b.plans.values()), None)
    if first is None or b.record is None:
        return
    say("plan: " + ", ".join(f"{k} {clock(v)}" for k, v in first["seconds"].items()))
    tracking.log_dict({"plans": b.plans, "degradations": b.degradations}, "budget/plan.json", run_id=parent)
    tracking.log_metrics({f"plan_{k}_s": v for k, v in first["seconds"].items()}, run_id=parent)


def _budget_rows(b: Budgeter, record: BudgetRecord | None, used: dict[str, float]) -> list[tuple[str, str]]:
    if record is None:
        return []
    used = {**used, "tail": sum(used.get(s, 0.0) for s in ("evaluate", "explain", "register"))}
    planned = {}
    for p in b.plans.values():  # each stage's seconds as last planned before it ran
        planned.update(p["seconds"])
    rows = [
        (
            "time budget",
            f"{clock(record.budget_s)}: used {clock(record.spent())} (start-up included"
            f"{f'; resumed, attempt {record.attempts}' if record.resumed else ''})",
        ),
        (
            "planned / used",
            "; ".join(f"{k} {planned[k]:.0f} s / {used.get(k, 0.0):.0f} s" for k in budget.PLANNED if k in planned),
        ),
    ]
    if b.degradations:
        rows.append(("degraded", "; ".join(b.degradations)))
    return rows


def _write_failure(paths: Paths, parent: str | None, e: BaseException) -> Path:
    """The full traceback to .mlpipe/logs/ and to the pipeline run; -> the log file."""
    paths.run_logs.mkdir(parents=True, exist_ok=True)
    log = paths.run_logs / f"run-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log"
    log.write_text("".join(traceback.format_exception(e)))
    if parent:
        with contextlib.suppress(Exception):  # the store itself may be what failed
            tracking.log_artifact(log, "error", run_id=parent)
    return log


def run_stages(cfg: Config, paths: Paths, refresh: bool, record: BudgetRecord | None = None) -> dict:
    uri = tracking.setup(cfg.tracking, paths.root)
    tracking.end_orphans(cfg.tracking.experiment)  # runs a killed process left RUNNING
    tags = {**run_tags(cfg, paths.root), "mlpipe.prefect_flow_run_id": flow_run.get_id() or "none"}
    parent = tracking.start_parent(
        cfg.tracking.experiment, f"pipeline-{flow_run.get_name() or 'local'}", tags, cfg.to_dict()
    )
    out: dict = {"run_id": parent, "tracking_uri": uri}
    progress = Stages(tuple(s.name for s in STAGES))
    if record is not None:
        progress.offset = record.spent() - (time.monotonic() - progress.t0)
        say(
            f"time budget {clock(record.budget_s)}"
            + (f": resuming (attempt {record.attempts}), {clock(record.left())} left" if record.resumed else "")
        )
    plans = Budgeter(cfg, paths, record, progress)

    def stage(name: str, upstream: dict) -> dict:
        if "ingest" in out:  # every cached stage keys on the data it sees, whatever its direct upstream says
            upstream = {"data_hash": out["ingest"]["data_hash"], "from": upstream}
        scfg = plans.before(name, out["ingest"]["data_hash"]) if "ingest" in out else cfg
        if name == "tune":
            _log_plan(plans, parent)
        progress.start(name)
        out[name] = _call(name, scfg, paths, upstream, parent, refresh)
        progress.end(name)
        if record is not None:
            record.finish(name)
        return out[name]

    try:
        data = stage("ingest", {})
        tracking.set_tags(
            {"mlpipe.data_hash": data["data_hash"], "mlflow.note.content": f"data {data['data_hash']}"}, run_id=parent
        )
        from flows.monitor import champion_drift  # Evidently and the registry only when a run gets here

        out["drift"] = champion_drift(cfg, paths, parent)  # the new data vs the current champion's; records only
        stage("validate", data)
        stage("baseline", data)
        aug = stage("augment", data)
        from components.data import load_meta

        sized = plans.size(load_meta(paths.prepared).n_train)
        if sized:
            say(f"      data size: {', '.join(f'{k}={v}' for k, v in sized.items())} (budget.samples_seen)")
            tracking.set_tags({"mlpipe.sized": json.dumps(sized)}, run_id=parent)
        tuned = stage("tune", {"data": data, "augment": aug})
        stage("cv", tuned)
        trained = stage("train", {"data": data, "augment": aug, "tune": tuned})
        tracking.log_metrics(stage("evaluate", trained), run_id=parent)
        stage("explain", trained)
        stage("compress", trained)
        stage("register", out["evaluate"])
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                e.mlpipe_log = _write_failure(paths, parent, e)  # the CLI names it under its one error line
        tracking.end_parent(parent, ok=False, tags={"mlpipe.error": f"{type(e).__name__}: {e}"})
        raise
    if record is not None:
        tracking.log_metrics(
            {
                "budget_s": record.budget_s,
                "budget_spent_s": record.spent(),
                **{f"used_{k}_s": v for k, v in progress.used.items()},
            },
            run_id=parent,
        )
        tracking.set_tags({"mlpipe.budget.degradations": "; ".join(plans.degradations) or "none"}, run_id=parent)
        tracking.log_dict(  # every plan of the run, the ones made before cv, train and compress too
            {"plans": plans.plans, "degradations": plans.degradations, "used_s": progress.used},
            "budget/plan.json",
            run_id=parent,
        )
    reg = out["register"]
    tracking.end_parent(
        parent, ok=True, tags={"mlpipe.registered_version": reg["version"], "mlpipe.promoted": reg["promoted"]}
    )
    rows = summarize(out) + _budget_rows(plans, record, progress.used)
    create_table_artifact(
        key="mlpipe-summary", table=[{"item": k, "value": v} for k, v in rows], description="mlpipe run summary"
    )
    create_markdown_artifact(key="mlpipe-promotion", markdown="\n".join(f"- **{k}**: {v}" for k, v in rows))
    out["summary"] = rows
    return out
