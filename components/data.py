"""Ingest: a source URI -> the prepared dataset (stratified split, float32 X, int64 y, meta).

ingest_to streams a source into the prepared folder: the labels first (a CSV's label column, a folder's
names), the split from them, then the features a block at a time (CSV chunks, parquet batches, one image)
straight to their rows of memory-mapped X_train.npy / X_test.npy in a temp folder renamed into place at
the end; the content hash is read back a chunk at a time. So ingest holds about one block, not copies
of the data. split() is the same split of an array in memory (text sources use it on row numbers).

Prepared layout (the contract every later stage reads):
    X_train.npy (N, *feature_shape) float32   y_train.npy (N,) int64
    X_test.npy                                y_test.npy
    meta.json  source, kind, feature_shape, classes, counts, value_range, content_hash
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
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


def image_files(root: Path) -> list[tuple[Path, str]]:
    """(file, class) of every PNG/JPEG of an image folder (class per sub-folder), in reading order."""
    _need_file(root, "image folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")
    files = [(f, d.name) for d in class_dirs for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no PNG/JPEG images found in {len(class_dirs)} class folders")
    return files


def load_imagefolder(root: Path, size: tuple[int, int], grayscale: bool, max_pixels: int) -> Raw:
    files = image_files(root)
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


def plan_split(
    labels: np.ndarray, cfg: DataConfig, seed: int, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Labels -> (codes, classes, train rows, test rows): the stratified, seeded split. The rows are those
    train_test_split(X, y, ...) takes for X_train and X_test: it draws them from y and the row count alone."""
    from sklearn.model_selection import train_test_split

    y, classes = encode_labels(labels, classes)
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
        tr, te = train_test_split(np.arange(len(y)), test_size=cfg.test_size, random_state=seed, stratify=y)
    except ValueError as e:
        raise DataError(f"{cfg.source}: cannot split with data.test_size={cfg.test_size}: {e}") from None
    return y, classes, tr, te


def _meta(cfg: DataConfig, seed: int, kind: str, feature_shape, classes, ytr, yte, value_range, digest, names) -> Meta:
    counts = np.bincount(ytr[ytr >= 0], minlength=len(classes))
    return Meta(
        source=cfg.source,
        kind=kind,
        feature_shape=list(feature_shape),
        classes=classes,
        n_train=len(ytr),
        n_test=len(yte),
        class_counts={c: int(counts[i]) for i, c in enumerate(classes)},
        value_range=list(value_range) if value_range else None,
        content_hash=digest,
        seed=seed,
        test_size=cfg.test_size,
        feature_names=names,
    )


def split(raw: Raw, cfg: DataConfig, seed: int, classes: list[str] | None = None) -> Prepared:
    """The split of an array in memory (ingest_to writes the same arrays without holding them)."""
    y, classes, tr, te = plan_split(raw.labels, cfg, seed, classes)
    Xtr, Xte, ytr, yte = raw.X[tr], raw.X[te], y[tr], y[te]
    digest = content_hash(Xtr, ytr, Xte, yte)
    meta = _meta(cfg, seed, raw.kind, raw.X.shape[1:], classes, ytr, yte, raw.value_range, digest, raw.feature_names)
    return Prepared(Xtr, ytr, Xte, yte, meta)


# ------------------------------------------------------------------ streaming ingest


BLOCK_BYTES = 32 << 20  # a block of features (a parquet batch, a CSV chunk's parse) of about this many bytes
PARSE_BYTES = 48  # pandas' CSV tokenizer per field of a chunk: the text, two word arrays, their doubling


@dataclass
class Stream:
    """A source read a block at a time: its row count, feature shape and labels up front, then blocks()
    -> (first row, float32 block of rows) in row order."""

    n: int
    feature_shape: tuple[int, ...]
    labels: np.ndarray
    kind: str
    value_range: tuple[float, float] | None
    blocks: Callable[[], Iterator[tuple[int, np.ndarray]]]
    feature_names: list[str] | None = None


class _Reread(Exception):
    """The features do not parse as float32 a block at a time: read the table whole with pandas' own types
    (load_table names the column that is not numeric, or converts what pandas counts as numeric)."""


