"""The reference for the train stage's overhead: a bare PyTorch loop, nothing but
forward/backward/step over in-memory tensors (no validation, checkpoints, logging or streaming)."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def bare_train(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, lr: float, seed: int,
               fused: bool = True) -> float:
    """-> training samples per second. fused: torch's fused AdamW kernel, as the engine uses on CPU
    and CUDA (False: torch's default AdamW implementation)."""
    g = torch.Generator().manual_seed(seed)
    x, t = torch.as_tensor(np.asarray(X, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=fused or None)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return len(x) * epochs / (time.perf_counter() - start)
