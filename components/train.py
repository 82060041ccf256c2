"""Training: AdamW, a learning-rate schedule, early stopping on validation loss, seeded.

fit() knows nothing about MLflow: it reports through the `log(metrics, step)` callback."""
from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from components.config import TrainConfig
from components.errors import MlpipeError

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
    best_epoch: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "stopped_early": self.stopped_early}


def _batches(n: int, batch_size: int, g: torch.Generator | None):
    order = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    x = torch.as_tensor(np.asarray(X, dtype=np.float32))
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else torch.empty(0)


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
) -> History:
    """Train in place; on return the model holds the weights of the best validation epoch."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    g = seed_everything(seed)
    if hasattr(model, "norm"):
        model.norm.fit(X_train)
    x = torch.as_tensor(np.asarray(X_train, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(x) / cfg.batch_size)
    sched = _scheduler(opt, cfg, steps)
    loss_fn = nn.CrossEntropyLoss()
    hist, best, best_state, bad = History(), math.inf, None, 0
    columns = [TextColumn("train"), BarColumn(), TextColumn("epoch {task.completed}/{task.total} {task.fields[msg]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=cfg.epochs, msg="")
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            total, n = 0.0, 0
            for idx in _batches(len(x), cfg.batch_size, g):
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb = augment(xb, g)
                loss = loss_fn(model(xb), yb)
                if not torch.isfinite(loss):
                    raise MlpipeError(f"training diverged: loss is {loss.item()} at epoch {epoch}; lower train.lr (now {cfg.lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += loss.item() * len(idx)
                n += len(idx)
            logits = predict_logits(model, X_val)
            yv = torch.as_tensor(np.asarray(y_val, dtype=np.int64))
            val_loss = loss_fn(logits, yv).item()
            row = {"train_loss": total / n, "val_loss": val_loss,
                   "val_accuracy": (logits.argmax(1) == yv).float().mean().item(), "lr": opt.param_groups[0]["lr"]}
            hist.epochs.append(row)
            if log is not None:
                log(row, epoch)
            if val_loss < best - 1e-6:
                best, best_state, bad, hist.best_epoch = val_loss, copy.deepcopy(model.state_dict()), 0, epoch
            else:
                bad += 1
            bar.update(task, advance=1, msg=f"val_loss {val_loss:.4f} val_acc {row['val_accuracy']:.4f}")
            if bad >= cfg.patience:
                hist.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return hist
