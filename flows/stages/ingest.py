"""ingest: the configured source -> data/prepared (train/test arrays, meta.json with the content hash)."""

from __future__ import annotations

from components import data, textdata, tracking
from components.config import Config
from flows.paths import Paths


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("ingest", parent):
        read = textdata.ingest if textdata.is_text(cfg.data) else data.ingest
        ds = read(cfg.data, cfg.seed, list(cfg.data.classes) if cfg.data.classes else None)
        data.save_prepared(ds, paths.prepared)
        m = ds.meta
        tracking.log_params(
            {"source": m.source, "kind": m.kind, "feature_shape": m.feature_shape, "n_classes": m.n_classes}
        )
        tracking.log_metrics({"n_train": m.n_train, "n_test": m.n_test})
        tracking.set_tags({"mlpipe.data_hash": m.content_hash})
        name = data.dataset_name(m.source)
        tracking.log_dataset(ds.X_train, ds.y_train, f"{name}-train", str(paths.prepared), m.content_hash, "training")
        tracking.log_dataset(ds.X_test, ds.y_test, f"{name}-test", str(paths.prepared), m.content_hash, "testing")
        tracking.log_artifact(paths.prepared / "meta.json")
        if m.kind == "text":  # the fitted tokenizer (its hash is in meta.text and the data hash)
            tracking.log_artifact(paths.prepared / m.text["tokenizer"])
        return {"data_hash": m.content_hash, "n_train": m.n_train, "n_test": m.n_test, "classes": m.classes}
