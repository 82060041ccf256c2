"""Training checkpoints: atomic, self-verifying, tensors and plain data only.

A checkpoint is `epoch-0007.<sha256[:16]>.pt` in its folder: the digest of the file's bytes is in
its name, so a torn or altered file is detected before torch parses it. Files are written with
fileio.atomic_file (temp file in the same folder, flush, fsync, os.replace) and the newest K
are kept. Loading uses `torch.load(weights_only=True)`: a file that needs a pickled object
(a class, a function, a numpy array) is refused, never executed."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from components.errors import MlpipeError
from components.fileio import atomic_file

FORMAT = "mlpipe.checkpoint/1"
NAME = re.compile(r"^epoch-(\d{4,})\.([0-9a-f]{16})\.pt$")


class CheckpointError(MlpipeError):
    pass


class CheckpointWarning(UserWarning):
    pass


class _Corrupt(CheckpointError):
    """Torn, truncated or foreign: skipped with a warning (unlike a refused pickled object)."""


@dataclass(frozen=True)
class Entry:
    path: Path
    epoch: int
    digest: str


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def entries(folder: str | Path) -> list[Entry]:
    """Checkpoint files in folder, oldest first (by epoch, then modification time)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p.stat().st_mtime_ns, Entry(p, int(m.group(1)), m.group(2))))
    return [e for *_, e in sorted(found, key=lambda t: t[:2])]


def save(folder: str | Path, epoch: int, state: dict, keep: int) -> Path:
    """Write state as the checkpoint of `epoch`, then prune to the newest `keep` files."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "epoch": int(epoch), **state}, buf)
    data = buf.getvalue()
    path = Path(folder) / f"epoch-{epoch:04d}.{_digest(data)}.pt"
    with atomic_file(path) as f:
        f.write(data)
    prune(folder, keep)
    return path


def snapshot(obj):
    """A copy of a state tree that training can't change under a writer: tensors cloned (to CPU),
    dicts/lists/tuples copied, everything else (numbers, strings) shared."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def _background_priority() -> None:
    """Nice 19 for the calling thread alone (Linux keeps a nice value per thread): when training
    keeps every core busy, the scheduler runs the writer in the gaps instead of pre-empting an
    intra-op thread (2 threads on 2 cores: a checkpointed epoch 1.7-3.6% slower than one without,
    against 5.0-6.0% at normal priority; BENCHMARKS.md, issue 4)."""
    if sys.platform.startswith("linux"):  # elsewhere a thread id is not a valid setpriority target
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


class Writer:
    """Writes checkpoints on one background thread, so the next epoch trains while the last one is
    serialized, written and fsynced. submit() snapshots the state before it returns and first waits
    for the write before it, so at most one is in flight and files land in epoch order; a failed
    write is raised by the next submit() or by close(). Use as a context manager: leaving it waits
    for the last write, also when training stopped with an error. background: the thread runs at
    background priority (_background_priority); False keeps the process's (for comparison)."""

    def __init__(self, background: bool = True) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer",
                                        initializer=_background_priority if background else None)
        self._pending: Future | None = None

    def submit(self, folder: str | Path, epoch: int, state: dict, keep: int) -> None:
        self.wait()
        self._pending = self._pool.submit(save, folder, epoch, snapshot(state), keep)

    def wait(self) -> Path | None:
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # training already failed: that error is the one to raise; a write error is reported beside it
            self.close()
        except Exception as err:
            warnings.warn(f"the last checkpoint could not be written: {err}", CheckpointWarning, stacklevel=2)


def prune(folder: str | Path, keep: int) -> None:
    for e in entries(folder)[:-keep] if keep > 0 else []:
        e.path.unlink(missing_ok=True)


def clear(folder: str | Path) -> None:
    """Remove the checkpoints of an earlier, different run before a fresh start."""
    for e in entries(folder):
        e.path.unlink(missing_ok=True)


def _refused_global(err: Exception) -> str | None:
    """The pickled global torch's weights-only unpickler rejected, or None for other errors."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if m:
        return m.group(1)
    return "an object" if "Weights only load failed" in str(err) else None


def read(entry: Entry) -> dict:
    """One checkpoint -> its state; _Corrupt when unreadable, CheckpointError when refused."""
    data = entry.path.read_bytes()
    if _digest(data) != entry.digest:
        raise _Corrupt(f"{entry.path}: checkpoint is torn or corrupt (sha256 {_digest(data)} does not match its name)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = _refused_global(e)
        if what is not None:
            raise CheckpointError(
                f"{entry.path}: refused: the checkpoint contains a pickled object ({what}); "
                "checkpoints may hold only tensors and plain data (loaded with weights_only=True)") from None
        raise _Corrupt(f"{entry.path}: checkpoint cannot be read ({e})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise _Corrupt(f"{entry.path}: checkpoint cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _Corrupt(f"{entry.path}: not an mlpipe checkpoint (expected format {FORMAT})")
    return state


def load_latest(folder: str | Path, key: str | None = None) -> tuple[dict, Path] | None:
    """The newest readable checkpoint whose `key` matches (the run it belongs to) -> (state, path).

    A torn or corrupt file is reported as a CheckpointWarning naming it and the previous one is
    tried; a file holding a pickled object raises CheckpointError. None when nothing usable."""
    for e in reversed(entries(folder)):
        try:
            state = read(e)
        except _Corrupt as err:
            warnings.warn(f"{err}; falling back to the previous checkpoint", CheckpointWarning, stacklevel=2)
            continue
        if key is not None and state.get("key") != key:
            warnings.warn(f"{e.path}: checkpoint belongs to another configuration or dataset; not resuming from it",
                          CheckpointWarning, stacklevel=2)
            return None
        return state, e.path
    return None
