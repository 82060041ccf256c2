"""The data gate: a Great Expectations suite over the prepared dataset.

GX checks one row per sample (its label, value range, non-finite count, duplicate and leakage
flags) and one row per class (train/test counts) instead of one expectation per pixel, which
keeps the suite at ~15 expectations whatever the feature count.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import ValidateConfig
from components.data import Prepared
from components.errors import ValidationFailed

SUITE = "mlpipe_prepared"
# text: C0 control characters other than tab, newline, carriage return, and DEL; U+FFFD is what an
# undecodable byte of a CSV became at ingest (components/textdata.py reads with errors="replace")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
TEXT_FLAGS = ("empty", "bad_chars", "truncated", "duplicate", "leak")  # per-text facts: True is a problem
SHOWN = 10  # rows named per failed expectation


CHUNK_BYTES = 1 << 20  # rows are hashed and summarised this many bytes at a time (cache-sized: measured fastest)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's finaliser
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _chunks(X: np.ndarray, row_bytes: int):
    """(start, rows as a fresh (b, row_bytes) uint8 array) over X, CHUNK_BYTES at a time: a memmap is
    read a chunk at a time, never whole."""
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for i in range(0, len(X), step):
        yield i, np.ascontiguousarray(X[i : i + step]).reshape(-1).view(np.uint8).reshape(-1, row_bytes)


def row_keys(X: np.ndarray) -> np.ndarray:
    """(N, 2) uint64: a 128-bit hash of each row's bytes, vectorised. Each 8-byte word is mixed with a
    key of its position (splitmix64), then summed, and summed again weighted by odd constants: equal
    rows get equal keys; different rows collide with probability about 2**-64 per pair and hash."""
    n = len(X)
    row_bytes = int(np.prod(X.shape[1:], dtype=np.int64)) * X.dtype.itemsize
    words = -(-row_bytes // 8)
    rng = np.random.default_rng(0x6D6C7069706500)  # fixed: keys are comparable across calls
    K = rng.integers(0, 2**63, words, dtype=np.uint64)
    P = rng.integers(0, 2**63, words, dtype=np.uint64) | np.uint64(1)
    out = np.zeros((n, 2), np.uint64)
    if not words:
        return out
    for i, c in _chunks(X, row_bytes):
        z = np.zeros((len(c), words), np.uint64)
        z.view(np.uint8)[:, :row_bytes] = c  # zero-padded to whole words
        z ^= K
        z ^= z >> _S30
        z *= _M1
        z ^= z >> _S27
        z *= _M2
        z ^= z >> _S31
        out[i : i + len(c), 0] = z.sum(axis=1, dtype=np.uint64)
        z *= P
        out[i : i + len(c), 1] = z.sum(axis=1, dtype=np.uint64)
    return out


def _as_void(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys).view(np.dtype("V16")).ravel()


def duplicated(keys: np.ndarray) -> np.ndarray:
    """(N,) bool: the row's key occurred at an earlier row (as pandas' duplicated, keep="first"). Sorts
    the first 64 bits only; the few rows that share them are settled by both halves and their order."""
    n = len(keys)
    out = np.zeros(n, bool)
    if n < 2:
        return out
    order = np.argsort(keys[:, 0])
    s = keys[order, 0]
    eq = s[1:] == s[:-1]
    tie = np.zeros(n, bool)
    tie[1:] |= eq
    tie[:-1] |= eq
    rows = np.sort(order[tie])  # original positions of the rows that share their first half with another
    if len(rows):
        k = keys[rows]
        o = np.lexsort((rows, k[:, 1], k[:, 0]))  # by key, then by position: the first occurrence leads
        same = np.zeros(len(rows), bool)
        same[1:] = (k[o][1:] == k[o][:-1]).all(axis=1)
        out[rows[o]] = same
    return out


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a),) bool: a[i] is in b, for uint64 arrays: a sort and a binary search (np.isin measured
    10x slower on uint64)."""
    s = np.sort(b)
    pos = np.minimum(np.searchsorted(s, a), len(s) - 1)
    return s[pos] == a


