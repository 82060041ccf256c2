"""GPU throughput of the training engine: a ResNet-style CNN on CIFAR-sized synthetic images
(3x32x32, 10 classes), fp32 vs bf16 vs fp16, through components.engine.fit (the train stage's loop).
Needs CUDA; prints one JSON line per precision. 1 vs N ranks: run the train stage with
train.distributed.nproc_per_node=N (one process per GPU, NCCL).

    python -m benchmarks.gpu [--n 50000] [--epochs 3] [--batch 256] [--channels-last]
        [--precisions fp32,bf16,fp16] [--loader-workers N] [--compile]
        [--cudnn deterministic,benchmark] [--width 64]
    python -m benchmarks.gpu --smoke     (256 images, width 8, 2 epochs; on the CPU, fp32 and bf16, without CUDA)

samples/s = the mean of epochs 2.. (epoch 1 holds cuDNN autotuning / compilation).
Figures (one H100, 2026-11-22 and 2026-11-23) in BENCHMARKS.md, raw lines in benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from benchmarks.common import SMOKE_HELP


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNetish(nn.Module):
    """ResNet-18-like widths (width x 1, 2, 4, 8: 64..512 by default), 8 residual blocks, for 32x32 inputs."""

    def __init__(self, n_classes: int = 10, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        layers, c = [], width
        for i, w in enumerate(width * k for k in (1, 2, 4, 8)):
            layers += [Block(c, w, 1 if i == 0 else 2), Block(w, w, 1)]
            c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):  # (B, 3, 32, 32) -> (B, n_classes)
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


def bench(a: argparse.Namespace, cuda: bool) -> None:
    from components import engine
    from components.config import TrainConfig

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, a.n).astype(np.int64)
    X = (rng.standard_normal((a.n, 3, 32, 32), dtype=np.float32) * 0.5 + y[:, None, None, None] * 0.05).astype(
        np.float32
    )
    Xv, yv = X[:2048], y[:2048]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for mode, prec in [(m, p) for m in a.cudnn.split(",") for p in a.precisions.split(",")]:
        cfg = TrainConfig(
            epochs=a.epochs,
            batch_size=a.batch,
            lr=2e-3,
            patience=1000,
            precision=prec,
            channels_last=a.channels_last,
            checkpoint_every=0,
            deterministic=mode == "deterministic",
            loader_workers=a.loader_workers,
            compile=a.compile,
        )
        torch.manual_seed(0)
        model = ResNetish(width=a.width)
        sync()
        t0 = time.perf_counter()
        hist = engine.fit(model, X, y, Xv, yv, cfg, 0, progress=False)
        sync()
        wall = time.perf_counter() - t0
        steady = hist.train_seconds[1:] or hist.train_seconds  # epoch 1 includes cudnn autotuning
        print(
            json.dumps(
                {
                    "bench": "gpu",
                    "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "precision": prec,
                    "cudnn": mode,
                    "channels_last": a.channels_last,
                    "width": a.width,
                    "loader_workers": a.loader_workers,
                    "compile": a.compile,
                    "torch": torch.__version__,
                    "n": a.n,
                    "batch": a.batch,
                    "epochs": a.epochs,
                    "samples_s_steady": a.n / (sum(steady) / len(steady)),
                    "samples_s_per_epoch": [round(a.n / t) for t in hist.train_seconds],
                    "wall_s": wall,
                    "train_loss_last": hist.epochs[-1]["train_loss"],
                    "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                }
            ),
            flush=True,
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=64, help="first stage's channels (the ResNet-18 widths: 64)")
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--cudnn",
        default="deterministic",
        help="comma list: deterministic (train.deterministic true, the "
        "default) | benchmark (false: cuDNN autotunes, may differ run to run)",
    )
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    if a.smoke:
        a.n, a.epochs, a.batch, a.width = 256, 2, 64, 8
        if not cuda:
            a.precisions = "fp32,bf16"  # fp16 trains with a gradient scaler: CUDA only
            print("no CUDA device: smoke run on the CPU (fp32, bf16)")
    elif not cuda:
        raise SystemExit("python -m benchmarks.gpu needs a CUDA device (--smoke runs on the CPU)")
    bench(a, cuda)


if __name__ == "__main__":
    main()
