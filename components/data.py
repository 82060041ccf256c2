"""Ingest: a source URI -> the prepared dataset (stratified split, float32 X, int64 y, meta).

Prepared layout (the contract every later stage reads):
    X_train.npy (N, *feature_shape) float32   y_train.npy (N,) int64
    X_test.npy                                y_test.npy
    meta.json  source, kind, feature_shape, classes, counts, value_range, content_hash
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from components.config import DataConfig
from components.errors import DataError
from components.fileio import atomic_dir

SKLEARN_SETS = ("digits", "breast_cancer", "wine", "iris")
SCHEMES = ("sklearn", "npz", "imagefolder", "csv", "parquet", "textfolder")  # text: components/textdata.py
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MIN_PER_CLASS = 3  # one each for train, validation and test


@dataclass
class Raw:
    X: np.ndarray  # (N, *feature_shape) float32
    labels: np.ndarray  # (N,) original labels, any dtype
    kind: str  # "image" | "tabular"
    value_range: tuple[float, float] | None  # known range of X values, None = unknown
    feature_names: list[str] | None = None


@dataclass
class Meta:
    source: str
    kind: str
    feature_shape: list[int]
    classes: list[str]
    n_train: int
    n_test: int
    class_counts: dict[str, int]  # train split
    value_range: list[float] | None
    content_hash: str
    seed: int
    test_size: float
    feature_names: list[str] | None = None
    text: dict | None = None  # text datasets: vocab_size, max_length, pad_id, tokenizer hash ... (components/text.py)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass
class Prepared:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    meta: Meta = field(repr=False)
    # further files written beside the arrays: name -> array (.npy) or bytes (text: len_*, texts_*, tokenizer.json)
    files: dict[str, np.ndarray | bytes] = field(default_factory=dict, repr=False)


def dataset_name(source: str) -> str:
    """'sklearn:digits' -> 'digits'; 'csv:data/raw/churn.csv' -> 'churn'."""
    scheme, _, rest = source.partition(":")
    return rest if scheme == "sklearn" else Path(rest.rstrip("/")).stem or scheme


def parse_source(source: str) -> tuple[str, str]:
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise DataError(
            f"data.source: unknown source {source!r}; expected one of " + ", ".join(f"{s}:..." for s in SCHEMES)
        )
    if scheme == "sklearn" and rest not in SKLEARN_SETS:
        raise DataError(f"data.source: unknown sklearn dataset {rest!r}; expected one of {', '.join(SKLEARN_SETS)}")
    return scheme, rest


def _need_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    return path


def load_sklearn(name: str) -> Raw:
    from sklearn import datasets

    if name == "digits":
        d = datasets.load_digits()
        return Raw(d.images.astype(np.float32)[:, None], d.target, "image", (0.0, 16.0))  # (N, 1, 8, 8)
    d = getattr(datasets, f"load_{name}")()
    names = [str(c) for c in d.target_names]
    return Raw(d.data.astype(np.float32), np.array(names)[d.target], "tabular", None, list(map(str, d.feature_names)))


def load_npz(path: Path) -> Raw:
    try:
        with np.load(_need_file(path, "npz file"), allow_pickle=False) as z:
            missing = {"X", "y"} - set(z.files)
            if missing:
                raise DataError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(z.files)}")
            X, y = z["X"], z["y"]
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if X.ndim not in (2, 3, 4):
        raise DataError(f"{path}: X must be (N, F), (N, H, W) or (N, C, H, W); got shape {X.shape}")
    if len(X) != len(y):
        raise DataError(f"{path}: X has {len(X)} rows but y has {len(y)}")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float32)
    if X.ndim == 3:
        X = X[:, None]
    return Raw(X, y, "tabular" if X.ndim == 2 else "image", None)


def read_image(path: Path, size: tuple[int, int], grayscale: bool, max_pixels: int) -> np.ndarray:
    """One PNG/JPEG -> (C, H, W) float32 in [0, 1]. The size is checked from the header before
    decoding: a small file can declare billions of pixels. Any file that cannot be decoded names itself."""
    import warnings

    from PIL import Image

    h, w = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # rather fail than decode it
            im = Image.open(path)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: image too large ({e}); data.max_pixels is {max_pixels:,}") from None
    except Exception as e:  # noqa: BLE001  Pillow raises many types for files it cannot identify
        raise DataError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e})") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise DataError(
                f"{path}: image too large: {width} x {height} = {width * height:,} pixels, "
                f"over data.max_pixels {max_pixels:,}"
            )
        try:
            im.load()  # decodes fully: a truncated file fails here, not later
            arr = np.asarray(im.convert("L" if grayscale else "RGB").resize((w, h), Image.BILINEAR), np.float32) / 255.0
        except Exception as e:  # noqa: BLE001  OSError (truncated), SyntaxError (broken chunks), zlib.error ...
            raise DataError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e})") from None
    return arr[None] if grayscale else arr.transpose(2, 0, 1)


def load_imagefolder(root: Path, size: tuple[int, int], grayscale: bool, max_pixels: int) -> Raw:
    _need_file(root, "image folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")
    files = [(f, d.name) for d in class_dirs for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no PNG/JPEG images found in {len(class_dirs)} class folders")
    X = np.empty((len(files), 1 if grayscale else 3, *size), np.float32)  # decoded one at a time into place
    for i, (f, _) in enumerate(files):
        X[i] = read_image(f, size, grayscale, max_pixels)
    return Raw(X, np.array([label for _, label in files]), "image", (0.0, 1.0))


def _read_csv(path: Path, label_column: str):
    """The CSV with its feature columns parsed straight to float32 (half the memory of pandas' float64, the
    same values as casting that); a column that is not numeric fails that parse, and the file is read with
    pandas' own types, for load_table to name the column."""
    import pandas as pd

    try:
        columns = pd.read_csv(path, nrows=0).columns
        return pd.read_csv(path, dtype={c: np.float32 for c in columns if c != label_column})
    except (ValueError, TypeError):
        return pd.read_csv(path)