def found_in(keys: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(N,) bool: the row's key is one of `other`'s (a sorted join on the first half, then both halves)."""
    out = np.zeros(len(keys), bool)
    if not len(keys) or not len(other):
        return out
    cand = np.flatnonzero(_member(keys[:, 0], other[:, 0]))
    if len(cand):
        theirs = other[_member(other[:, 0], keys[cand, 0])]
        out[cand] = np.isin(_as_void(keys[cand]), _as_void(theirs))
    return out


def sample_frame(
    X: np.ndarray, y: np.ndarray, other_keys: np.ndarray | None, keys: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per sample: the facts the suite checks, computed a chunk of rows at a time (X may be a
    memmap). other_keys (row_keys of train) marks leakage; keys: this X's row_keys when already known."""
    n = len(X)
    n_features = int(np.prod(X.shape[1:], dtype=np.int64))
    n_nonfinite = np.zeros(n, np.int64)
    x_min, x_max = np.zeros(n), np.zeros(n)
    if n_features:
        row_bytes = n_features * X.dtype.itemsize
        for i, c in _chunks(X, row_bytes):
            flat = c.view(X.dtype).reshape(len(c), n_features)
            finite = np.isfinite(flat)
            sl = slice(i, i + len(c))
            n_nonfinite[sl] = n_features - finite.sum(axis=1)
            x_min[sl] = np.where(finite, flat, np.inf).min(axis=1)
            x_max[sl] = np.where(finite, flat, -np.inf).max(axis=1)
        none = n_nonfinite == n_features  # no finite value: NaN, as nanmin gives
        x_min[none], x_max[none] = np.nan, np.nan
    keys = row_keys(X) if keys is None else keys
    return pd.DataFrame(
        {
            "label": np.asarray(y).astype(np.int64),
            "x_dtype": str(X.dtype),
            "y_dtype": str(y.dtype),
            "n_features": n_features,
            "n_nonfinite": n_nonfinite,
            "x_min": x_min,
            "x_max": x_max,
            "duplicate": duplicated(keys),
            "leak": found_in(keys, other_keys) if other_keys is not None else np.zeros(n, bool),
        }
    )


def text_frame(texts: pd.DataFrame, y: np.ndarray, other: set[str] | None) -> pd.DataFrame:
    """One row per text (texts_<split>.parquet of components/textdata.py): the facts the text suite
    checks. Duplicates and leakage compare the normalised texts (NFKC, case as the tokenizer has it,
    white space collapsed); other marks leakage from train."""
    t = texts["text"].astype(str)
    norm = texts["normalized_sha1"]
    return pd.DataFrame(
        {
            "label": y.astype(np.int64),
            "n_tokens": texts["n_tokens"].astype(np.int64),
            "empty": (t.str.strip() == "").to_numpy(),
            "bad_chars": t.map(lambda s: CONTROL.search(s) is not None).to_numpy(dtype=bool),
            "truncated": texts["truncated"].to_numpy(dtype=bool),
            "duplicate": norm.duplicated().to_numpy(),
            "leak": norm.isin(other).to_numpy() if other else np.zeros(len(texts), bool),
        }
    )


def text_suite(gx, ds: Prepared, cfg: ValidateConfig):
    E = gx.expectations
    suite = gx.ExpectationSuite(name=f"{SUITE}_texts")
    no = [False]
    for e in [
        E.ExpectTableColumnsToMatchSet(column_set=["label", "n_tokens", *TEXT_FLAGS], exact_match=True),
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="label"),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(ds.meta.n_classes))),
        E.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1, max_value=int(ds.meta.feature_shape[0])),
        E.ExpectColumnValuesToBeInSet(column="empty", value_set=no),
        E.ExpectColumnValuesToBeInSet(column="bad_chars", value_set=no),
        E.ExpectColumnValuesToBeInSet(column="truncated", value_set=no, mostly=1.0 - cfg.max_truncated_fraction),
        E.ExpectColumnValuesToBeInSet(column="duplicate", value_set=no, mostly=1.0 - cfg.max_duplicate_fraction),
        E.ExpectColumnValuesToBeInSet(column="leak", value_set=no, mostly=1.0 - cfg.max_leak_fraction),
    ]:
        suite.add_expectation(e)
    return suite