def _array_stream(raw: Raw) -> Stream:
    X = raw.X
    step = max(1, BLOCK_BYTES // max(1, X[:1].nbytes))

    def blocks():
        for i in range(0, len(X), step):
            yield i, X[i : i + step]

    return Stream(len(X), X.shape[1:], raw.labels, raw.kind, raw.value_range, blocks, raw.feature_names)


def _image_stream(root: Path, size: tuple[int, int], grayscale: bool, max_pixels: int) -> Stream:
    files = image_files(root)

    def blocks():
        for i, (f, _) in enumerate(files):
            yield i, read_image(f, size, grayscale, max_pixels)[None]

    labels = np.array([label for _, label in files])
    return Stream(len(files), (1 if grayscale else 3, *size), labels, "image", (0.0, 1.0), blocks)


def _check_labels(path: Path, labels, label_column: str) -> np.ndarray:
    import pandas as pd

    labels = pd.Series(labels)
    if labels.empty:
        raise DataError(f"{path}: dataset is empty (0 rows)")
    if labels.isna().any():
        rows = labels.index[labels.isna()].tolist()[:5]
        raise DataError(f"{path}: label column {label_column!r} has missing values (rows {rows})")
    return labels.to_numpy()


def _float32_block(frame, path: Path) -> np.ndarray:
    import pandas as pd

    if not all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
        raise _Reread(path)
    return frame.to_numpy(np.float32)


def _csv_stream(path: Path, label_column: str) -> Stream:
    """Labels from the label column alone, then the features in chunks parsed straight to float32 (the
    values load_table reads)."""
    import pandas as pd

    try:
        columns = list(pd.read_csv(path, nrows=0).columns)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for unreadable files
        raise DataError(f"{path}: cannot read as csv ({type(e).__name__}: {e})") from None
    if label_column not in columns:
        raise DataError(f"{path}: label column {label_column!r} (data.label_column) not found; columns are {columns}")
    if len(set(columns)) != len(columns):
        raise _Reread(path)  # duplicate names (pandas renames them): as load_table reads them
    names = [c for c in columns if c != label_column]
    step = max(64, BLOCK_BYTES // (PARSE_BYTES * len(columns)))
    try:  # in chunks too (the parser's buffers grow with the rows of a read); concat unifies their types
        with pd.read_csv(path, usecols=[label_column], chunksize=step) as reader:
            parts = [chunk[label_column] for chunk in reader]
        labels = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read as csv ({type(e).__name__}: {e})") from None
    labels = _check_labels(path, labels, label_column)

    def blocks():
        dtypes = {c: np.float32 for c in names}
        try:
            reader = pd.read_csv(path, usecols=names, dtype=dtypes, chunksize=step) if names else None
            if reader is None:  # no feature columns: rows of nothing
                yield 0, np.zeros((len(labels), 0), np.float32)
                return
            first = 0
            with reader:
                for chunk in reader:
                    yield first, _float32_block(chunk, path)
                    first += len(chunk)
        except pd.errors.ParserError as e:  # a malformed file (or its parse out of memory)
            raise DataError(f"{path}: cannot read as csv ({type(e).__name__}: {e})") from None
        except (ValueError, TypeError):  # a value that is not a float32: the whole read names it
            raise _Reread(path) from None

    return Stream(len(labels), (len(names),), labels, "tabular", None, blocks, list(map(str, names)))


def _parquet_stream(path: Path, label_column: str) -> Stream:
    """Labels from the label column alone, then the features in record batches (pyarrow)."""
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        index = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
        columns = [c for c in schema.names if c not in index]
        if label_column not in columns:
            raise DataError(
                f"{path}: label column {label_column!r} (data.label_column) not found; columns are {columns}"
            )
        labels = pd.read_parquet(path, columns=[label_column])[label_column].reset_index(drop=True)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for unreadable files
        raise DataError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from None
    labels = _check_labels(path, labels, label_column)
    names = [c for c in columns if c != label_column]
    step = max(1024, BLOCK_BYTES // (4 * max(1, len(names))))

    def blocks():
        if not names:
            yield 0, np.zeros((len(labels), 0), np.float32)
            return
        first = 0
        try:
            for batch in pf.iter_batches(batch_size=step, columns=names):
                block = _float32_block(batch.to_pandas()[names], path)
                yield first, block
                first += len(block)
        except (ValueError, TypeError):
            raise _Reread(path) from None

    return Stream(len(labels), (len(names),), labels, "tabular", None, blocks, list(map(str, names)))


def open_stream(cfg: DataConfig) -> Stream:
    scheme, rest = parse_source(cfg.source)
    if scheme == "sklearn":
        return _array_stream(load_sklearn(rest))
    if scheme == "npz":
        return _array_stream(load_npz(Path(rest)))
    if scheme == "imagefolder":
        return _image_stream(Path(rest), tuple(cfg.image_size), cfg.grayscale, cfg.max_pixels)
    path = _need_file(Path(rest), f"{scheme} file")
    return _csv_stream(path, cfg.label_column) if scheme == "csv" else _parquet_stream(path, cfg.label_column)


def _write_stream(s: Stream, cfg: DataConfig, seed: int, out: Path, classes: list[str] | None) -> Meta:
    if s.n == 0:
        raise DataError(f"{cfg.source}: dataset is empty (0 rows)")
    try:
        y, classes, tr, te = plan_split(s.labels, cfg, seed, classes)
    except DataError:
        for _ in s.blocks():  # an unreadable image or a non-numeric column is reported first, as a whole read does
            pass
        raise
    where = np.empty(s.n, np.int64)  # each source row's row in its split
    where[tr], where[te] = np.arange(len(tr)), np.arange(len(te))
    to_train = np.zeros(s.n, bool)
    to_train[tr] = True
    ytr, yte = y[tr], y[te]
    with atomic_dir(out) as tmp:  # a failure leaves the old prepared folder, or none, never half of one
        fmt = np.lib.format
        Xtr = fmt.open_memmap(tmp / "X_train.npy", "w+", np.float32, (len(tr), *s.feature_shape))
        Xte = fmt.open_memmap(tmp / "X_test.npy", "w+", np.float32, (len(te), *s.feature_shape))
        seen = 0
        for first, block in s.blocks():
            if first + len(block) > s.n:
                break
            m, w = to_train[first : first + len(block)], where[first : first + len(block)]
            if m.all():
                Xtr[w] = block
            elif not m.any():
                Xte[w] = block
            else:
                Xtr[w[m]], Xte[w[~m]] = block[m], block[~m]
            seen = first + len(block)
        if seen != s.n:
            raise DataError(f"{cfg.source}: read {seen:,} rows of features but {s.n:,} labels (did the file change?)")
        Xtr.flush()
        Xte.flush()
        np.save(tmp / "y_train.npy", ytr)
        np.save(tmp / "y_test.npy", yte)
        digest = content_hash(Xtr, ytr, Xte, yte)  # read back a chunk at a time
        del Xtr, Xte
        meta = _meta(cfg, seed, s.kind, s.feature_shape, classes, ytr, yte, s.value_range, digest, s.feature_names)
        (tmp / "meta.json").write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return meta


def _not_text(cfg: DataConfig) -> None:
    scheme, _ = parse_source(cfg.source)
    if scheme == "textfolder" or (scheme in ("csv", "parquet") and cfg.text_column is not None):
        raise DataError(f"data.source {cfg.source!r}: a text source; ingest it with components.textdata.ingest")


def ingest_to(cfg: DataConfig, seed: int, out: Path, classes: list[str] | None = None) -> Meta:
    """Images and tables -> the prepared folder `out` (written whole or not at all), streamed: about one
    block of the data in memory besides the mapped output files. The files are those save_prepared writes
    for ingest's arrays."""
    _not_text(cfg)
    out = Path(out)
    try:
        return _write_stream(open_stream(cfg), cfg, seed, out, classes)
    except _Reread:  # features pandas does not parse as float32 chunk by chunk: the whole read decides
        scheme, rest = parse_source(cfg.source)
        return _write_stream(_array_stream(load_table(scheme, Path(rest), cfg.label_column)), cfg, seed, out, classes)


def ingest(cfg: DataConfig, seed: int, classes: list[str] | None = None) -> Prepared:
    """Images and tables, in memory: ingest_to a temp folder, read back. A text source (textfolder:, or
    csv/parquet with data.text_column) is components/textdata.ingest (the ingest stage picks)."""
    _not_text(cfg)
    with tempfile.TemporaryDirectory(prefix="mlpipe-ingest-") as tmp:
        ingest_to(cfg, seed, Path(tmp) / "prepared", classes)
        return load_prepared(Path(tmp) / "prepared")


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
