"""The Prefect flow: a short script of stage tasks.

Stage results are cached on (data hash, the config sections the stage reads, the code), so a
re-run after a failure skips the stages that finished. Ingest always runs (it computes the data
hash); register is never cached: it changes the registry."""
from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from components import tracking
from components.config import Config, load_config
from components.errors import MlpipeError
from flows import stages
from flows.stages import Paths
from flows.deploy import promotion_slot

# the config sections each cached stage reads: a change elsewhere keeps its cache. Ingest is
# not cached: its source file can change under the same config; later stages key on its data hash.
STAGE_CONFIG = {
    "validate": ("validate",),
    "augment": ("augment",),
    "tune": ("seed", "data", "augment", "model", "train", "tune", "cv"),
    "cv": ("seed", "data", "augment", "model", "train", "cv"),
    "train": ("seed", "data", "augment", "model", "train"),
    "evaluate": (),
    "compress": ("seed", "data", "augment", "train", "compress"),
}


@cache
def code_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for f in sorted([*(here.parent / "components").glob("*.py"), *here.glob("*.py")]):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cache_key(stage: str):
    def key(_ctx, params: dict) -> str:
        cfg: Config = params["cfg"]
        d = cfg.to_dict()
        material = {"stage": stage, "config": {k: d[k] for k in STAGE_CONFIG[stage]},
                    "upstream": params.get("upstream"), "root": str(params["paths"].root.resolve()), "code": code_hash()}
        return f"mlpipe-{stage}-" + hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]

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


def _stage_task(stage: str, retries: int = 0):
    opts = dict(name=stage, retries=retries, retry_condition_fn=_transient if retries else None)
    if stage in STAGE_CONFIG:
        opts.update(cache_key_fn=_cache_key(stage), persist_result=True)
    if retries:
        opts.update(retry_delay_seconds=exponential_backoff(backoff_factor=1), retry_jitter_factor=0.5)
    return task(**opts)


