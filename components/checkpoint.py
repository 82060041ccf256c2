"""Training checkpoints: atomic, self-verifying, tensors and plain data only.

A checkpoint is `epoch-0007.<sha256[:16]>.pt` in its folder: the digest of the file's bytes is in
its name, so a torn or altered file is detected before torch parses it. Files are written with
fileio.atomic_file (temp file in the same folder, flush, fsync, os.replace) and the newest K
are kept. Loading uses `torch.load(weights_only=True)`: a file that needs a pickled object
(a class, a function, a numpy array) is refused, never executed.

Inside, the state's tensors are packed: one flat tensor per dtype holds their values, and an index
gives each one's place and shape. torch.save spends ~35 us of CPU per tensor record: the 82 tensors
of the default CNN with its AdamW moments took 3.7 ms as records, 1.0 ms packed (BENCHMARKS.md,
issue 4), nearly all of it in the pickler. Serialization runs on the training thread (Writer), so
that time is training's own."""

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

FORMAT = "mlpipe.checkpoint/2"  # tensors packed, one flat tensor per dtype
UNPACKED = "mlpipe.checkpoint/1"  # earlier files: tensors stored one by one; still read
_REF = "__mlpipe_tensor__"  # {_REF: i} stands for the i-th tensor of the index in a packed tree
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


_GO_ON = object()


def _rebuild(obj, visit):
    """A copy of a tree of dicts, lists and tuples in which every node visit() answers for (anything
    but _GO_ON) is replaced by that answer."""
    new = visit(obj)
    if new is not _GO_ON:
        return new
    if isinstance(obj, dict):
        return {k: _rebuild(v, visit) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(v, visit) for v in obj)
    return obj


def pack(state: dict) -> dict:
    """The state as a checkpoint stores it, and a copy training can't change under a writer: the
    tree with each tensor replaced by {_REF: i}, the tensors' values concatenated into one flat
    CPU tensor per (device, dtype), and an index of [buffer, offset, numel, shape] per tensor."""
    tensors: list[torch.Tensor] = []

    def strip(obj):
        if not isinstance(obj, torch.Tensor):
            return _GO_ON
        tensors.append(obj.detach())
        return {_REF: len(tensors) - 1}

    tree = _rebuild(state, strip)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    index: list = [None] * len(tensors)
    buffers = []
    for b, members in enumerate(groups.values()):
        offset = 0
        for i in members:
            index[i] = [b, offset, tensors[i].numel(), list(tensors[i].shape)]
            offset += tensors[i].numel()
        buffers.append(torch.cat([tensors[i].reshape(-1) for i in members]).cpu())  # cat copies: a snapshot
    return {"tree": tree, "tensors": index, "buffers": buffers}


def _unpack(state: dict, path: Path) -> dict:
    """A packed file's contents -> the state tree with its tensors (each its own copy)."""

    def fill(obj):
        is_ref = isinstance(obj, dict) and len(obj) == 1 and _REF in obj
        return tensors[obj[_REF]] if is_ref else _GO_ON

    try:
        buffers, tensors = state["buffers"], []
        for b, offset, n, shape in state["tensors"]:
            values = buffers[b][offset : offset + n]
            if offset < 0 or len(values) != n:
                raise ValueError(f"values {offset}..{offset + n} lie outside their buffer of {len(buffers[b])}")
            tensors.append(values.reshape(shape).clone())
        return {**_rebuild(state["tree"], fill), "format": state["format"], "epoch": state["epoch"]}
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as e:
        raise _Corrupt(f"{path}: checkpoint cannot be read ({type(e).__name__}: {e})") from None


def serialize(epoch: int, state: dict) -> memoryview:
    """The bytes of the checkpoint of `epoch` (packs state first)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "epoch": int(epoch), **pack(state)}, buf)
    return buf.getbuffer()


def store(folder: str | Path, epoch: int, data: memoryview, keep: int) -> Path:
    """Name the bytes by their digest, write them atomically, prune to the newest `keep`. Hashing,
    writing and fsync release the GIL: a thread doing this barely holds it."""
    path = Path(folder) / f"epoch-{epoch:04d}.{_digest(data)}.pt"
    with atomic_file(path) as f:
        f.write(data)
    prune(folder, keep)
    return path


def save(folder: str | Path, epoch: int, state: dict, keep: int) -> Path:
    """Write state as the checkpoint of `epoch`, then prune to the newest `keep` files."""
    return store(folder, epoch, serialize(epoch, state), keep)


def _background_priority() -> None:
    """Nice 19 for the calling thread alone (Linux keeps a nice value per thread): when training
    keeps every core busy, the scheduler runs the writer in the gaps instead of pre-empting an
    intra-op thread (2 threads on 2 cores: a checkpointed epoch 1.7-3.6% slower than one without,
    against 5.0-6.0% at normal priority; benchmarks/results/HISTORY.md, issue 4)."""
    if sys.platform.startswith("linux"):  # elsewhere a thread id is not a valid setpriority target
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


class Writer:
    """Stores checkpoints on one background thread, so the next epoch trains while the last one is
    hashed, written and fsynced. submit() packs and serializes the state on the caller's thread (at
    background priority with every core training, a writer that also pickled was still busy when the
    next epoch ended, and pickling holds the GIL; benchmarks/results/HISTORY.md, issue 4), then waits for the write
    before it, so at most one is in flight and files land in epoch order; a failed write is raised by
    the next submit() or by close(). Use as a context manager: leaving it waits for the last write,
    also when training stopped with an error. background: the thread runs at background priority
    (_background_priority); False keeps the process's (for comparison)."""

    def __init__(self, background: bool = True) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="checkpoint-writer",
            initializer=_background_priority if background else None,
        )
        self._pending: Future | None = None

    def submit(self, folder: str | Path, epoch: int, state: dict, keep: int) -> None:
        data = serialize(epoch, state)
        self.wait()
        self._pending = self._pool.submit(store, folder, epoch, data, keep)

    def wait(self) -> Path | None:
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # training already failed: that error is the one to raise; a write error is reported beside it
            self.close()
        except Exception as err:  # noqa: BLE001 - the run's own outcome is the one to report
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
                "checkpoints may hold only tensors and plain data (loaded with weights_only=True)"
            ) from None
        raise _Corrupt(f"{entry.path}: checkpoint cannot be read ({e})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise _Corrupt(
            f"{entry.path}: checkpoint cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, UNPACKED):
        raise _Corrupt(f"{entry.path}: not an mlpipe checkpoint (expected format {FORMAT})")
    return _unpack(state, entry.path) if state["format"] == FORMAT else state


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
            warnings.warn(
                f"{e.path}: checkpoint belongs to another configuration or dataset; not resuming from it",
                CheckpointWarning,
                stacklevel=2,
            )
            return None
        return state, e.path
    return None
