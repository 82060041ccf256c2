"""Training: AdamW, a learning-rate schedule, early stopping on validation loss, seeded.

fit() knows nothing about MLflow: it reports through the `log(metrics, step)` callback."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from components.config import TrainConfig

LogFn = Callable[[dict, int], None]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int) -> None:
    torch.set_num_threads(n or os.cpu_count() or 1)


def val_split(y: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified indices (train_idx, val_idx) of the training split, for early stopping."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=val_size, random_state=seed, stratify=y)
    return np.sort(tr), np.sort(va)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    best_epoch: int = 0  # the epoch whose weights the model ends with (train.keep: last -> the final one)
    stopped_early: bool = False
    resumed_from: int = 0  # last epoch restored from a checkpoint; 0 = a fresh start
    train_seconds: list[float] = field(default_factory=list)  # wall time of each epoch's training steps

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "resumed_from": self.resumed_from, "train_seconds": self.train_seconds}


def _batches(n: int, batch_size: int, g: torch.Generator | None):
    order = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """Logits for X, on the CPU; the batches run wherever the caller put the model (a GPU, say)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # no parameters (an ONNX Runtime wrapper): CPU
    x = torch.as_tensor(np.asarray(X, dtype=np.float32))
    return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]) if len(x) \
        else torch.empty(0)


def _scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


def fit(
    model: nn.Module,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    augment: Callable | None = None,
    log: LogFn | None = None,
    progress: bool = True,
    **engine,
) -> History:
    """Train in place; on return the model holds the weights cfg.keep picks (the final epoch's, or
    the lowest validation loss's), on the device it was given on (it trains on a GPU when there is one).

    X_* may be arrays, memmaps (streamed batch by batch) or stream.Rows views. Optional engine
    keywords (components/engine.py): dist (a DDP rank), checkpoint_dir + resume_key (atomic
    checkpoints, exact resume), on_epoch(epoch, row) (e.g. an Optuna pruner)."""
    from components.engine import train_loop

    return train_loop(model, X_train, y_train, X_val, y_val, cfg, seed, augment, log, progress, **engine)
