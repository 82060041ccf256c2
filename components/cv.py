"""Stratified k-fold cross-validation over the training split.

Everything fitted is fitted inside the training fold only: the model's normalization
statistics (the loop fits Standardize on the rows it trains on), the augmentation (its
statistics come from the training-fold rows), and early stopping, which watches an inner
validation split of the training fold. The held-out fold is touched once, for scoring."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from components import evaluate, stream, train
from components.config import Config
from components.errors import DataError
from components.folds import fold_indices  # noqa: F401 - cv.fold_indices: the baselines use the same folds

METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc_ovr", "loss")


@dataclass
class Fold:
    index: int  # 0-based
    metrics: dict  # on the held-out fold; "loss" is cross-entropy (nats per sample)
    best_epoch: int
    epochs_run: int
    held_out: np.ndarray  # row indices of the held-out fold


def check_folds(y: np.ndarray, classes: list[str], folds: int) -> None:
    """Each class needs at least `folds` rows, one per held-out fold; say which one falls short."""
    counts = np.bincount(np.asarray(y), minlength=len(classes))
    short = [f"{classes[i]!r} has {int(c)}" for i, c in enumerate(counts) if c < folds]
    if short:
        raise DataError(
            f"cv.folds: {folds} folds need at least {folds} training rows per class; "
            f"{', '.join(short)}. Lower cv.folds or add data."
        )


def score(y: np.ndarray, logits: np.ndarray) -> dict:
    proba = evaluate.softmax(logits)
    loss = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean()
    return {**evaluate.classification_metrics(y, proba), "loss": float(loss)}


def run_fold(
    X,
    y,
    tr: np.ndarray,
    held_out: np.ndarray,
    spec: dict,
    cfg: Config,
    kind: str,
    value_range,
    log: train.LogFn | None = None,
) -> tuple[dict, train.History]:
    """Train on rows `tr` (early stopping on an inner split of them), score rows `held_out`."""
    model, hist = train.Recipe(cfg, X, y, kind, value_range, rows=tr).fit(
        spec, log=log
    )  # the final run's initial weights
    return score(y[held_out], train.predict_logits(model, stream.Rows(X, held_out)).numpy()), hist


def cross_validate(
    X,
    y,
    spec: dict,
    cfg: Config,
    kind: str,
    value_range,
    classes: list[str],
    fold_log: Callable[[int], train.LogFn | None] = lambda i: None,
    on_fold: Callable[[Fold], None] | None = None,
    fold_run: Callable[[int], AbstractContextManager] = lambda i: nullcontext(),
) -> list[Fold]:
    """k-fold CV of one config. Fold i runs inside fold_run(i) (e.g. an MLflow child run) with
    per-epoch callback fold_log(i); on_fold(fold) runs there after its scoring."""
    folds = cfg.cv.folds
    check_folds(y, classes, folds)
    out = []
    for i, (tr, te) in enumerate(fold_indices(y, folds, cfg.seed)):
        with fold_run(i):
            metrics, hist = run_fold(X, y, tr, te, spec, cfg, kind, value_range, fold_log(i))
            fold = Fold(i, metrics, hist.best_epoch, len(hist.epochs), te)
            out.append(fold)
            if on_fold is not None:
                on_fold(fold)
    return out


def summarize(folds: list[Fold]) -> dict:
    """{'<metric>_mean': .., '<metric>_std': ..} over folds (population std), plus the fold count."""
    out: dict = {"folds": len(folds)}
    for m in METRICS:
        v = np.array([f.metrics[m] for f in folds], dtype=float)
        out[f"{m}_mean"], out[f"{m}_std"] = float(v.mean()), float(v.std())
    return out
