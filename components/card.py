"""The model card of a registered version: a pure function from a dict of facts to Markdown.

flows/stages/cards.py gathers the facts at registration (the prepared data, reports/eval, reports/cv, the
version's predictions on the test split, the compression table, the gate's tags, the attributions)
and sets the card as the version's description, so the MLflow model page shows it.

Facts (every key optional unless marked):
    name, version, variant (required); method, model_uri, aliases (list), champion (version or None)
    data: source, kind, classes, feature_shape, n_train, n_test, train_counts, test_counts ({class: rows}),
          data_hash, value_range
    metrics: {"test_accuracy": ...}, metrics_source (where they come from)
    cv: {"folds": k, "accuracy_mean": ..., "accuracy_std": ..., ...} (folds 0 or absent: CV did not run)
    per_class: [{"class", "precision", "recall", "f1", "support"}] (from the version's test predictions)
    predicted_accuracy: accuracy of those predictions
    compression: {"table": Markdown table or None, "row": this variant's row, "note": ...}
    decision: {"decision", "reasons" (list), "champion_before", "champion_accuracy", "measured_accuracy",
               "objective", "selection", "decided_at", "register_run_id"}
    attributions: summary of reports/explain/attributions.json, plus "images": [{"title", "src", "href"}],
                  "of_version" (the fp32 version they were computed on) or "status" when there are none
    provenance: pipeline_run_id, register_run_id, git_commit, card_artifact
"""

from __future__ import annotations

import numpy as np

DESCRIPTION_LIMIT = 5000  # characters MLflow's registry stores in a version's description (String(5000))
FEW_TEST_ROWS = 10  # a class with fewer test rows has per-class figures resting on too few rows
SMALL_CLASS = 0.5  # a class with fewer training rows than this x the median class is a small class
METRIC_NAMES = {
    "accuracy": "accuracy",
    "precision_macro": "macro precision",
    "recall_macro": "macro recall",
    "f1_macro": "macro F1",
    "roc_auc_ovr": "ROC AUC (one-vs-rest, macro)",
}


def per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class from predictions on the test split."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f1, n = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(classes)), average=None, zero_division=0
    )
    return [
        {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(n[i])}
        for i, c in enumerate(classes)
    ]


def limits(facts: dict) -> list[str]:
    """Known limits, from the facts: small classes, the weakest classes, what was not measured."""
    d = facts.get("data") or {}
    out = []
    test, train = d.get("test_counts") or {}, d.get("train_counts") or {}
    few = [c for c, n in test.items() if n < FEW_TEST_ROWS]
    if few:
        out.append(
            f"classes with fewer than {FEW_TEST_ROWS} test rows (their per-class figures rest on few rows): "
            + ", ".join(f"{c} ({test[c]})" for c in few)
        )
    if train:
        median = float(np.median(list(train.values())))
        small = [c for c, n in train.items() if n < SMALL_CLASS * median]
        if small:
            out.append(
                f"classes with fewer than {SMALL_CLASS:g} x the median {median:g} training rows: "
                + ", ".join(f"{c} ({train[c]})" for c in small)
            )
        c_min = min(train, key=lambda c: (train[c], c))
        out.append(f"smallest class: {c_min} with {train[c_min]} training and {test.get(c_min, 0)} test rows")
    rows = facts.get("per_class") or []
    if rows:
        worst = sorted(rows, key=lambda r: (r["recall"], r["class"]))[:3]
        out.append("lowest recall on the test split: " + ", ".join(f"{r['class']} {r['recall']:.3f}" for r in worst))
    if d:
        out.append(
            f"measured only on data like the above ({d.get('kind')}, shape {d.get('feature_shape')}, from "
            f"{d.get('source')}); inputs outside its value range {d.get('value_range')} are untested"
        )
    out.append("drift: not known at registration (new data is compared with the training rows when it is scored)")
    if d.get("kind") == "text":
        out.append(
            "text: inputs are tokenized by the tokenizer fitted on the training rows and cut at its max_length; "
            "wording unlike the training texts is not measured here"
        )
    else:
        out.append(f"inputs: {d.get('kind', 'array')} data only; raw text is not accepted")
    return out