def load_table(scheme: str, path: Path, label_column: str) -> Raw:
    import pandas as pd

    _need_file(path, f"{scheme} file")
    try:
        df = _read_csv(path, label_column) if scheme == "csv" else pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{path}: cannot read as {scheme} ({type(e).__name__}: {e})") from None
    if label_column not in df.columns:
        raise DataError(
            f"{path}: label column {label_column!r} (data.label_column) not found; columns are {list(df.columns)}"
        )
    if df.empty:
        raise DataError(f"{path}: dataset is empty (0 rows)")
    features = df.drop(columns=[label_column])
    bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(f"{path}: feature columns must be numeric; not numeric: {bad}")
    if df[label_column].isna().any():
        rows = df.index[df[label_column].isna()].tolist()[:5]
        raise DataError(f"{path}: label column {label_column!r} has missing values (rows {rows})")
    return Raw(
        features.to_numpy(np.float32), df[label_column].to_numpy(), "tabular", None, list(map(str, features.columns))
    )


def load_source(cfg: DataConfig) -> Raw:
    scheme, rest = parse_source(cfg.source)
    if scheme == "sklearn":
        raw = load_sklearn(rest)
    elif scheme == "npz":
        raw = load_npz(Path(rest))
    elif scheme == "imagefolder":
        raw = load_imagefolder(Path(rest), tuple(cfg.image_size), cfg.grayscale, cfg.max_pixels)
    else:
        raw = load_table(scheme, Path(rest), cfg.label_column)
    if len(raw.X) == 0:
        raise DataError(f"{cfg.source}: dataset is empty (0 rows)")
    return raw


