"""Data drift: does new data still look like what the model was trained on? Evidently's data drift
preset compares a sample of the new data with the training rows logged with the model
(registry.REFERENCE_ROWS of them), column by column: for tables, each feature; for images, the
principal components of the model's penultimate-layer embeddings (fitted on the reference), so that
a few dozen informative columns are tested instead of thousands of pixels. Evidently picks each
column's test (K-S for numerical columns of up to 1000 reference rows, p < 0.05); the data drifted
when the share of drifted columns reaches `drift.threshold` (Evidently's `drift_share`).

`Reservoir` keeps a uniform sample of a stream of chunks in bounded memory (`mlpipe score`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DriftResult:
    share: float  # share of the columns whose test says drifted
    drifted: bool  # share >= threshold
    threshold: float
    columns: dict[str, dict] = field(default_factory=dict)  # column -> {method, score, drifted}
    basis: str = "features"  # features | embeddings (principal components)
    n_reference: int = 0
    n_current: int = 0
    html: str = ""

    @property
    def drifted_columns(self) -> list[str]:
        return [c for c, r in self.columns.items() if r["drifted"]]

    def summary(self) -> dict:
        return {
            "share": self.share,
            "drifted": self.drifted,
            "threshold": self.threshold,
            "basis": self.basis,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "drifted_columns": self.drifted_columns,
            "columns": self.columns,
        }


def _evidently():
    """Evidently's Report and preset. evidently 0.7.23 imports `infer_dtype_from_object` from pandas'
    internals at import time, which pandas 3 removed; it is used only by a column-type test this
    module never runs, so an equivalent is put in its place when it is missing."""
    import pandas as pd
    import pandas.core.dtypes.common as common

    if not hasattr(common, "infer_dtype_from_object"):
        common.infer_dtype_from_object = lambda dtype: pd.api.types.pandas_dtype(dtype).type
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    return DataDefinition, Dataset, Report, DataDriftPreset


def compare(
    reference: np.ndarray,
    current: np.ndarray,
    threshold: float,
    names: list[str] | None = None,
    basis: str = "features",
) -> DriftResult:
    """(R, D) reference rows vs (N, D) current rows, numerical columns -> DriftResult with Evidently's HTML."""
    import pandas as pd

    DataDefinition, Dataset, Report, DataDriftPreset = _evidently()
    names = names or [f"f{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=names)
    ref = Dataset.from_pandas(
        pd.DataFrame(np.asarray(reference, np.float64), columns=names), data_definition=definition
    )
    cur = Dataset.from_pandas(pd.DataFrame(np.asarray(current, np.float64), columns=names), data_definition=definition)
    with np.errstate(invalid="ignore", divide="ignore"):  # its correlation widgets divide by a constant column's std
        snapshot = Report([DataDriftPreset(drift_share=threshold)]).run(cur, ref)
    columns, share = {}, None
    for m in snapshot.dict()["metrics"]:
        cfg, value = m["config"], m["value"]
        if cfg["type"].endswith("DriftedColumnsCount"):
            share = float(value["share"])
        elif cfg["type"].endswith("ValueDrift"):
            method, limit = cfg["method"], float(cfg["threshold"])
            score = float(value)
            # p-value tests drift below their threshold; distances (Wasserstein, PSI, ...) at or above it
            drifted = score < limit if "p_value" in method else score >= limit
            columns[cfg["column"]] = {"method": method, "score": score, "threshold": limit, "drifted": drifted}
    if share is None:
        share = float(np.mean([c["drifted"] for c in columns.values()])) if columns else 0.0
    return DriftResult(
        share,
        share >= threshold,
        threshold,
        columns,
        basis,
        len(reference),
        len(current),
        snapshot.get_html_str(as_iframe=False),
    )


def principal_components(reference: np.ndarray, current: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Project both onto the reference's top-k principal axes (centred on the reference mean)."""
    ref = np.asarray(reference, np.float64)
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    axes = vt[: min(k, vt.shape[0])].T  # (D, k)
    return (ref - mean) @ axes, (np.asarray(current, np.float64) - mean) @ axes


class Reservoir:
    """A uniform random sample of at most `size` rows from a stream of chunks (Algorithm R), seeded."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seen = size, 0
        self.rng = np.random.default_rng(seed)
        self.rows: np.ndarray | None = None

    def add(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk)
        if len(chunk) == 0:
            return
        if self.rows is None:
            self.rows = np.empty((self.size, *chunk.shape[1:]), chunk.dtype)
        take = min(len(chunk), max(self.size - self.seen, 0))
        self.rows[self.seen : self.seen + take] = chunk[:take]
        # row i (counted from 0 in the stream) replaces a random slot with probability size / (i + 1)
        idx = np.arange(self.seen + take, self.seen + len(chunk))
        if len(idx):
            slots = self.rng.integers(0, idx + 1)
            keep = slots < self.size
            for j, slot in zip(np.flatnonzero(keep), slots[keep]):  # in order: a later row wins a slot
                self.rows[slot] = chunk[take + j]
        self.seen += len(chunk)

    def sample(self) -> np.ndarray:
        if self.rows is None:
            return np.zeros((0,))
        return self.rows[: min(self.seen, self.size)]