def _f(v, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _data(facts: dict) -> list[str]:
    d = facts.get("data")
    if not d:
        return []
    classes = d.get("classes") or []
    shown = ", ".join(map(str, classes[:20])) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    return [
        "## Intended data",
        "",
        f"- source: `{d.get('source')}` ({d.get('kind')}, feature shape {d.get('feature_shape')})",
        f"- classes ({len(classes)}): {shown}",
        f"- rows: {d.get('n_train')} train, {d.get('n_test')} test; value range {d.get('value_range')}",
        f"- data hash: `{d.get('data_hash')}`",
        "",
    ]


def _metrics(facts: dict) -> list[str]:
    m, cv = facts.get("metrics") or {}, facts.get("cv") or {}
    if not m:
        return []
    out = [
        "## Metrics",
        "",
        f"Test-split figures from {facts.get('metrics_source', 'the evaluation')}; CV over the training split.",
        "",
    ]
    out += ["| metric | test | CV mean +- std |", "|---|---|---|"]
    for key, label in METRIC_NAMES.items():
        if f"test_{key}" not in m:
            continue
        spread = (
            f"{_f(cv[f'{key}_mean'])} +- {_f(cv.get(f'{key}_std'))}"
            if cv.get("folds") and f"{key}_mean" in cv
            else "n/a"
        )
        out.append(f"| {label} | {_f(m[f'test_{key}'])} | {spread} |")
    out.append("")
    if not cv.get("folds"):
        out += ["CV did not run for this model (cv.enabled false, or CV of another config or data).", ""]
    else:
        out += [f"CV: {cv['folds']} stratified folds of the training recipe (the fp32 model's config).", ""]
    return out


def _per_class(facts: dict, compact: bool) -> list[str]:
    rows = facts.get("per_class") or []
    if not rows:
        return []
    shown = sorted(rows, key=lambda r: (r["recall"], r["class"]))[:10] if compact and len(rows) > 10 else rows
    title = "## Per class (test split)" + (f": the {len(shown)} lowest recalls of {len(rows)}" if shown != rows else "")
    out = [title, "", "| class | precision | recall | F1 | test rows |", "|---|---|---|---|---|"]
    out += [
        f"| {r['class']} | {_f(r['precision'], 3)} | {_f(r['recall'], 3)} | {_f(r['f1'], 3)} | {r['support']} |"
        for r in shown
    ]
    if facts.get("predicted_accuracy") is not None:
        out += ["", f"From this version's own predictions (accuracy {_f(facts['predicted_accuracy'])})."]
    return out + [""]


def _compression(facts: dict, compact: bool) -> list[str]:
    c = facts.get("compression")
    if not c:
        return []
    row = c.get("row") or {}
    out = ["## Compression", ""]
    if row:
        out.append(
            f"This version is `{facts['variant']}` ({row.get('method', facts.get('method', ''))}): accuracy "
            f"{_f(row.get('accuracy'))}, {row.get('size_bytes', 'n/a')} bytes, batch-1 latency "
            f"{_f(row.get('latency_b1_ms'), 3)} ms."
        )
        out.append("")
    if c.get("table") and not compact:
        out += [c["table"], ""]
    if c.get("note"):
        out += [c["note"], ""]
    return out


def _decision(facts: dict) -> list[str]:
    d = facts.get("decision")
    if not d:
        return []
    champ = facts.get("champion")
    now = (
        "it is the champion now"
        if champ is not None and str(champ) == str(facts["version"])
        else f"the champion now is v{champ}"
        if champ
        else "there is no champion now"
    )
    out = [
        "## The gate's decision",
        "",
        f"**{d.get('decision', 'undecided')}**"
        + (f" at {d['decided_at']}" if d.get("decided_at") else "")
        + f"; {now}.",
        "",
    ]
    out += [f"- {r}" for r in d.get("reasons") or []]
    extra = [
        ("measured as registered", _f(d.get("measured_accuracy")) if d.get("measured_accuracy") else None),
        ("champion before", d.get("champion_before")),
        ("champion re-measured", d.get("champion_accuracy")),
        ("rule", d.get("rule")),
        ("objective", d.get("objective")),
        ("selection", d.get("selection")),
    ]
    out += [f"- {k}: {v}" for k, v in extra if v not in (None, "", "n/a")]
    return out + [""]


def _attributions(facts: dict, compact: bool) -> list[str]:
    a = facts.get("attributions")
    if not a:
        return []
    out = ["## Attributions", ""]
    if a.get("status"):
        return out + [a["status"], ""]
    of = f" of the fp32 model (v{a['of_version']}) this variant was made from" if a.get("of_version") else ""
    if a.get("method") == "integrated_gradients":
        out.append(
            f"Integrated gradients{of}: {a.get('samples')} test rows drawn class by class, all-zero baseline, "
            f"toward the true class; integral error {_f(a.get('convergence_delta'), 3)} of the logit change."
        )
    elif a.get("method") == "permutation_importance":
        out.append(
            f"Permutation importance{of}: accuracy drop when a feature is shuffled, {a.get('samples')} test rows "
            f"(accuracy {_f(a.get('baseline_accuracy'))} unshuffled)."
        )
        top = (a.get("top_features") or [])[: 5 if compact else 10]
        if top:
            out += ["", "| feature | drop mean | std |", "|---|---|---|"]
            out += [f"| {t['feature']} | {_f(t['mean'])} | {_f(t['std'])} |" for t in top]
    out.append("")
    for img in a.get("images") or []:
        out.append(f"[{img['title']}]({img['href']})")
        out.append("")
        if not compact:
            out += [f"![{img['title']}]({img['src']})", ""]
    return out


def _provenance(facts: dict) -> list[str]:
    p = facts.get("provenance") or {}
    if not p:
        return []
    uri = facts.get("model_uri") or f"models:/{facts['name']}/{facts['version']}"
    out = ["## Provenance", ""]
    out += [
        f"- {k}: `{p[k]}`" for k in ("pipeline_run_id", "register_run_id", "git_commit", "card_artifact") if p.get(k)
    ]
    return out + [f"- the whole chain: `mlpipe lineage {uri}`", ""]


def render(facts: dict, compact: bool = False) -> str:
    """The card as Markdown. compact: the lowest-recall classes only, no full compression table, no
    inline images (links only), for the registry's description limit."""
    aliases = " ".join(f"`@{a}`" for a in facts.get("aliases") or [])  # code: the UI links a bare @name to GitHub
    head = [
        f"# Model card: {facts['name']} v{facts['version']} ({facts['variant']})" + (f" {aliases}" if aliases else ""),
        "",
    ]
    body = (
        _data(facts)
        + _metrics(facts)
        + _per_class(facts, compact)
        + _compression(facts, compact)
        + _decision(facts)
        + _attributions(facts, compact)
        + ["## Known limits", ""]
        + [f"- {x}" for x in limits(facts)]
        + [""]
        + _provenance(facts)
    )
    return "\n".join(head + body).rstrip() + "\n"


def description(facts: dict, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card as it fits the registry's description: full, else compact, else cut with a pointer to the
    full card artefact."""
    for compact in (False, True):
        text = render(facts, compact)
        if len(text) <= limit:
            return text
    where = (facts.get("provenance") or {}).get("card_artifact", "the register run's card/ artefact")
    tail = f"\n\n... (cut at {limit} characters; the full card: {where})\n"
    return text[: limit - len(tail)] + tail