def where(texts: pd.DataFrame, rows: np.ndarray) -> str:
    """Rows of a texts frame -> 'reviews.csv rows 3, 17' / 'spam/a.txt, ham/b.txt' (rows numbered from 0)."""
    picked = texts.iloc[np.flatnonzero(rows)].sort_values(["file", "row"], kind="stable")
    parts = []
    for file, group in picked.groupby("file", sort=False):
        if "/" in str(file) and (group["row"] == 0).all():  # a textfolder file: one text
            parts.append(str(file))
        else:
            parts.append(f"{file} row{'s' if len(group) > 1 else ''} {', '.join(map(str, group['row'].tolist()))}")
    n = int(np.count_nonzero(rows))
    return "; ".join(parts[:SHOWN]) + (f"; ... ({n} in all)" if len(parts) > SHOWN else "")


def _text_rows(d: dict, df: pd.DataFrame, n_classes: int) -> np.ndarray | None:
    """The rows a failed text expectation is about, or None (a table-level expectation)."""
    column = d["kwargs"].get("column")
    if column in TEXT_FLAGS:
        return df[column].to_numpy()
    if column == "label":
        return ~df["label"].isin(range(n_classes)).to_numpy()
    if column == "n_tokens":
        return ((df["n_tokens"] < 1) | (df["n_tokens"] > d["kwargs"].get("max_value", np.inf))).to_numpy()
    return None


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
    if d.get("where"):
        got = f"{d['unexpected_count']} unexpected ({d['unexpected_percent']:.2f}%): {d['where']}"
    elif d["unexpected_count"]:
        got = (
            f"{d['unexpected_count']} unexpected ({d['unexpected_percent']:.2f}%), "
            f"e.g. {d['partial_unexpected_list'][:5]}"
        )
    else:
        got = f"observed {d['observed_value']}"
    return f"{d['batch']}.{column}: {what} {bounds}: {got}"


def validate(
    ds: Prepared,
    cfg: ValidateConfig,
    docs_dir: Path | None = None,
    texts: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> ValidationReport:
    """Run the suites; return the report (success or not). Data docs HTML go to docs_dir.
    A text dataset (meta.kind "text") needs its texts (components/textdata.load_texts): the text suite
    replaces the per-sample one, and its failures name the files and rows."""
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
    if ds.meta.kind == "text":
        if texts is None:
            raise ValueError("validate: a text dataset needs its texts (textdata.load_texts)")
        rows_suite = text_suite(gx, ds, cfg)
    rows_suite, class_suite = ctx.suites.add(rows_suite), ctx.suites.add(class_suite)
    source = ctx.data_sources.add_pandas("prepared")
    if ds.meta.kind == "text":
        train_norm = set(texts[0]["normalized_sha1"])
        frames = {
            "train": (text_frame(texts[0], ds.y_train, None), rows_suite),
            "test": (text_frame(texts[1], ds.y_test, train_norm), rows_suite),
        }
    else:
        train_keys = row_keys(ds.X_train)  # hashed once: for train's duplicates and test's leakage
        frames = {
            "train": (sample_frame(ds.X_train, ds.y_train, None, train_keys), rows_suite),
            "test": (sample_frame(ds.X_test, ds.y_test, train_keys), rows_suite),
        }
    frames["classes"] = (class_frame(ds), class_suite)
    results = []
    for name, (df, suite) in frames.items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        # a checkpoint per frame: each frame is its own dataframe, and the checkpoint's
        # action renders its result into the data docs site
        cp = ctx.checkpoints.add(gx.Checkpoint(name=f"gate_{name}", validation_definitions=[vd], actions=actions))
        for res in cp.run(batch_parameters={"dataframe": df}).run_results.values():
            for r in res.results:
                d = _describe(name, r)
                rows = _text_rows(d, df, ds.meta.n_classes) if texts is not None and name != "classes" else None
                if not d["success"] and rows is not None and rows.any():
                    d["where"] = where(texts[0 if name == "train" else 1], rows)
                results.append(d)
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
