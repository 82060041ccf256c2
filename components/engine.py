"""The training loop (fit): one process or one DDP rank, fp32/bf16/fp16, checkpoints
and exact resume, in-memory or memory-mapped data.

Resume is exact: a checkpoint holds the model, optimizer, scheduler, grad scaler, early-stopping
state, the history and every rank's RNG states (torch, CUDA, numpy, python, the augmentation
generator); the batch order of an epoch is a function of (seed, epoch) alone (distributed.shard).
So an interrupted run that resumes ends with the same weights as one that never stopped."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from components import checkpoint, distributed, stream
from components.config import TrainConfig
from components.errors import ConfigError, MlpipeError

EVAL_BATCH = 1024


class TrainingDiverged(MlpipeError):
    pass


LogFn = Callable[[dict, int], None]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    best_epoch: int = 0  # the epoch whose weights the model ends with (train.keep: last -> the final one)
    stopped_early: bool = False
    resumed_from: int = 0  # last epoch restored from a checkpoint; 0 = a fresh start
    train_seconds: list[float] = field(default_factory=list)  # wall time of each epoch's training steps

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "resumed_from": self.resumed_from,
            "train_seconds": self.train_seconds,
        }


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    """cfg.warmup None: onecycle warms up over 15% of the steps, cosine and none not at all; else a linear
    warm-up over that fraction of the steps (onecycle: its pct_start), then the schedule."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        pct = 0.15 if cfg.warmup is None else min(max(cfg.warmup, 2 / total), 0.99)  # OneCycleLR needs >= 2 steps
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    warm = round((cfg.warmup or 0.0) * total)
    if cfg.scheduler == "cosine" and not warm:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if not warm:
        return None
    cosine = cfg.scheduler == "cosine"

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))) if cosine else 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class LoopState:
    """Early stopping and progress: everything besides weights and RNG that resume needs."""

    epoch: int = 0  # last finished epoch
    best: float = math.inf  # best validation loss so far
    bad: int = 0  # epochs since it improved
    best_state: dict | None = None  # model weights of the best epoch
    history: History | None = None
    done: bool = False  # stopped early: nothing left to run


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision: fp16 needs a CUDA device (it trains with a gradient scaler); this run is on "
            f"{device.type}: use bf16 or fp32"
        )


