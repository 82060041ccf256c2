"""Reading prediction inputs from disk into the model's input shape.

Rows are named by their position in the file (0 = the first data row), so that output lines keep
their input's number when invalid rows are left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.config import DataConfig
from components.data import IMAGE_SUFFIXES, read_image
from components.errors import DataError

MAX_PIXELS = DataConfig().max_pixels
SHOWN = 10  # row numbers listed in a message


def read_inputs(
    path: Path,
    shape: tuple[int, ...],
    label_column: str = "label",
    max_pixels: int = MAX_PIXELS,
    skipped: list[str] | None = None,
    text_column: str | None = None,
):
    """-> (a name per row, X of shape (N, *shape) float32, N >= 1, every value finite).
    A text model (shape ()): -> (line or row numbers, a DataFrame with one column "text"), see read_texts.

    A row with NaN or inf is an error naming it; with a `skipped` list it is left out and its name
    appended there instead."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: input not found")
    if shape == ():
        return read_texts(path, text_column, label_column)
    if path.is_dir():
        return _read_images(path, shape, max_pixels)
    if path.suffix == ".npz":
        X = _read_npz(path)
    elif path.suffix in (".csv", ".parquet"):
        X = _read_table(path, label_column)
    else:
        raise DataError(f"{path}: unsupported input; expected .npz, .csv, .parquet or a folder of images")
    if len(X) == 0:
        raise DataError(f"{path}: no rows to predict (0 rows)")
    X = to_shape(path, X, shape)
    names = [str(i) for i in range(len(X))]
    return drop_rows(names, X, ~np.isfinite(X.reshape(len(X), -1)).all(1), "with NaN or infinite values", path, skipped)


def read_texts(path: Path, text_column: str | None, label_column: str = "label"):
    """Inputs of a text model: a .txt file (UTF-8, one text per line; blank lines are left out, the others
    keep their line number from 0) or a CSV/parquet file with a text column (data.text_column, else a
    column named "text", else the only column of strings besides the label) -> (names, DataFrame "text")."""
    import pandas as pd

    if path.is_dir() or path.suffix not in (".txt", ".csv", ".parquet"):
        raise DataError(
            f"{path}: unsupported input for a text model; expected a .txt file (one text per line) or .csv/.parquet"
        )
    if path.suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
        names = [str(i) for i, t in enumerate(lines) if t.strip()]
        texts = [t for t in lines if t.strip()]
    else:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (no header, no rows)")
        try:
            df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001  pandas/pyarrow raise many types for unreadable files
            raise DataError(f"{path}: cannot read as {path.suffix[1:]} ({type(e).__name__}: {e})") from None
        texts, names = text_rows(df, path, text_column, label_column), [str(i) for i in range(len(df))]
    if not texts:
        raise DataError(f"{path}: no texts to predict")
    return names, pd.DataFrame({"text": texts})


def text_rows(df, path: Path, text_column: str | None, label_column: str = "label") -> list[str]:
    """A frame's column of texts -> list of str (a missing value is an empty text)."""
    import pandas as pd

    strings = [c for c in df.columns if c != label_column and not pd.api.types.is_numeric_dtype(df[c])]
    col = text_column if text_column in df.columns else "text" if "text" in df.columns else None
    if col is None and len(strings) == 1:
        col = strings[0]
    if col is None:
        raise DataError(
            f"{path}: no text column: set data.text_column (now {text_column!r}) or name the column 'text'; "
            f"columns are {list(df.columns)}"
        )
    return ["" if pd.isna(v) else str(v) for v in df[col].tolist()]


def to_shape(path: Path, X: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Rows of any layout -> (N, *shape); a row with another number of values is an error naming the file."""
    n = int(np.prod(shape))
    width = int(np.prod(X.shape[1:]))  # values per row
    if width != n:
        raise DataError(f"{path}: rows have {width} values, model expects {n} (shape {list(shape)})")
    return X.reshape((len(X), *shape))


def drop_rows(names: list[str], X, bad: np.ndarray, why: str, path: Path, skipped: list[str] | None):
    """Leave out the rows where bad is True: an error naming them, or (with a skipped list) their
    names appended there. -> (names, X) of the rows kept; none kept is an error."""
    if not bad.any():
        return names, X
    rows = [n for n, b in zip(names, bad) if b]
    listed = ", ".join(rows[:SHOWN]) + (f", ... ({len(rows)} in all)" if len(rows) > SHOWN else "")
    if skipped is None:
        raise DataError(
            f"{path}: {len(rows)} row(s) {why}: row{'s' if len(rows) > 1 else ''} {listed} "
            f"(numbered from 0); fix them, or pass --skip-invalid to leave them out"
        )
    if bad.all():
        raise DataError(f"{path}: every row ({len(rows)}) {why}; nothing to predict")
    skipped += rows
    keep = ~bad
    return [n for n, k in zip(names, keep) if k], X[keep]


def image_files(path: Path, shape: tuple[int, ...]) -> list[Path]:
    """The PNG/JPEG files under an image folder, in order, for a model of input shape (C, H, W)."""
    if len(shape) != 3:
        raise DataError(f"{path}: an image folder needs an image model; this model takes shape {list(shape)}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no PNG/JPEG images found")
    return files


def _read_images(path: Path, shape: tuple[int, ...], max_pixels: int) -> tuple[list[str], np.ndarray]:
    files = image_files(path, shape)
    c, h, w = shape
    X = np.stack([read_image(f, (h, w), c == 1, max_pixels) for f in files])
    return [str(f.relative_to(path)) for f in files], X


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise DataError(f"{path}: missing array 'X'; found {sorted(z.files)}")
            X = z["X"]
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if X.ndim == 0 or not np.issubdtype(X.dtype, np.number):
        raise DataError(
            f"{path}: X must be a numeric array with one row per input; got dtype {X.dtype}, shape {X.shape}"
        )
    return X.astype(np.float32)


def _read_table(path: Path, label_column: str) -> np.ndarray:
    import pandas as pd

    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no header, no rows)")
    try:
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001  pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{path}: cannot read as {path.suffix[1:]} ({type(e).__name__}: {e})") from None
    if df.empty:
        raise DataError(f"{path}: no rows to predict (header only: {len(df.columns)} column(s), 0 rows)")
    return table_features(df, path, label_column)


def table_features(df, path: Path, label_column: str) -> np.ndarray:
    """A frame's feature columns (all but the label column) as float32; non-numeric ones are an error."""
    import pandas as pd

    features = df.drop(columns=[label_column], errors="ignore")
    bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(f"{path}: feature columns must be numeric; not numeric: {bad}")
    return features.to_numpy(np.float32)
