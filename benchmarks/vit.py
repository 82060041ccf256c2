"""ViT vs CNN (issue 19): test accuracy and training time of the two image models, trained by the same
recipe (train.Recipe.fit: augmentation as params.yaml says, one-cycle schedule), on two datasets:

    digits     sklearn's 8x8 digits (1797 images, 10 classes), the default source
    shapes32   SYNTHETIC 32x32 RGB images (benchmarks below: 4 classes of shapes - square, disc, cross,
               stripes - at random positions, sizes and colours, on a noisy background)

    python -m benchmarks.vit [--seeds 0 1 2] [--epochs 20] [--threads 2] [--rows 1200] [--set KEY=VALUE]
    python -m benchmarks.vit --smoke

Per dataset and model: test accuracy and training seconds, mean and std over the seeds (the seed drives the
split, the weights and the batches). The ViT: model.kind vit with the model section's d_model 128, 4 heads,
2 layers, FFN 256, patch 4 (8x8 digits: 4 patches; 32x32: 64 patches), its convolutional stem and mean
pooling (the defaults); vit-patch: the same with the original ViT's linear patch embedding and [CLS]
pooling (model.stem patch, model.pooling cls), the ViT before issue 19's follow-up; the CNN: the default
(32, 64)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks.common import SMOKE_HELP, loadavg, utc_now

# name -> config overrides (before --set)
VARIANTS = {
    "cnn": ["model.kind=cnn"],
    "vit": ["model.kind=vit"],
    "vit-patch": ["model.kind=vit", "model.stem=patch", "model.pooling=cls"],
}


def shapes32(n: int, seed: int, size: int = 32):
    """(n, 3, size, size) float32 in [0, 1] and labels 0..3 (square, disc, cross, stripes)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    X = rng.uniform(0, 0.3, (n, 3, size, size)).astype(np.float32)
    rr, cc = np.mgrid[:size, :size]
    for i in range(n):
        s = int(rng.integers(size // 5, size // 2))
        r0, c0 = (int(v) for v in rng.integers(0, size - s, 2))
        colour = rng.uniform(0.5, 1.0, 3).astype(np.float32)[:, None]
        box = (rr >= r0) & (rr < r0 + s) & (cc >= c0) & (cc < c0 + s)
        if y[i] == 0:
            mask = box
        elif y[i] == 1:
            mask = (rr - r0 - s / 2) ** 2 + (cc - c0 - s / 2) ** 2 <= (s / 2) ** 2
        elif y[i] == 2:
            mask = box & ((np.abs(rr - r0 - s // 2) <= s // 8) | (np.abs(cc - c0 - s // 2) <= s // 8))
        else:
            mask = box & ((rr - r0) % 4 < 2)
        X[i][:, mask] = colour
    return X, y.astype(np.int64)


def _dataset(name: str, seed: int, rows: int):
    from sklearn.model_selection import train_test_split

    from components import data
    from components.config import load_config

    if name == "digits":
        cfg = load_config(None, [f"seed={seed}"])
        ds = data.ingest(cfg.data, seed)
        return ds.X_train, ds.y_train, ds.X_test, ds.y_test, ds.meta, (0.0, 16.0)
    X, y = shapes32(rows, 1000 + seed)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)

    class Meta:
        feature_shape, n_classes, kind = [3, 32, 32], 4, "image"

    return X[tr], y[tr], X[te], y[te], Meta, (0.0, 1.0)


def run(seeds: list[int], epochs: int, threads: int, rows: int, sets: list[str]) -> list[dict]:
    import torch

    from components import models, train
    from components.config import load_config

    torch.set_num_threads(threads)
    out = []
    for name in ("digits", "shapes32"):
        results: dict[str, dict[str, list[float]]] = {k: {"acc": [], "s": []} for k in VARIANTS}
        for seed in seeds:
            Xtr, ytr, Xte, yte, meta, value_range = _dataset(name, seed, rows)
            for kind, extra in VARIANTS.items():
                cfg = load_config(
                    None,
                    [
                        f"seed={seed}",
                        *extra,
                        f"train.epochs={epochs}",
                        f"train.num_threads={threads}",
                        "train.checkpoint_every=0",
                        *sets,
                    ],
                )
                spec = models.spec_for(cfg.model, meta)
                t = time.perf_counter()
                model, _ = train.Recipe(cfg, Xtr, ytr, "image", value_range).fit(spec)
                seconds = time.perf_counter() - t
                acc = float((train.predict_logits(model, Xte).argmax(1).numpy() == yte).mean())
                results[kind]["acc"].append(acc)
                results[kind]["s"].append(seconds)
                line = {"bench": "vit", "data": name, "model": kind, "seed": seed, "test_accuracy": round(acc, 4)}
                print(json.dumps({**line, "train_s": round(seconds, 2), "loadavg": loadavg()}), flush=True)
        sd = lambda v: round(statistics.stdev(v), 4) if len(v) > 1 else 0.0  # noqa: E731
        for kind, r in results.items():
            row = {
                "bench": "vit-summary",
                "date": utc_now(),
                "data": name,
                "model": kind,
                "seeds": len(seeds),
                "epochs": epochs,
                "threads": threads,
                "accuracy_mean": round(statistics.mean(r["acc"]), 4),
                "accuracy_std": sd(r["acc"]),
                "train_s_mean": round(statistics.mean(r["s"]), 2),
                "train_s_std": sd(r["s"]),
            }
            out.append(row)
            print(json.dumps(row), flush=True)
    print("| data | model | test accuracy (mean +- std) | train s (mean +- std) |")
    print("|---|---|---|---|")
    for r in out:
        print(
            f"| {r['data']} | {r['model']} | {r['accuracy_mean']:.4f} +- {r['accuracy_std']:.4f} | "
            f"{r['train_s_mean']:.1f} +- {r['train_s_std']:.1f} |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=1200, help="shapes32: images generated (80%% train)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    a = p.parse_args()
    if a.smoke:
        small = ["model.d_model=16", "model.heads=2", "model.layers=1", "model.ff=32", "model.channels=[8]"]
        run([0], 1, 1, 80, [*small, *a.sets])
        return
    run(a.seeds, a.epochs, a.threads, a.rows, a.sets)


if __name__ == "__main__":
    main()
