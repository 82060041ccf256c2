"""The training recipe: how every model in mlpipe is trained, by tune, cv, train and compress.

Recipe(cfg, X, y, rows) splits `rows` into fit and early-stopping rows (stratified, seeded),
builds the training-batch augmentation from the fit rows, and Recipe.fit(spec) seeds, builds the
model and runs the loop (components/engine.py). The loop knows nothing about MLflow: it reports
through the `log(metrics, step)` callback."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from components import augment, engine, models, stream
from components.config import Config
from components.engine import History, LogFn, seed_everything
from components.errors import DataError
from components.folds import val_split  # noqa: F401  re-exported: the recipe's early-stopping rows

__all__ = ["History", "LogFn", "Recipe", "predict_logits", "seed_everything", "set_threads", "val_split"]


def set_threads(n: int) -> None:
    torch.set_num_threads(n or os.cpu_count() or 1)


def as_input(X) -> torch.Tensor:
    """Model input from an array: token ids stay integers (an embedding index must not pass through float),
    anything else becomes float32."""
    X = np.asarray(X)
    return torch.as_tensor(X if np.issubdtype(X.dtype, np.integer) else X.astype(np.float32, copy=False))


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """Logits for X, on the CPU; the batches run wherever the caller put the model (a GPU, say).
    X may be a memmap or a stream.Rows view: it is read a batch at a time, never whole."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # no parameters (an ONNX Runtime wrapper): CPU
    n, out = len(X), []
    for i in range(0, n, batch_size):
        if isinstance(X, stream.Rows):
            xb = X.take(X.rows(np.arange(i, min(n, i + batch_size))))
        else:
            xb = np.array(X[i : i + batch_size])  # a fresh, writable batch (a memmap's rows are read-only)
        out.append(model(as_input(xb).to(device)).cpu())
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class Recipe:
    """Training on rows `rows` of (X, y) (None: all): the fit rows and the early-stopping rows are
    a stratified, seeded split of them; augmentation statistics come from the fit rows only."""

    cfg: Config
    X: np.ndarray  # (N, *feature_shape) float32; an array or a memmap (streamed by batch)
    y: np.ndarray  # (N,) class indices
    kind: str  # data kind: image | tabular
    value_range: list[float] | None
    rows: np.ndarray | None = None
    fit_rows: np.ndarray = field(init=False)
    stop_rows: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        rows = np.arange(len(self.y)) if self.rows is None else np.asarray(self.rows, dtype=np.int64)
        try:
            fit, stop = val_split(self.y[rows], self.cfg.data.val_size, self.cfg.seed)
        except ValueError as e:  # sklearn: a class too small for a stratified split
            raise DataError(f"data.val_size: cannot split {len(rows)} training rows for early stopping ({e})") from None
        self.fit_rows, self.stop_rows = rows[fit], rows[stop]

    def augmentation(self):
        """The training-batch transform (None when augmentation is off)."""
        sample = self.X[self.fit_rows[:10_000]]  # build_augment reads at most 10,000 rows
        return augment.build_augment(self.cfg.augment, self.kind, sample, self.value_range)

    def fit(self, spec: dict, log: LogFn | None = None, progress: bool = False, **loop) -> tuple[nn.Module, History]:
        """Seed, build the model from spec, train it -> (model, history). `loop` goes to
        engine.fit: dist, checkpoint_dir, resume_key, on_epoch, loss_fn."""
        seed_everything(self.cfg.seed)  # weight init is part of the seeded run
        model = models.build(spec)
        aug = self.augmentation()
        X_fit, X_stop = stream.Rows(self.X, self.fit_rows), stream.Rows(self.X, self.stop_rows)
        hist = engine.fit(
            model,
            X_fit,
            self.y[self.fit_rows],
            X_stop,
            self.y[self.stop_rows],
            self.cfg.train,
            self.cfg.seed,
            augment=aug,
            log=log,
            progress=progress,
            **loop,
        )
        return model, hist