def rng_state(g: torch.Generator, device: torch.device) -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, py_gauss = random.getstate()
    # python's 625 words as one tensor: as a tuple they were most of a checkpoint's pickled objects
    state = {
        "torch": torch.get_rng_state(),
        "generator": g.get_state(),
        "python": [version, torch.tensor(words, dtype=torch.int64), py_gauss],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, g: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    g.set_state(state["generator"])
    py = state["python"]
    words = py[1].tolist() if isinstance(py[1], torch.Tensor) else py[1]  # a tuple in mlpipe.checkpoint/1 files
    random.setstate((py[0], tuple(words), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng(g: torch.Generator, d: distributed.Dist) -> list[dict]:
    """Every rank's RNG state, in rank order (on rank 0; others get their own only)."""
    mine = rng_state(g, d.device)
    if not d.enabled:
        return [mine]
    box: list = [None] * d.world
    torch.distributed.all_gather_object(box, mine)
    return box


def _cpu(sd: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def save_checkpoint(
    writer: checkpoint.Writer, folder: Path, key: str, keep: int, st: LoopState, model, opt, sched, scaler, rngs
) -> None:
    """Queue the checkpoint of st.epoch on the writer (it packs and serializes the state before returning)."""
    h = st.history
    state = {
        "key": key,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rngs,
        "loop": {
            "best": st.best,
            "bad": st.bad,
            "done": st.done,
            "best_state": st.best_state,
            "history": {
                "epochs": h.epochs,
                "best_epoch": h.best_epoch,
                "stopped_early": h.stopped_early,
                "train_seconds": h.train_seconds,
            },
        },
    }
    writer.submit(folder, st.epoch, state, keep)


def _checkpoint_due(epoch: int, done: bool, cfg: TrainConfig, since_last: float, d: distributed.Dist) -> bool:
    """Every checkpoint_every epochs once checkpoint_min_seconds have passed since the last checkpoint
    (or the start), and always after the last epoch. Rank 0's clock decides for every rank, which
    all take part in the checkpoint's RNG gather."""
    if done or epoch == cfg.epochs:
        return True
    if epoch % cfg.checkpoint_every:
        return False
    return distributed.any_rank(d.is_main and since_last >= cfg.checkpoint_min_seconds, d)


def _resume(folder: Path, key: str, d: distributed.Dist, model, opt, sched, scaler, g, st: LoopState) -> Path | None:
    """Restore from the newest good checkpoint; rank 0 picks it, every rank loads the same file (by its
    name: on several nodes the shared folder may be mounted at a different path on each)."""
    found, refused = None, None
    if d.is_main:
        try:
            found = checkpoint.load_latest(folder, key)
        except checkpoint.CheckpointError as e:
            refused = str(e)
    name = distributed.broadcast_str(f"!{refused}" if refused else Path(found[1]).name if found else None, d)
    if name is not None and name.startswith("!"):  # every rank stops, none waits for the others
        raise checkpoint.CheckpointError(name[1:])
    if name is None:
        if d.is_main:
            checkpoint.clear(folder)  # another run's files would outrank this run's by epoch
        distributed.barrier(d)
        return None
    state = (
        found[0] if d.is_main else checkpoint.read(next(e for e in checkpoint.entries(folder) if e.path.name == name))
    )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][d.rank], g, d.device)
    loop, h = state["loop"], st.history
    st.epoch, st.best, st.bad, st.done, st.best_state = (
        state["epoch"],
        loop["best"],
        loop["bad"],
        loop["done"],
        loop["best_state"],
    )
    saved = loop["history"]
    h.epochs, h.best_epoch, h.stopped_early = list(saved["epochs"]), saved["best_epoch"], saved["stopped_early"]
    h.train_seconds = list(saved["train_seconds"])
    return folder / name


@torch.no_grad()
def evaluate(
    model: nn.Module,
    X: stream.Rows,
    y: np.ndarray,
    d: distributed.Dist,
    precision: str = "fp32",
    channels_last: bool = False,
    lengths: np.ndarray | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over X, each rank scoring every world-th row, summed over ranks.
    lengths: token ids (text) with their lengths: rows are scored in length order, each batch cut to its
    longest row (padding is masked, so the figures are the same)."""
    model.eval()
    pos = np.arange(d.rank, len(X), d.world)
    if lengths is not None:
        pos = pos[np.argsort(lengths[pos], kind="stable")]
    loss = correct = 0.0
    for xb, yb in stream.batches(X, y, pos, EVAL_BATCH):
        if lengths is not None:
            xb = stream.trim(xb)
        xb, yb = _to(xb, d.device, channels_last), yb.to(d.device)
        with autocast(d.device, precision):
            logits = model(xb).float()
        loss += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    loss, correct, n = distributed.all_sum([loss, correct, float(len(pos))], d)
    return loss / max(n, 1), correct / max(n, 1)


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def _diverged(value, epoch: int, step: int | None, cfg: TrainConfig) -> TrainingDiverged:
    where = f"epoch {epoch}, step {step}" if step is not None else f"epoch {epoch} (on another rank)"
    return TrainingDiverged(
        f"training diverged: loss is {value} at {where}; lower train.lr (now {cfg.lr}) or use train.precision fp32 "
        f"(now {cfg.precision}). No checkpoint was written for this epoch."
    )


def adamw(params, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel on CPU and CUDA (one kernel for all parameters instead of
    several small ops per tensor: 4-9% faster training steps for the default CNN on CPU, BENCHMARKS.md)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))


def cross_entropy(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """The default training loss; a loss_fn gets the (augmented) input batch too, e.g. for a teacher."""
    return nn.functional.cross_entropy(logits, yb)


def train_epoch(net, X, y, epoch, cfg, seed, d, opt, sched, scaler, augment, g, loss_fn, lengths=None) -> float:
    """One epoch -> mean training loss over all ranks. A single CPU process checks the loss every step;
    on a GPU or with several ranks it is checked once at the end of the epoch (a per-step check would
    stall the GPU queue or add an all-reduce to every step), which still raises before any checkpoint.
    lengths: token ids (text) with their lengths: length-bucketed batches, each cut to its longest row."""
    net.train()
    per_rank = -(-cfg.batch_size // d.world)  # the global batch is cfg.batch_size
    bucket = (lengths, per_rank * d.world, cfg.bucket_batches) if lengths is not None else None
    pos = distributed.shard(len(X), seed, epoch, d.rank, d.world, bucket=bucket)
    cl = cfg.channels_last
    check_each_step = not d.enabled and d.device.type == "cpu"
    losses, sizes = [], []
    for step, (xb, yb) in enumerate(
        stream.batches(X, y, pos, per_rank, cfg.loader_workers, d.device.type == "cuda"), 1
    ):
        if augment is not None:
            xb = augment(xb, g)
        if lengths is not None:
            xb = stream.trim(xb)
        xb, yb = _to(xb, d.device, cl), yb.to(d.device, non_blocking=True)
        with autocast(d.device, cfg.precision):
            loss = loss_fn(net(xb).float(), xb, yb)
        if check_each_step and not math.isfinite(value := loss.item()):
            raise _diverged(value, epoch, step, cfg)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.detach())
        sizes.append(len(yb))
    per_step = torch.stack(losses).double().cpu() if losses else torch.zeros(0, dtype=torch.float64)
    bad = (~torch.isfinite(per_step)).nonzero().flatten()
    if distributed.any_rank(len(bad) > 0, d):
        raise _diverged(
            per_step[bad[0]].item() if len(bad) else "not finite", epoch, int(bad[0]) + 1 if len(bad) else None, cfg
        )
    total, count = distributed.all_sum(
        [float((per_step * torch.tensor(sizes, dtype=torch.float64)).sum()), float(sum(sizes))], d
    )
    return total / max(count, 1)


def fit(
    model: nn.Module,
    X_train,
    y_train,
    X_val,
    y_val,
    cfg: TrainConfig,
    seed: int,
    augment: Callable | None = None,
    log: Callable | None = None,
    progress: bool = True,
    *,
    dist: distributed.Dist | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_key: str = "",
    on_epoch: Callable[[int, dict], None] | None = None,
    loss_fn: Callable = cross_entropy,
):
    """Train in place; on return the model holds the weights cfg.keep picks (the final epoch's, or
    the lowest validation loss's), on the device it was given on (it trains on a GPU when there is one).

    X_* may be arrays, memmaps (streamed batch by batch) or stream.Rows views. log(metrics, step)
    is called on rank 0 after each epoch. dist: a DDP rank. checkpoint_dir: save every
    cfg.checkpoint_every epochs, at most once per cfg.checkpoint_min_seconds (_checkpoint_due), and
    resume from the newest good checkpoint whose resume_key matches. on_epoch(epoch, row) runs on
    every rank after each epoch (raise from it to stop, e.g. an Optuna pruner). loss_fn(logits,
    xb, yb) -> loss replaces the cross-entropy on the labels (e.g. compress.distill_loss)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    d = dist or distributed.single()
    check_precision(cfg.precision, d.device)
    g = seed_everything(seed + 7919 * d.rank)  # rank 0 draws exactly what a single process draws
    X, Xv = stream.as_view(X_train), stream.as_view(X_val)
    y, yv = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    stream.fit_norm(model, X)  # every rank fits the same statistics on the full training set
    # token ids: lengths for bucketed batches (train) and length-sorted, trimmed ones (validation)
    lengths, val_lengths = (stream.token_lengths(v) if cfg.bucket_batches else None for v in (X, Xv))
    home = next(model.parameters()).device
    if d.device.type == "cuda":  # seeded runs repeat bit for bit only with deterministic convolutions
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cfg.deterministic, not cfg.deterministic
    model.to(d.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)
    opt = adamw(model.parameters(), cfg, d.device)
    per_rank = -(-cfg.batch_size // d.world)
    sched = make_scheduler(opt, cfg, math.ceil(math.ceil(len(X) / d.world) / per_rank))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    st = LoopState(history=History())
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None and cfg.checkpoint_every > 0 else None
    if ckpt is not None:
        _resume(ckpt, resume_key, d, model, opt, sched, scaler, g, st)
        st.history.resumed_from = st.epoch
    hist = st.history
    columns = [
        TextColumn("train"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total} {task.fields[msg]}"),
        TimeRemainingColumn(),
    ]
    with (
        Progress(*columns, disable=not (progress and d.is_main), transient=False) as bar,
        checkpoint.Writer() as writer,
    ):
        task = bar.add_task("train", total=cfg.epochs, completed=st.epoch, msg="")
        last_checkpoint = time.monotonic()
        for epoch in range(st.epoch + 1, cfg.epochs + 1):
            if st.done:
                break
            t0 = time.perf_counter()
            train_loss = train_epoch(net, X, y, epoch, cfg, seed, d, opt, sched, scaler, augment, g, loss_fn, lengths)
            hist.train_seconds.append(time.perf_counter() - t0)
            row = {"train_loss": train_loss, "lr": opt.param_groups[0]["lr"]}
            validated = epoch % cfg.val_every == 0 or epoch == cfg.epochs
            if validated:
                val_loss, val_acc = evaluate(model, Xv, yv, d, cfg.precision, cfg.channels_last, val_lengths)
                if not math.isfinite(val_loss):
                    raise TrainingDiverged(
                        f"training diverged: validation loss is {val_loss} at epoch {epoch}; lower "
                        f"train.lr (now {cfg.lr}). No checkpoint was written for this epoch."
                    )
                row.update(val_loss=val_loss, val_accuracy=val_acc)
                bar.update(task, msg=f"val_loss {val_loss:.4f} val_acc {val_acc:.4f}")
            hist.epochs.append(row)
            if log is not None and d.is_main:
                log(row, epoch)
            if on_epoch is not None:
                on_epoch(epoch, row)
            if cfg.keep == "last":  # the weights of the epoch just run; the schedule decides the length
                hist.best_epoch = epoch
            elif validated and val_loss < st.best - 1e-6:
                st.best, st.best_state, st.bad, hist.best_epoch = val_loss, _cpu(model.state_dict()), 0, epoch
            elif validated:
                st.bad += 1
            st.epoch, st.done = epoch, cfg.keep == "best" and st.bad >= cfg.patience
            hist.stopped_early = st.done
            bar.update(task, advance=1)
            if ckpt is not None and _checkpoint_due(epoch, st.done, cfg, time.monotonic() - last_checkpoint, d):
                rngs = gather_rng(g, d)
                if d.is_main:
                    save_checkpoint(writer, ckpt, resume_key, cfg.keep_checkpoints, st, model, opt, sched, scaler, rngs)
                last_checkpoint = time.monotonic()
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
    model.to(home)
    return hist
