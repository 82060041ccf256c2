"""The reference of benchmarks.overhead: what a user would write without the pipeline. One process reads
the source, splits it as ingest does (same seed -> same rows), trains the pipeline's model class
(components.models) with the training recipe's settings (AdamW, one-cycle schedule, an early-stopping
split scored every epoch), scores the test split and saves the weights. Everything in memory: no
validation, tracking, checkpoints, registry or orchestration.

    python -m benchmarks.plain_script csv:PATH|imagefolder:PATH --out DIR [--epochs 3] [--seed 0]

Prints one JSON line: test accuracy and the seconds of its parts."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

T0 = time.perf_counter()

import numpy as np  # noqa: E402 - after T0: the imports are part of the script's time
import torch  # noqa: E402
from torch import nn  # noqa: E402


def read_csv(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    df = pd.read_csv(path)
    return df.drop(columns=[label]).to_numpy(np.float32), df[label].to_numpy()


def read_images(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class per sub-folder; RGB, resized as ingest resizes, in [0, 1]; one preallocated array."""
    from PIL import Image

    files = [(f, d.name) for d in sorted(p for p in root.iterdir() if p.is_dir()) for f in sorted(d.iterdir())]
    X = np.empty((len(files), 3, size, size), np.float32)
    for i, (f, _) in enumerate(files):
        with Image.open(f) as im:
            X[i] = (np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0).transpose(
                2, 0, 1
            )
    return X, np.array([c for _, c in files])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plain_script", description=__doc__)
    ap.add_argument("source", help="csv:PATH (label column 'label') or imagefolder:PATH")
    ap.add_argument("--out", type=Path, required=True, help="folder for the weights")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--weight-decay", type=float, default=0.0001)
    args = ap.parse_args()
    from sklearn.model_selection import train_test_split

    from components import models
    from components.config import ModelConfig

    t = {"imports": time.perf_counter() - T0}
    s = time.perf_counter()
    scheme, _, rest = args.source.partition(":")
    X, labels = read_csv(Path(rest), "label") if scheme == "csv" else read_images(Path(rest), args.image_size)
    classes, y = np.unique(labels, return_inverse=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=args.seed, stratify=y)
    fit, val = train_test_split(np.arange(len(ytr)), test_size=0.1, random_state=args.seed, stratify=ytr)
    fit, val = np.sort(fit), np.sort(val)
    t["read_split"] = time.perf_counter() - s

    s = time.perf_counter()
    torch.manual_seed(args.seed)
    kind = "image" if X.ndim == 4 else "tabular"
    meta = argparse.Namespace(feature_shape=list(X.shape[1:]), n_classes=len(classes), kind=kind)
    model = models.build(models.spec_for(ModelConfig(), meta))
    x, t_y = torch.from_numpy(Xtr[fit]), torch.from_numpy(ytr[fit].astype(np.int64))
    xv, tv = torch.from_numpy(Xtr[val]), torch.from_numpy(ytr[val].astype(np.int64))
    model.norm.fit(x.numpy())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)
    steps = args.epochs * -(-len(x) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), t_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(xv[i : i + 1024]) for i in range(0, len(xv), 1024)])
            val_loss = nn.functional.cross_entropy(logits, tv).item()
    t["train"] = time.perf_counter() - s

    s = time.perf_counter()
    with torch.no_grad():
        xt = torch.from_numpy(Xte)
        pred = torch.cat([model(xt[i : i + 1024]).argmax(1) for i in range(0, len(xt), 1024)]).numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    t["evaluate_save"] = time.perf_counter() - s
    t["total"] = time.perf_counter() - T0
    acc = float((pred == yte).mean())
    print(json.dumps({"test_accuracy": acc, "val_loss": val_loss, "n_train": len(ytr), "seconds": t}))


if __name__ == "__main__":
    main()
