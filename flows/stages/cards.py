"""Model cards, written by the register stage (register.py) once the gate has decided: for each version it registered
or re-used, the facts (the prepared data, reports/eval, reports/cv, the version's own predictions on
the test split, the compression table, the gate's tags as the registry holds them, the attributions of
reports/explain) rendered by components/card.py, logged as card/<name>-v<N>.md on the register run
and set as the version's description, which the MLflow model page shows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from components import card, compress, data, measure, models, registry, tracking, train
from components.errors import MlpipeError
from flows.paths import Paths
from flows.stages.compress import file_hash


def _json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def data_facts(ds: data.Prepared) -> dict:
    """From meta.json and the test labels; the training split's class counts are meta's (ingest counted
    them), so a mapped X_train / y_train is not read."""
    m = ds.meta
    k = len(m.classes)
    train_counts = dict(m.class_counts or {})
    if set(train_counts) != set(m.classes):  # a meta.json written without them
        train_counts = dict(zip(m.classes, np.bincount(np.asarray(ds.y_train), minlength=k).tolist()))
    return {
        "source": m.source,
        "kind": m.kind,
        "classes": list(m.classes),
        "feature_shape": list(m.feature_shape),
        "n_train": m.n_train,
        "n_test": m.n_test,
        "train_counts": {c: int(train_counts[c]) for c in m.classes},
        "test_counts": dict(zip(m.classes, np.bincount(ds.y_test, minlength=k).tolist())),
        "data_hash": m.content_hash,
        "value_range": m.value_range,
    }


def cv_facts(paths: Paths, data_hash: str) -> dict | None:
    """reports/cv when it holds folds of this data (the recipe the fp32 model was trained with)."""
    folds, metrics = _json(paths.cv_folds), _json(paths.cv_metrics)
    if not folds or not metrics or folds.get("data_hash") != data_hash or not metrics.get("folds"):
        return None
    return metrics


def predictions(model_file: str | Path, X: np.ndarray) -> np.ndarray | None:
    """Predicted classes of a registered variant's file on X, loaded as the evaluation loads a torch file
    (components/models.py) or as serving loads an ONNX one; None when the file is gone or unreadable."""
    path = Path(model_file)
    try:
        model = models.load(path)[0] if path.suffix == ".pt" else compress.load_model_file(path)[0]
    except (MlpipeError, OSError, ValueError):
        return None
    return train.predict_logits(model, X).numpy().argmax(1)


def attribution_facts(paths: Paths, model_hash: str, data_hash: str) -> dict:
    """reports/explain for this model.pt and data, with its plots as the MLflow UI serves them
    (inline image sources and links to the explain run's artefacts)."""
    s = _json(paths.explain_summary)
    if not s or s.get("model_hash") != model_hash or s.get("data_hash") != data_hash:
        return {"status": "No attributions: the explain stage has not run on this model and data."}
    if not s.get("method"):
        return {"status": f"No attributions: {s.get('status', 'not computed')}."}
    run = tracking.run_record(s.get("run_id", ""))
    images = []
    if run is not None:
        for png in s.get("plots", []):
            path = f"explain/{png}"
            images.append(
                {
                    "title": Path(png).stem.replace("_", " "),
                    "src": f"get-artifact?path={path}&run_uuid={run['run_id']}",
                    "href": f"#/experiments/{run['experiment_id']}/runs/{run['run_id']}/artifacts/{path}",
                }
            )
    return {**s, "images": images}


def decision_facts(tags: dict) -> dict:
    return {
        "decision": tags.get("mlpipe.decision"),
        "reasons": [r for r in tags.get("mlpipe.reasons", "").split("; ") if r],
        "champion_before": tags.get("mlpipe.champion_before"),
        "champion_accuracy": tags.get("mlpipe.champion_accuracy_remeasured"),
        "measured_accuracy": float(tags["mlpipe.test_accuracy_measured"])
        if tags.get("mlpipe.test_accuracy_measured")
        else None,
        "objective": tags.get("mlpipe.objective"),
        "selection": tags.get("mlpipe.selection"),
        "decided_at": tags.get("mlpipe.decided_at"),
        "rule": tags.get("mlpipe.rule"),
    }


def facts_for(
    paths: Paths, ds: data.Prepared, name: str, version: str, row: dict, common: dict, fp32_version: str | None
) -> dict:
    """Everything the card of one version says."""
    info = registry.version_info(name, version) or {"tags": {}, "aliases": []}
    tags = info["tags"]
    variant = row.get("variant") or tags.get("variant", "fp32")
    if variant == "fp32" and common["metrics"]:
        metrics, source = common["metrics"], "the evaluate stage (reports/eval/metrics.json)"
    elif "accuracy" in row:
        metrics = {f"test_{k}": row[k] for k in ("accuracy", "f1_macro") if k in row}
        source = "the compress stage's table"
    else:  # a version without a row of the variant table (a baseline the gate considered)
        measured = tags.get("mlpipe.test_accuracy_measured")
        metrics = {"test_accuracy": float(measured)} if measured else {}
        source = "the register stage's measurement"
    pred = predictions(row["file"], ds.X_test) if row.get("file") else None
    attributions = dict(common["attributions"])
    if variant != "fp32" and "status" not in attributions:
        attributions["of_version"] = fp32_version
    return {
        "name": name,
        "version": str(version),
        "variant": variant,
        "method": row.get("method"),
        "model_uri": f"models:/{name}/{version}",
        "aliases": info["aliases"],
        "champion": common["champion"],
        "data": common["data"],
        "metrics": metrics,
        "metrics_source": source,
        "cv": common["cv"],
        "per_class": None if pred is None else card.per_class(ds.y_test, pred, list(ds.meta.classes)),
        "predicted_accuracy": None if pred is None else float((pred == ds.y_test).mean()),
        "compression": {
            "table": common["table"],
            "row": {k: row[k] for k in ("method", "accuracy", "size_bytes", "latency_b1_ms") if k in row},
            "note": common["rejected"],
        },
        "decision": decision_facts(tags),
        "attributions": attributions,
        "provenance": {
            "pipeline_run_id": tags.get("mlpipe.run_id"),
            "register_run_id": tags.get("mlpipe.register_run_id"),
            "git_commit": tags.get("mlpipe.git_commit"),
        },
    }


def write_cards(
    paths: Paths,
    ds: data.Prepared,
    name: str,
    versions: dict,
    rows: list[dict],
    run_id: str,
    also: str | None = None,
) -> dict[str, str]:
    """The card of every version in versions ({variant: (version, model URI)}), and of version `also` (the
    one the gate considered, when it is not among them), after the gate: logged on the register run (run_id,
    the active run) and set as the version's description -> {version: artefact URI}. Each version is
    tagged with the card's URI and the register run that decided it."""
    versions = dict(versions)
    if also is not None and str(also) not in {str(v) for v, _ in versions.values()}:
        info = registry.version_info(name, also) or {"tags": {}}
        versions[info["tags"].get("variant", f"v{also}")] = (str(also), f"models:/{name}/{also}")
    decided = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for version, _ in versions.values():  # who decided, and when: read back into the card below
        registry.tag_version(name, version, {"mlpipe.register_run_id": run_id, "mlpipe.decided_at": decided})
    champion = registry.champion_version(name)
    rejected = [r for r in rows if not r.get("accepted", True)]
    common = {
        "data": data_facts(ds),
        "metrics": _json(paths.eval_metrics),
        "cv": cv_facts(paths, ds.meta.content_hash),
        "attributions": attribution_facts(paths, file_hash(paths.model_file), ds.meta.content_hash),
        "champion": None if champion is None else str(champion.version),
        "table": measure.markdown_table(rows) if len(rows) > 1 else None,
        "rejected": "; ".join(f"{r['variant']} rejected: {r.get('reason', '')}" for r in rejected) or None,
    }
    by_variant = {r["variant"]: r for r in rows}
    fp32 = versions.get("fp32", (None, None))[0]
    written = {}
    for variant, (version, _) in versions.items():
        facts = facts_for(paths, ds, name, version, by_variant.get(variant, {"variant": variant}), common, fp32)
        artefact = f"card/{name}-v{version}.md"
        facts["provenance"]["card_artifact"] = f"runs:/{run_id}/{artefact}"
        tracking.log_text(card.render(facts), artefact)
        registry.set_description(name, version, card.description(facts))
        registry.tag_version(name, version, {"mlpipe.card": f"runs:/{run_id}/{artefact}"})
        written[str(version)] = f"runs:/{run_id}/{artefact}"
    return written
