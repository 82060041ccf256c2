"""Drift checks at the edge: Evidently's report on data a model sees vs the training rows logged with
it (components/drift.py), written to MLflow. Two callers: every `mlpipe score` (the scored sample, on
its score run) and the start of every pipeline run (the newly ingested training data vs the current
champion's, on the parent run, and a line of the summary)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from components import data, drift, registry, textdata, tracking
from components.config import Config
from flows.paths import Paths


def report(
    cfg: Config,
    model,
    current: np.ndarray,
    say: Callable[[str], None] = print,
    run_id: str | None = None,
) -> drift.DriftResult | None:
    """`current`: (N, D) feature rows, or for an image model (N, D) penultimate-layer embeddings. Compared
    with the model's reference rows; the HTML report, drift.json, `drift_share` and the tag `mlpipe.drift`
    go to run_id (default: the active run). None when the version carries no reference sample."""
    reference = registry.reference(model)
    if reference is None:
        say("drift: this model version carries no reference sample (registered before drift checks); skipped")
        tracking.set_tags({"mlpipe.drift": "no reference sample"}, run_id=run_id)
        return None
    predictor = registry.predictor(model)
    if embeds(predictor):
        ref, cur = drift.principal_components(predictor.embed(reference), current, cfg.drift.embedding_dims)
        found = drift.compare(ref, cur, cfg.drift.threshold, [f"pc{i + 1}" for i in range(ref.shape[1])], "embeddings")
    else:
        found = drift.compare(reference.reshape(len(reference), -1), current, cfg.drift.threshold)
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "report.html"
        html.write_text(found.html)
        tracking.log_artifact(html, "drift", run_id=run_id)
    tracking.log_dict(found.summary(), "drift/drift.json", run_id=run_id)
    tracking.log_metrics({"drift_share": found.share, "drifted": float(found.drifted)}, run_id=run_id)
    tracking.set_tags({"mlpipe.drift": "drifted" if found.drifted else "no drift"}, run_id=run_id)
    say(f"drift check: {describe(found, cfg.drift.threshold)}")
    return found


def embeds(predictor) -> bool:
    """Whether drift is checked on penultimate-layer embeddings: images (pixel columns say little one by
    one) and text (token-id columns say nothing: the Transformer's pooled embedding does)."""
    return len(predictor.shape) == 3 or getattr(predictor, "encoder", None) is not None


def describe(found: drift.DriftResult, threshold: float) -> str:
    return (
        f"{'DRIFTED' if found.drifted else 'no drift'}: {found.share:.0%} of {len(found.columns)} {found.basis} "
        f"columns drifted (drift.threshold {threshold:g}; {found.n_current} rows vs {found.n_reference} training rows)"
    )


def champion_drift(cfg: Config, paths: Paths, run_id: str) -> str:
    """The newly ingested training data vs the current champion's training sample, logged on run_id (the
    pipeline run) -> one line for the summary. It records; it never stops the run (drift.on_drift is for
    scoring): a champion that cannot be compared is named in the line."""
    if not cfg.drift.enabled:
        return "off (drift.enabled: false)"
    ds = data.load_prepared(paths.prepared, mmap=True)
    name = cfg.promote.model_name or f"mlpipe-{data.dataset_name(ds.meta.source)}"
    champion = registry.champion_version(name)
    if champion is None:
        return f"no champion of {name} yet"
    if champion.tags.get("mlpipe.data_hash") == ds.meta.content_hash:
        return f"same data as the champion {name} v{champion.version}"
    try:
        model = registry.load(f"models:/{name}/{champion.version}")
        if registry.reference(model) is None:  # registered before drift checks, or a baseline
            return f"champion v{champion.version} carries no reference sample; not compared"
        predictor = registry.predictor(model)
        if ds.meta.kind == "text" and getattr(predictor, "encoder", None) is not None:
            # raw texts, tokenized by the champion's own tokenizer: the new ingest's token ids may mean other tokens
            texts = textdata.model_input(paths.prepared, "train")
            current = predictor.embed(texts.sample(min(len(texts), cfg.drift.sample_rows), random_state=0))
        else:
            if tuple(predictor.shape) != tuple(ds.meta.feature_shape):
                shapes = f"{list(predictor.shape)}, the data has {ds.meta.feature_shape}"
                return f"champion v{champion.version} takes shape {shapes}; not compared"
            rows = registry.reference_sample(ds.X_train, cfg.drift.sample_rows)
            current = predictor.embed(rows) if embeds(predictor) else rows.reshape(len(rows), -1)
        found = report(cfg, model, current, lambda m: None, run_id)
    except Exception as e:  # noqa: BLE001 - a drift check records; it never stops the pipeline
        first = str(e).splitlines()[0] if str(e) else ""
        return f"champion v{champion.version} not compared ({type(e).__name__}: {first})"
    return f"vs champion v{champion.version}: {describe(found, cfg.drift.threshold)}"
