"""components/cv.py on tiny data: folds, the small-class error, and no leakage of held-out rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components import cv, engine, models, stream
from components.config import load_config
from components.errors import DataError

SETS = [
    "cv.folds=3",
    "train.epochs=2",
    "train.batch_size=16",
    "model.kind=mlp",
    "model.hidden=[8]",
    "data.val_size=0.25",
    "augment.tabular_noise_std=0.1",
]


def table(n_per_class=12, k=3, seed=0):
    """Feature 0 is a unique row id (so any row can be traced), the others carry the class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class).astype(np.int64)
    X = np.column_stack([np.arange(len(y)) * 1000.0, rng.normal(size=(len(y), 3)) + y[:, None] * 3.0]).astype(
        np.float32
    )
    return X, y


def rows_of(X) -> np.ndarray:
    """The rows a stream.Rows view (or an array) stands for, as an array."""
    view = stream.as_view(X)
    return view.take(view.rows(np.arange(len(view))))


def ids(X) -> set[int]:
    return {int(round(v / 1000.0)) for v in np.asarray(X)[:, 0]}


def test_folds_are_stratified_disjoint_and_cover_every_row():
    _, y = table()
    folds = cv.fold_indices(y, 3, seed=0)
    held = np.concatenate([te for _, te in folds])
    assert sorted(held) == list(range(len(y)))
    for tr, te in folds:
        assert not set(tr) & set(te)
        assert np.bincount(y[te]).tolist() == [4, 4, 4]


def test_class_smaller_than_folds_fails_before_any_training(monkeypatch):
    X, y = table()
    y = np.array([0] * 22 + [1] * 2 + [2] * 12)  # class "b" has only 2 rows
    calls = []
    monkeypatch.setattr(engine, "fit", lambda *a, **k: calls.append(1))
    cfg = load_config(None, SETS)
    with pytest.raises(DataError) as e:
        cv.cross_validate(X, y, models.model_args(cfg.model, [4], 3, "tabular"), cfg, "tabular", None, ["a", "b", "c"])
    assert "cv.folds" in str(e.value) and "'b' has 2" in str(e.value)
    assert calls == []


def test_no_held_out_row_reaches_training(monkeypatch):
    """Rows given to fit (its training and early-stopping sets), rows the augmentation sees, and
    the normalization statistics all come from the training fold."""
    X, y = table()
    cfg = load_config(None, SETS)
    real_fit = engine.fit
    seen = []

    def spy_fit(model, X_tr, y_tr, X_va, y_va, tcfg, seed, augment=None, **kw):
        batches = []

        def spy_aug(xb, g):
            batches.append(xb.clone())
            return augment(xb, g)

        hist = real_fit(model, X_tr, y_tr, X_va, y_va, tcfg, seed, augment=spy_aug, **kw)
        X_tr, X_va = rows_of(X_tr), rows_of(X_va)
        seen.append(
            {
                "fit": ids(X_tr),
                "stop": ids(X_va),
                "aug": ids(torch.cat(batches).numpy()) if batches else set(),
                "mean": model.norm.mean.clone(),
                "X_tr": X_tr,
            }
        )
        return hist

    monkeypatch.setattr(engine, "fit", spy_fit)
    folds = cv.cross_validate(
        X, y, models.model_args(cfg.model, [4], 3, "tabular"), cfg, "tabular", None, ["a", "b", "c"]
    )
    assert len(folds) == len(seen) == 3
    for fold, s in zip(folds, seen):
        held = set(fold.held_out.tolist())
        assert held and not held & s["fit"] and not held & s["stop"]
        assert s["aug"] and not held & s["aug"]
        assert s["fit"] | s["stop"] | held == set(range(len(y)))
        torch.testing.assert_close(s["mean"], torch.as_tensor(s["X_tr"].mean(0)))  # fitted on the training rows only
        assert set(fold.metrics) >= set(cv.METRICS)


def test_summary_matches_numpy():
    folds = [cv.Fold(i, {m: v for m in cv.METRICS}, 1, 1, np.array([i])) for i, v in enumerate([0.9, 1.0, 0.95])]
    s = cv.summarize(folds)
    assert s["folds"] == 3
    assert s["accuracy_mean"] == pytest.approx(np.mean([0.9, 1.0, 0.95]))
    assert s["accuracy_std"] == pytest.approx(np.std([0.9, 1.0, 0.95]))


def test_loss_matches_torch_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 3)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    y[:3] = [0, 1, 2]
    want = torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(y)).item()
    assert cv.score(y, logits)["loss"] == pytest.approx(want, rel=1e-5)