def encode_labels(labels: np.ndarray, classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels -> int64 codes. With a declared class list, an unknown label becomes -1 so that
    validation reports it; without one, the classes are the sorted distinct labels."""
    import pandas as pd

    codes, uniq = pd.factorize(np.asarray(labels), use_na_sentinel=False)  # hashing: one pass, no sort
    names = [str(v) for v in np.asarray(uniq)]  # labels compare as text, as a declared class list is
    if classes is None:
        classes = [str(v) for v in np.unique(np.asarray(uniq))]
    index = {c: i for i, c in enumerate(classes)}
    lut = np.array([index.get(n, -1) for n in names], dtype=np.int64)  # one entry per distinct label
    return lut[codes], list(classes)


def content_hash(*arrays: np.ndarray) -> str:
    """sha256 over each array's dtype, shape and bytes, fed a chunk at a time from the array's own
    buffer (no bytes copy of the whole array; a memmap is read as it goes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.reshape(1) if a.ndim == 0 else a  # as np.ascontiguousarray has it (the digests stay as they were)
        h.update(f"{a.dtype}{a.shape}".encode())
        flat = a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)
        step = max(1, (16 << 20) // max(1, a.itemsize))
        for i in range(0, len(flat), step):
            h.update(memoryview(flat[i : i + step]).cast("B"))
    return h.hexdigest()[:16]


def split(raw: Raw, cfg: DataConfig, seed: int, classes: list[str] | None = None) -> Prepared:
    from sklearn.model_selection import train_test_split

    y, classes = encode_labels(raw.labels, classes)
    known = y >= 0
    counts = np.bincount(y[known], minlength=len(classes))
    too_few = {classes[i]: int(c) for i, c in enumerate(counts) if c < MIN_PER_CLASS}
    if too_few:
        raise DataError(
            f"{cfg.source}: class(es) with too few samples for a train/validation/test split "
            f"(need at least {MIN_PER_CLASS}): {too_few}"
        )
    if len(classes) < 2:
        raise DataError(f"{cfg.source}: need at least 2 classes, found {classes}")
    try:
        Xtr, Xte, ytr, yte = train_test_split(raw.X, y, test_size=cfg.test_size, random_state=seed, stratify=y)
    except ValueError as e:
        raise DataError(f"{cfg.source}: cannot split with data.test_size={cfg.test_size}: {e}") from None
    meta = Meta(
        source=cfg.source,
        kind=raw.kind,
        feature_shape=list(raw.X.shape[1:]),
        classes=classes,
        n_train=len(ytr),
        n_test=len(yte),
        class_counts={c: int((ytr == i).sum()) for i, c in enumerate(classes)},
        value_range=list(raw.value_range) if raw.value_range else None,
        content_hash=content_hash(Xtr, ytr, Xte, yte),
        seed=seed,
        test_size=cfg.test_size,
        feature_names=raw.feature_names,
    )
    return Prepared(Xtr, ytr, Xte, yte, meta)


def ingest(cfg: DataConfig, seed: int, classes: list[str] | None = None) -> Prepared:
    """Images and tables; a text source (textfolder:, or csv/parquet with data.text_column) is
    components/textdata.ingest (the ingest stage picks)."""
    scheme, _ = parse_source(cfg.source)
    if scheme == "textfolder" or (scheme in ("csv", "parquet") and cfg.text_column is not None):
        raise DataError(f"data.source {cfg.source!r}: a text source; ingest it with components.textdata.ingest")
    return split(load_source(cfg), cfg, seed, classes)


def save_prepared(ds: Prepared, out: Path) -> None:
    with atomic_dir(out) as tmp:
        for name in ("X_train", "y_train", "X_test", "y_test"):
            np.save(tmp / f"{name}.npy", getattr(ds, name))
        for name, content in ds.files.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                np.save(tmp / name, content)
        (tmp / "meta.json").write_text(json.dumps(asdict(ds.meta), indent=2) + "\n")


def load_meta(folder: Path) -> Meta:
    path = Path(folder) / "meta.json"
    if not path.exists():
        raise DataError(f"{path}: prepared dataset not found (run the ingest stage first)")
    return Meta(**json.loads(path.read_text()))


def load_prepared(folder: Path, mmap: bool = False) -> Prepared:
    folder = Path(folder)
    meta = load_meta(folder)
    mode = "r" if mmap else None
    arrays = {
        n: np.load(folder / f"{n}.npy", mmap_mode=mode, allow_pickle=False)
        for n in ("X_train", "y_train", "X_test", "y_test")
    }
    return Prepared(meta=meta, **arrays)
