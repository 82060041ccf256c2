"""The stratified cv folds of a training split, one definition for the cv stage and the baselines,
and the key that names them: scores on folds with the same key are comparable fold by fold."""

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
