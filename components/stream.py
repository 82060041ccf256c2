"""Batches from in-memory arrays or memory-mapped .npy files with bounded memory.

The rows of a large .npy file (an np.memmap of the whole file, over KEEP_MAPPED_BYTES) are read
with pread into a fresh batch array, never through the mapping: mapped file pages count in the
process's RSS (re-mapping per batch, as nanoGPT does, still showed transient spikes of hundreds of
MB), while pread leaves them in the kernel's page cache. So RSS stays about one batch even when
the file is larger than RAM. Nothing here calls np.asarray on a whole memmap."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

CHUNK_BYTES = 64 << 20  # statistics passes read at most this much at a time
KEEP_MAPPED_BYTES = 256 << 20  # a smaller file stays mapped (re-mapping costs ~0.3 ms a batch)


class Rows:
    """X[index] (index=None: all rows), read batch by batch."""

    def __init__(self, X: np.ndarray, index: np.ndarray | None = None):
        self.X = X
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self._file = _whole_file_map(X)
        self._fd: tuple[int, int] | None = None  # (pid, fd): re-opened in forked loader workers

    def __len__(self) -> int:
        return len(self.X) if self.index is None else len(self.index)

    @property
    def streamed(self) -> bool:
        return self._file is not None  # re-mapped per batch (files over KEEP_MAPPED_BYTES)

    def rows(self, pos: np.ndarray) -> np.ndarray:
        """Positions within this view -> row numbers in X."""
        return pos if self.index is None else self.index[pos]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows of X (row numbers) as a fresh in-memory array."""
        if self._file is None:
            return np.asarray(self.X[rows])
        path, dtype, offset, shape = self._file
        out = np.empty((len(rows), *shape[1:]), dtype)
        row_bytes = out[0].nbytes if len(rows) else 0
        raw = out.reshape(len(rows), -1).view(np.uint8)  # (B, row_bytes) view of out
        fd = self._open(path)
        for i, r in enumerate(np.asarray(rows, dtype=np.int64)):
            if os.preadv(fd, [raw[i]], offset + int(r) * row_bytes) != row_bytes:
                raise OSError(f"{path}: short read at row {r} (file truncated?)")
        return out

    def _open(self, path: str) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(path, os.O_RDONLY))
        return self._fd[1]

    def __getstate__(self):  # a spawned loader worker opens its own descriptor
        return {**self.__dict__, "_fd": None}


def _whole_file_map(X) -> tuple | None:
    """(path, dtype, offset, shape) when X is a memmap of an entire .npy file, else None."""
    if not isinstance(X, np.memmap) or not getattr(X, "filename", None) or not X.flags.c_contiguous:
        return None
    try:
        with open(X.filename, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError):
        return None
    if fortran or tuple(shape) != X.shape or dtype != X.dtype:
        return None  # a slice or a raw memmap: fall back to plain indexing
    if X.nbytes <= KEEP_MAPPED_BYTES:
        return None  # small: its resident pages are bounded by its size anyway
    return X.filename, dtype, offset, X.shape


def as_view(X) -> Rows:
    return X if isinstance(X, Rows) else Rows(X)


def channel_stats(view: Rows, per_feature: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (images, dims 0,2,3) or per-feature (flattened) mean and std, in chunks."""
    n = len(view)
    row_bytes = max(1, int(np.prod(view.X.shape[1:])) * view.X.dtype.itemsize)
    step = max(1, CHUNK_BYTES // row_bytes)
    s = sq = None
    count = 0
    for i in range(0, n, step):
        x = view.take(view.rows(np.arange(i, min(n, i + step)))).astype(np.float64)  # float64 sums
        if per_feature:
            x = x.reshape(len(x), -1)
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        s = x.sum(axis=axes) + (0 if s is None else s)
        sq = (x * x).sum(axis=axes) + (0 if sq is None else sq)
        count += x.size // s.size
    mean = s / count
    var = (sq - count * mean * mean) / max(1, count - 1)  # unbiased, as torch.std
    return mean, np.sqrt(np.maximum(var, 0.0))


def fit_norm(model, X) -> None:
    """Fit the model's Standardize layer: in one go for in-memory data (as before), in chunks
    for a memmap."""
    if not hasattr(model, "norm"):
        return
    view = as_view(X)
    if not view.streamed:
        model.norm.fit(np.asarray(view.X if view.index is None else view.X[view.index]))
        return
    features = int(np.prod(view.X.shape[1:]))
    mean, std = channel_stats(view, per_feature=model.norm.mean.numel() == features and view.X.ndim > 2)
    model.norm.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(model.norm.mean.shape))
    model.norm.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6).reshape(model.norm.std.shape))


def token_lengths(view: Rows) -> np.ndarray | None:
    """(len(view),) int64 tokens before the padding of each row, for token-id data ((N, T) integers, right-padded
    with 0, components/text.py); None for any other data. Read in chunks."""
    X = view.X
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.integer):
        return None
    n, T = len(view), X.shape[1]
    step = max(1, CHUNK_BYTES // max(1, T * X.dtype.itemsize))
    out = np.empty(n, dtype=np.int64)
    for i in range(0, n, step):
        real = view.take(view.rows(np.arange(i, min(n, i + step)))) != 0
        last = T - np.argmax(real[:, ::-1], axis=1)  # one past the last non-padding token
        out[i : i + len(real)] = np.where(real.any(1), last, 0)
    return out


def trim(xb: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, T') without the columns that are padding in every row (at least one left)."""
    real = (xb != 0).any(0).nonzero()
    return xb[:, : int(real[-1]) + 1] if len(real) else xb[:, :1]


def _batch(X: Rows, y: np.ndarray, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(X.take(X.rows(pos))), torch.from_numpy(np.asarray(y[pos], dtype=np.int64))


class _BatchSet(torch.utils.data.Dataset):
    """One item = one batch of positions (for DataLoader workers)."""

    def __init__(self, X: Rows, y: np.ndarray):
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, pos: np.ndarray):
        return _batch(self.X, self.y, pos)


def batches(
    X: Rows, y: np.ndarray, positions: np.ndarray, batch_size: int, workers: int = 0, pin: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) CPU tensors for consecutive slices of `positions` (positions within X's view;
    y is aligned with the view). Each batch is read in sorted order, for locality."""
    groups = [np.sort(positions[i : i + batch_size]) for i in range(0, len(positions), batch_size)]
    if workers == 0:
        for pos in groups:
            yield _batch(X, y, pos)
        return
    loader = torch.utils.data.DataLoader(
        _BatchSet(X, y),
        sampler=groups,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4,
        generator=torch.Generator().manual_seed(0),
    )  # leaves the global RNG (dropout) alone
    yield from loader
