"""Reading prediction inputs from disk into the model's input shape."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.data import IMAGE_SUFFIXES, read_image
from components.errors import DataError


def read_inputs(path: Path, shape: tuple[int, ...], label_column: str = "label") -> tuple[list[str], np.ndarray]:
    """-> (a name per row, X of shape (N, *shape) float32)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: input not found")
    if path.is_dir():
        if len(shape) != 3:
            raise DataError(f"{path}: an image folder needs an image model; this model takes shape {list(shape)}")
        c, h, w = shape
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no PNG/JPEG images found")
        return [str(f.relative_to(path)) for f in files], np.stack([read_image(f, (h, w), c == 1) for f in files])
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise DataError(f"{path}: missing array 'X'; found {sorted(z.files)}")
            X = z["X"].astype(np.float32)
    elif path.suffix in (".csv", ".parquet"):
        import pandas as pd

        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        X = df.drop(columns=[label_column], errors="ignore").to_numpy(np.float32)
    else:
        raise DataError(f"{path}: unsupported input; expected .npz, .csv, .parquet or a folder of images")
    n = int(np.prod(shape))
    if X.size % n or X.reshape(len(X), -1).shape[1] != n:
        raise DataError(f"{path}: rows have {X.reshape(len(X), -1).shape[1]} values, model expects {n} (shape {list(shape)})")
    return [str(i) for i in range(len(X))], X.reshape((len(X), *shape))

