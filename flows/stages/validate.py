"""validate: the Great Expectations suite over data/prepared; a failed suite stops the pipeline."""

from __future__ import annotations

from components import data, textdata, tracking, validate
from components.config import Config
from components.fileio import write_json
from flows.paths import Paths


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """Fails (ValidationFailed) when the suite fails; the report is written and logged first."""
    with tracking.stage_run("validate", parent):
        ds = data.load_prepared(paths.prepared, mmap=True)  # the checks read the rows a chunk at a time
        docs = paths.validation_docs
        texts = textdata.load_texts(paths.prepared) if ds.meta.kind == "text" else None
        report = validate.validate(ds, cfg.validate_, docs_dir=docs, texts=texts)
        write_json(paths.validation_report, {"data_hash": ds.meta.content_hash, **report.to_dict()})
        tracking.log_metrics({"expectations": report.n_expectations, "failed": len(report.failures)})
        tracking.set_tags(
            {"mlpipe.validation": "passed" if report.success else "failed", "mlpipe.data_hash": ds.meta.content_hash}
        )
        tracking.log_artifact(paths.validation_report, "validation")
        if docs.exists():
            tracking.log_artifact(docs, "validation/data_docs")
        validate.require_valid(report, str(paths.prepared))
        return {"success": True, "expectations": report.n_expectations, "data_hash": ds.meta.content_hash}
