"""The reference for the train stage's overhead: a bare PyTorch loop over in-memory tensors, with
no streaming, checkpoints, RNG capture, NaN checks, history or logging.

With `val` and `schedule` it computes what the stage computes (the training recipe): the per-epoch
validation pass of the PyTorch tutorials' train/test loop (loss and accuracy on held-out rows, in
eval mode, without gradients) and the default one-cycle learning-rate schedule. Without them it is
the training steps alone."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def bare_train(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    fused: bool = True,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    val_every: int = 1,
    schedule: bool = False,
) -> float:
    """-> training samples per second (validation time included). fused: torch's fused AdamW kernel,
    as the engine uses on CPU and CUDA (False: torch's default AdamW implementation). val: (X, y)
    scored after every val_every-th epoch and the last. schedule: OneCycleLR stepped every batch,
    as train.scheduler onecycle (15% warm-up)."""
    g = torch.Generator().manual_seed(seed)
    x, t = torch.as_tensor(np.asarray(X, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=fused or None)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15) if schedule else None
    history = []  # (val_loss, val_accuracy) per validated epoch, as a loop that prints them keeps them
    if val is not None:
        xv, tv = (
            torch.as_tensor(np.asarray(val[0], dtype=np.float32)),
            torch.as_tensor(np.asarray(val[1], dtype=np.int64)),
        )
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        if val is not None and (epoch % val_every == 0 or epoch == epochs):
            model.eval()
            with torch.no_grad():
                logits = model(xv)
                history.append(
                    (nn.functional.cross_entropy(logits, tv).item(), (logits.argmax(1) == tv).float().mean().item())
                )
    return len(x) * epochs / (time.perf_counter() - start)