@_stage_task("ingest", retries=2)
def ingest(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_ingest(cfg, paths, parent)


@_stage_task("validate")
def validate(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_validate(cfg, paths, parent)


@_stage_task("augment")
def augment(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_augment(cfg, paths, parent)


@_stage_task("tune")
def tune(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_tune(cfg, paths, parent)


@_stage_task("cv")
def cv(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_cv(cfg, paths, parent)


@_stage_task("train")
def train(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_train(cfg, paths, parent)


@_stage_task("evaluate")
def evaluate(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_evaluate(cfg, paths, parent)


@_stage_task("compress")
def compress(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    return stages.run_compress(cfg, paths, parent)


@_stage_task("register", retries=2)
def register(cfg: Config, paths: Paths, upstream: dict, parent: str) -> dict:
    with promotion_slot():  # cluster-wide, when a Prefect server is configured; the file lock covers one machine
        return stages.run_register(cfg, paths, parent)


def _call(t, cfg: Config, paths: Paths, upstream: dict, parent: str, refresh: bool) -> dict:
    """Run a stage task; a cached result is trusted only while the stage's files exist."""
    missing = any(not p.exists() for p in paths.outputs(t.name))
    storage = paths.state / "prefect-results"
    storage.mkdir(parents=True, exist_ok=True)
    return t.with_options(refresh_cache=refresh or missing, result_storage=storage)(cfg, paths, upstream, parent)


def _tune_rows(out: dict) -> list[tuple[str, str]]:
    t, c = out.get("tune", {}), out.get("cv", {})
    rows = [("tuning", f"study {t['study']}: best trial {t['best_trial']} of {t['complete']} complete + {t['pruned']} pruned, "
                       f"val accuracy {t['best_val_accuracy']:.4f}")] if t.get("study") else []
    if c.get("folds"):
        rows.append(("cv accuracy", f"{c['accuracy_mean']:.4f} +- {c['accuracy_std']:.4f} ({c['folds']} folds)"))
    return rows


def summarize(out: dict) -> list[tuple[str, str]]:
    reg, ev = out["register"], out["evaluate"]
    return [
        ("data hash", out["ingest"]["data_hash"]),
        ("validation", f"passed ({out['validate']['expectations']} expectations)"),
        *_tune_rows(out),
        ("test accuracy", f"{ev['test_accuracy']:.4f}"),
        ("test macro F1", f"{ev['test_f1_macro']:.4f}"),
        ("test ROC AUC (ovr)", f"{ev['test_roc_auc_ovr']:.4f}"),
        ("registered", f"{reg['model_name']} v{reg['version']}"),
        ("variants", ", ".join(f"{k} v{v}" for k, v in reg.get("variants", {}).items())
         + "".join(f"; {k} rejected: {why}" for k, why in reg.get("rejected", {}).items())),
        ("gate considered", f"{reg.get('variant', 'fp32')} ({reg.get('selection', '')})"),
        ("promoted", ("yes: " if reg["promoted"] else "no: ") + "; ".join(reg["reasons"])),
        ("MLflow run", out["run_id"]),
        ("MLflow UI", tracking.ui_command(out["tracking_uri"])),
    ] + ([("MLflow run link", link)] if (link := tracking.run_url(out["tracking_uri"], out["run_id"])) else [])


@flow(name="mlpipe", log_prints=True)
def pipeline(params: str = "params.yaml", overrides: list[str] | None = None, root: str = ".", refresh: bool = False) -> dict:
    """ingest -> validate (GX gate) -> augment -> tune -> cv -> train -> evaluate -> compress -> register/promote."""
    cfg = load_config(params, overrides or [])
    paths = Paths(Path(root).resolve())
    uri = tracking.setup(cfg.tracking, paths.root)
    tags = {**stages.run_tags(cfg, paths), "mlpipe.prefect_flow_run_id": flow_run.get_id() or "none"}
    parent = tracking.start_parent(cfg.tracking.experiment, f"pipeline-{flow_run.get_name() or 'local'}", tags, cfg.to_dict())
    out: dict = {"run_id": parent, "tracking_uri": uri}
    try:
        out["ingest"] = _call(ingest, cfg, paths, {}, parent, refresh)
        tracking.set_tags({"mlpipe.data_hash": out["ingest"]["data_hash"], "mlflow.note.content": f"data {out['ingest']['data_hash']}"}, run_id=parent)
        out["validate"] = _call(validate, cfg, paths, out["ingest"], parent, refresh)
        out["augment"] = _call(augment, cfg, paths, out["ingest"], parent, refresh)
        out["tune"] = _call(tune, cfg, paths, {"data": out["ingest"], "augment": out["augment"]}, parent, refresh)
        out["cv"] = _call(cv, cfg, paths, out["tune"], parent, refresh)
        out["train"] = _call(train, cfg, paths, {"data": out["ingest"], "augment": out["augment"], "tune": out["tune"]}, parent, refresh)
        out["evaluate"] = _call(evaluate, cfg, paths, out["train"], parent, refresh)
        tracking.log_metrics(out["evaluate"], run_id=parent)
        out["compress"] = _call(compress, cfg, paths, out["train"], parent, refresh)
        out["register"] = register(cfg, paths, out["evaluate"], parent)
    except BaseException as e:
        tracking.end_parent(parent, ok=False, tags={"mlpipe.error": f"{type(e).__name__}: {e}"})
        raise
    reg = out["register"]
    tracking.end_parent(parent, ok=True, tags={"mlpipe.registered_version": reg["version"], "mlpipe.promoted": reg["promoted"]})
    rows = summarize(out)
    create_table_artifact(key="mlpipe-summary", table=[{"item": k, "value": v} for k, v in rows], description="mlpipe run summary")
    create_markdown_artifact(key="mlpipe-promotion", markdown="\n".join(f"- **{k}**: {v}" for k, v in rows))
    out["summary"] = rows
    return out
