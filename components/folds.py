"""The stratified cv folds of a training split, one definition for the cv stage and the baselines,
and the key that names them: scores on folds with the same key are comparable fold by fold. And
the training recipe's early-stopping split (val_split), which text ingest reuses so that the
tokenizer never sees those rows."""

from __future__ import annotations

import numpy as np


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train_idx, held_out_idx)] per fold, stratified and shuffled with the seed."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in skf.split(np.zeros(len(y)), y)]


def fold_key(data_hash: str, folds: int, seed: int) -> str:
    """Names a set of folds: fold_indices of the same data's labels with the same count and seed."""
    return f"{data_hash}/{folds}-fold/seed-{seed}"


def val_split(y: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified indices (train_idx, val_idx) of the training split, for early stopping."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=val_size, random_state=seed, stratify=y)
    return np.sort(tr), np.sort(va)
