"""Generated datasets for the benchmarks, the same files for the same arguments.

- images(root, n): an image folder (one sub-folder of PNGs per class) of n RGB images, 10 classes,
  each a class-dependent pattern (an oriented grating whose angle and frequency name the class, a
  class tint) with a random phase, position jitter and pixel noise, so that a small CNN needs a few
  epochs and does not reach 100%.
- table(path, rows): a CSV of `rows` rows x 40 float features and a 10-class label column (20
  informative features, 2% label noise).

    python -m benchmarks.synth images /tmp/img5k 5000 [--size 32]
    python -m benchmarks.synth table /tmp/t50k.csv 50000"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

CLASSES = 10


def pattern(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class k."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * (k % 5) / 5 + rng.normal(0, 0.12)
    freq = (2.0 if k < 5 else 4.0) + rng.normal(0, 0.3)
    shift = rng.uniform(-0.15, 0.15, size=2)
    u = (xx - shift[0]) * np.cos(angle) + (yy - shift[1]) * np.sin(angle)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi))  # (H, W) in [0, 1]
    tint = np.array([0.45 + 0.4 * np.cos(2 * np.pi * (k / CLASSES + c / 3)) for c in range(3)], dtype=np.float32)
    img = wave[..., None] * (tint + rng.normal(0, 0.15, 3)) + rng.normal(0, 0.25, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def images(root: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """n PNGs under root/c<k>/ (balanced classes); -> root. Rewrites nothing already there."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = i % CLASSES
        img = pattern(k, size, rng)  # drawn for every i: the same files whatever already exists
        out = root / f"c{k}" / f"{i:06d}.png"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(out)
    return root


def table(path: Path, rows: int, seed: int = 0) -> Path:
    """A CSV of rows x 40 features + 'label' (10 classes); -> path."""
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=rows,
        n_features=40,
        n_informative=20,
        n_redundant=8,
        n_classes=CLASSES,
        n_clusters_per_class=2,
        flip_y=0.02,
        random_state=seed,
    )
    df = pd.DataFrame(X.astype(np.float32), columns=[f"f{i}" for i in range(40)])
    df["label"] = np.array([f"k{i}" for i in range(CLASSES)])[y]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["images", "table"])
    ap.add_argument("out", type=Path, help="images: a folder; table: a .csv file")
    ap.add_argument("n", type=int, help="images or rows")
    ap.add_argument("--size", type=int, default=32, help="images: side, pixels")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.kind == "images":
        images(a.out, a.n, a.size, a.seed)
    else:
        table(a.out, a.n, a.seed)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
