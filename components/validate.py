"""The data gate: a Great Expectations suite over the prepared dataset.

GX checks one row per sample (its label, value range, non-finite count, duplicate and leakage
flags) and one row per class (train/test counts) instead of one expectation per pixel, which
keeps the suite at ~15 expectations whatever the feature count.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import ValidateConfig
from components.data import Prepared
from components.errors import ValidationFailed

SUITE = "mlpipe_prepared"


def _row_hashes(X: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(X.reshape(len(X), -1))
    return np.array([hashlib.sha1(r.tobytes()).hexdigest() for r in flat])


def sample_frame(X: np.ndarray, y: np.ndarray, other_hashes: set[str] | None) -> pd.DataFrame:
    """One row per sample: the facts the suite checks. other_hashes marks leakage from train."""
    flat = X.reshape(len(X), -1)
    hashes = _row_hashes(X)
    finite = np.isfinite(flat)
    with np.errstate(all="ignore"):
        masked = np.where(finite, flat, np.nan)
        x_min = np.nanmin(masked, axis=1) if flat.shape[1] else np.zeros(len(X))
        x_max = np.nanmax(masked, axis=1) if flat.shape[1] else np.zeros(len(X))
    return pd.DataFrame(
        {
            "label": y.astype(np.int64),
            "x_dtype": str(X.dtype),
            "y_dtype": str(y.dtype),
            "n_features": flat.shape[1],
            "n_nonfinite": (~finite).sum(axis=1),
            "x_min": x_min.astype(np.float64),
            "x_max": x_max.astype(np.float64),
            "duplicate": pd.Series(hashes).duplicated().to_numpy(),
            "leak": np.isin(hashes, list(other_hashes)) if other_hashes else np.zeros(len(X), bool),
        }
    )


def class_frame(ds: Prepared) -> pd.DataFrame:
    n = ds.meta.n_classes
    tr = np.bincount(ds.y_train[ds.y_train >= 0], minlength=n)[:n]
    te = np.bincount(ds.y_test[ds.y_test >= 0], minlength=n)[:n]
    return pd.DataFrame({"label": np.arange(n), "class_name": ds.meta.classes, "n_train": tr, "n_test": te})


def build_suites(gx, ds: Prepared, cfg: ValidateConfig):
    """Two suites: per-sample facts (run on train and test) and per-class counts."""
    E = gx.expectations
    n_features = int(np.prod(ds.meta.feature_shape))
    rng = cfg.value_range or ds.meta.value_range
    rows = gx.ExpectationSuite(name=f"{SUITE}_samples")
    for e in [
        E.ExpectTableColumnsToMatchSet(
            column_set=list(sample_frame(ds.X_test[:1], ds.y_test[:1], None).columns), exact_match=True
        ),
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToBeInSet(column="x_dtype", value_set=["float32"]),
        E.ExpectColumnValuesToBeInSet(column="y_dtype", value_set=["int64"]),
        E.ExpectColumnValuesToBeInSet(column="n_features", value_set=[n_features]),
        E.ExpectColumnValuesToBeBetween(column="n_nonfinite", min_value=0, max_value=0),
        E.ExpectColumnValuesToNotBeNull(column="label"),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(ds.meta.n_classes))),
        E.ExpectColumnValuesToBeInSet(column="duplicate", value_set=[False], mostly=1.0 - cfg.max_duplicate_fraction),
        E.ExpectColumnValuesToBeInSet(column="leak", value_set=[False], mostly=1.0 - cfg.max_leak_fraction),
    ]:
        rows.add_expectation(e)
    if rng is not None:
        rows.add_expectation(E.ExpectColumnValuesToBeBetween(column="x_min", min_value=float(rng[0])))
        rows.add_expectation(E.ExpectColumnValuesToBeBetween(column="x_max", max_value=float(rng[1])))
    classes = gx.ExpectationSuite(name=f"{SUITE}_classes")
    classes.add_expectation(E.ExpectTableRowCountToEqual(value=ds.meta.n_classes))
    classes.add_expectation(E.ExpectColumnValuesToBeBetween(column="n_train", min_value=cfg.min_rows_per_class))
    classes.add_expectation(E.ExpectColumnValuesToBeBetween(column="n_test", min_value=1))
    return rows, classes


@dataclass
class ValidationReport:
    success: bool
    n_expectations: int
    failures: list[str]
    results: list[dict] = field(repr=False)
    docs_index: str | None = None

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "n_expectations": self.n_expectations,
            "failures": self.failures,
            "results": self.results,
            "docs_index": self.docs_index,
        }


def _describe(batch: str, r) -> dict:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
    res = r.result or {}
    return {
        "batch": batch,
        "expectation": cfg.type,
        "kwargs": json.loads(json.dumps(kwargs, default=str)),
        "success": bool(r.success),
        "unexpected_count": res.get("unexpected_count"),
        "unexpected_percent": res.get("unexpected_percent"),
        "partial_unexpected_list": json.loads(json.dumps(res.get("partial_unexpected_list", [])[:10], default=str)),
        "observed_value": json.loads(json.dumps(res.get("observed_value"), default=str)),
    }


def _failure_line(d: dict) -> str:
    column = d["kwargs"].get("column", "table")
    what = d["expectation"].removeprefix("expect_")
    bounds = {k: d["kwargs"][k] for k in ("min_value", "max_value", "value_set", "value", "mostly") if k in d["kwargs"]}
    if d["unexpected_count"]:
        got = (
            f"{d['unexpected_count']} unexpected ({d['unexpected_percent']:.2f}%), "
            f"e.g. {d['partial_unexpected_list'][:5]}"
        )
    else:
        got = f"observed {d['observed_value']}"
    return f"{d['batch']}.{column}: {what} {bounds}: {got}"


def validate(ds: Prepared, cfg: ValidateConfig, docs_dir: Path | None = None) -> ValidationReport:
    """Run the suites; return the report (success or not). Data docs HTML go to docs_dir."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        ctx.add_data_docs_site(
            site_name="mlpipe",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
            },
        )
        actions.append(UpdateDataDocsAction(name="docs", site_names=["mlpipe"]))
    rows_suite, class_suite = build_suites(gx, ds, cfg)
    rows_suite, class_suite = ctx.suites.add(rows_suite), ctx.suites.add(class_suite)
    source = ctx.data_sources.add_pandas("prepared")
    train_hashes = set(_row_hashes(ds.X_train))
    frames = {
        "train": (sample_frame(ds.X_train, ds.y_train, None), rows_suite),
        "test": (sample_frame(ds.X_test, ds.y_test, train_hashes), rows_suite),
        "classes": (class_frame(ds), class_suite),
    }
    results = []
    for name, (df, suite) in frames.items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        # a checkpoint per frame: each frame is its own dataframe, and the checkpoint's
        # action renders its result into the data docs site
        cp = ctx.checkpoints.add(gx.Checkpoint(name=f"gate_{name}", validation_definitions=[vd], actions=actions))
        for res in cp.run(batch_parameters={"dataframe": df}).run_results.values():
            results += [_describe(name, r) for r in res.results]
    failures = [_failure_line(d) for d in results if not d["success"]]
    docs_index = None
    if docs_dir is not None:
        index = Path(docs_dir) / "index.html"
        docs_index = str(index) if index.exists() else None
    return ValidationReport(not failures, len(results), failures, results, docs_index)


def require_valid(report: ValidationReport, where: str) -> None:
    if not report.success:
        lines = "\n  - ".join(report.failures)
        raise ValidationFailed(
            f"data validation failed for {where} ({len(report.failures)} of {report.n_expectations} "
            f"expectations):\n  - {lines}",
            report.failures,
        )
