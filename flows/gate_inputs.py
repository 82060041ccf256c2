"""What the promotion gate (components/gate.py) compares, gathered from disk and the registry for
the register stage: the network's cv fold scores (reports/cv/cv_folds.json), the best baseline
(reports/baseline/, models/baseline/model.skops; its test accuracy measured here, not read), the
champion's fold scores (tags recorded on its version when it was registered), and the baseline
registered as a version of its own (promote.allow_baseline)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from components import baseline, data, gate, registry, textdata
from components.folds import fold_key
from flows.paths import Paths

FOLDS_TAG, KEY_TAG = "mlpipe.fold_accuracy", "mlpipe.fold_key"


@dataclass(frozen=True)
class Baseline:
    name: str  # hgb | logreg | svc
    scores: gate.Scores  # test: measured on the current test split from the model file
    model_key: str  # what made the model (flows/stages/baseline.py model_key): reuse, not a copy
    cv_std: float
    model: baseline.BaselineClassifier


def network_folds(paths: Paths, meta: data.Meta) -> tuple[tuple[float, ...], str | None]:
    """The cv stage's fold accuracies of this data, and their fold key; ((), None) where CV did not run."""
    if not paths.cv_folds.exists():
        return (), None
    j = json.loads(paths.cv_folds.read_text())
    folds = j.get("folds") or []
    if j.get("data_hash") != meta.content_hash or len(folds) < 2:
        return (), None
    acc = tuple(float(f["accuracy"]) for f in sorted(folds, key=lambda f: f["fold"]))
    return acc, fold_key(meta.content_hash, len(acc), int(j.get("seed", meta.seed)))


def fold_tags(folds: tuple[float, ...], key: str | None) -> dict[str, str]:
    """Version tags that keep a model's fold scores for later gates (none without folds)."""
    if not folds or key is None:
        return {}
    return {FOLDS_TAG: json.dumps([round(a, 6) for a in folds]), KEY_TAG: key}


def champion_scores(mv, test: float) -> gate.Scores:
    """The current champion: its re-measured test accuracy and the fold scores its version recorded."""
    tags = mv.tags or {}
    try:
        folds = tuple(float(a) for a in json.loads(tags.get(FOLDS_TAG, "[]")))
    except (ValueError, TypeError):
        folds = ()
    return gate.Scores(f"champion v{mv.version}", test, folds, tags.get(KEY_TAG) if folds else None)


def load_baseline(paths: Paths, ds: data.Prepared) -> tuple[Baseline | None, str | None]:
    """The baseline stage's best model for this data -> (Baseline, None), or (None, a note why
    there is none; None when the stage was off)."""
    if not paths.baseline_metrics.exists():
        return None, None
    m = json.loads(paths.baseline_metrics.read_text())
    if not m.get("enabled"):
        return None, None
    f = json.loads(paths.baseline_folds.read_text()) if paths.baseline_folds.exists() else {}
    h = ds.meta.content_hash
    if m.get("data_hash") != h or f.get("data_hash") != h or not paths.baseline_model.exists():
        return None, "the baseline stage's files are for other data (or missing): no baseline comparison"
    model = baseline.load(paths.baseline_model)
    X_test = textdata.model_input(paths.prepared) if ds.meta.kind == "text" else ds.X_test  # text: raw strings
    test = float((model.predict(X_test)["label"].to_numpy() == ds.y_test).mean())
    folds = tuple(float(a) for a in f["models"][m["best"]])
    scores = gate.Scores(f"baseline {m['best']}", test, folds, f.get("fold_key"))
    return Baseline(m["best"], scores, m["model_key"], float(m["cv_accuracy_std"]), model), None


def register_baseline(name: str, b: Baseline, example, base_tags: dict) -> tuple[str, str]:
    """The best baseline as a version of `name` (variant `baseline`), or the version already holding
    this model on this data -> (version, model URI)."""
    existing = registry.find_version(
        name, {"mlpipe.model_key": b.model_key, "mlpipe.data_hash": base_tags["mlpipe.data_hash"]}
    )
    if existing is not None:
        return str(existing.version), f"models:/{name}/{existing.version}"
    uri = registry.log_sklearn(b.model, example)
    tags = {
        **base_tags,
        "variant": "baseline",
        "mlpipe.baseline": b.name,
        "mlpipe.flavor": "sklearn (skops)",
        "mlpipe.model_key": b.model_key,
        "test_accuracy": f"{b.scores.test:.6f}",
        **fold_tags(b.scores.folds, b.scores.fold_key),
    }
    return registry.register(uri, name, tags), uri


def baseline_summary(b: Baseline | None) -> dict | None:
    if b is None:
        return None
    s = b.scores
    return {"name": b.name, "test_accuracy": s.test, "cv_accuracy_mean": s.fold_mean, "cv_accuracy_std": b.cv_std}


def baseline_tags(b: Baseline | None) -> dict[str, str]:
    """On the version the gate considered: which baseline it was compared with, and its scores."""
    if b is None:
        return {}
    s = b.scores
    tags = {"mlpipe.baseline_best": b.name, "mlpipe.baseline_test_accuracy": f"{s.test:.6f}"}
    if s.folds:
        tags["mlpipe.baseline_cv_accuracy"] = f"{s.fold_mean:.6f} +- {b.cv_std:.6f}"
    return tags


def outcome(decision: gate.Decision, b: Baseline | None, passed_over, challenger: gate.Scores) -> dict:
    """The gate's part of reports/promotion.json and of the register stage's summary."""
    out = {
        "rule": decision.rule,
        "comparisons": {k: c.to_dict() for k, c in decision.comparisons.items()},
        "baseline": baseline_summary(b),
        "cv_accuracy": None
        if not challenger.folds
        else {"mean": challenger.fold_mean, "std": challenger.fold_std, "folds": len(challenger.folds)},
    }
    if passed_over is not None:
        version, pick = passed_over
        out.update(variant="baseline", network_version=version, network_vs_baseline=pick.to_dict())
    return out
