"""ingest: the configured source -> data/prepared (train/test arrays, meta.json with the content hash).

Images and tables stream into the folder (components/data.ingest_to: a block at a time, never the whole
source in memory); what is logged afterwards reads the written arrays memory-mapped. Text sources are
tokenised in memory (components/textdata.py)."""

from __future__ import annotations

from components import data, textdata, tracking
from components.config import Config
from flows.paths import Paths


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("ingest", parent):
        classes = list(cfg.data.classes) if cfg.data.classes else None
        if textdata.is_text(cfg.data):
            data.save_prepared(textdata.ingest(cfg.data, cfg.seed, classes), paths.prepared)
        else:
            data.ingest_to(cfg.data, cfg.seed, paths.prepared, classes)
        ds = data.load_prepared(paths.prepared, mmap=True)
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
