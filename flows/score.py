"""`mlpipe score`: batch inference over a CSV, parquet, .npz/.npy or image folder of any size, in
bounded memory, with a drift check, tracked as an MLflow run.

The input is read and predicted `score.chunk_rows` rows (images) at a time: CSV through Arrow's
streaming reader, parquet by row batches, an .npz's X member streamed out of the zip (an .npy
memory-mapped), an image folder in batches of files. Memory is one chunk, the output writer's row
group and a fixed-size sample for the drift check, whatever the input's size (BENCHMARKS.md). The
checks are `mlpipe predict`'s (flows/inputs.py): an empty input, a row of the wrong width (naming the
file and the expected shape), NaN/inf rows (named, or left out with --skip-invalid).

Output: a parquet file, written atomically (a reader sees no file or the whole file): row (the input's
row number, from 0), file (image folders), label, class, confidence, model_name, model_version.

The run (experiment tracking.experiment, name `score`) is tagged with the model URI, name and version
(and has the version's logged model as an input), and the input's path and SHA-256; it holds rows,
rows/s, the drift share, the Evidently HTML report and drift.json. With drift.on_drift: fail, data that
drifted stops the command (exit 2) and no output is written."""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components import drift, registry, tracking
from components.config import Config
from components.data import IMAGE_SUFFIXES, read_image
from components.errors import DataError
from components.fileio import atomic_file
from flows import monitor
from flows.inputs import drop_rows, image_files, read_texts, table_features, to_shape

TABLES = (".csv", ".parquet")
ARRAYS = (".npz", ".npy")


@dataclass
class Chunk:
    rows: np.ndarray  # (n,) int64: row numbers in the input, from 0
    X: np.ndarray  # (n, ...) as read
    files: list[str] | None = None  # image folders: each row's file, relative to the folder


def read_chunks(
    path: Path,
    shape: tuple[int, ...],
    label_column: str,
    chunk_rows: int,
    max_pixels: int,
    text_column: str | None = None,
) -> Iterator[Chunk]:
    """The input in chunks of at most chunk_rows rows (CSV: about that many). A text model (shape ()):
    chunks of raw strings (X an object array) from a .txt file or a table's text column."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: input not found")
    if shape == ():  # a text model: raw strings, tokenized by the model
        yield from _text_chunks(path, text_column, label_column, chunk_rows)
        return
    if path.is_dir():
        yield from _image_chunks(path, shape, chunk_rows, max_pixels)
        return
    if path.suffix not in TABLES + ARRAYS:
        raise DataError(f"{path}: unsupported input; expected .csv, .parquet, .npz, .npy or a folder of images")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no header, no rows)")
    read = {".csv": _csv_chunks, ".parquet": _parquet_chunks, ".npz": _npz_chunks, ".npy": _npy_chunks}[path.suffix]
    start = 0
    for X in read(path, label_column, chunk_rows):
        if len(X):
            yield Chunk(np.arange(start, start + len(X), dtype=np.int64), X)
            start += len(X)


def _text_chunks(path: Path, text_column: str | None, label_column: str, chunk_rows: int) -> Iterator[Chunk]:
    """A text file's lines (or a table's text column) in chunks; read whole (texts are small beside images)."""
    names, df = read_texts(path, text_column, label_column)
    rows, texts = np.asarray(names, dtype=np.int64), df["text"].to_numpy(dtype=object)
    for i in range(0, len(rows), chunk_rows):
        yield Chunk(rows[i : i + chunk_rows], texts[i : i + chunk_rows])


def _csv_chunks(path: Path, label_column: str, chunk_rows: int) -> Iterator[np.ndarray]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, "rb") as f:
        head = f.read(1 << 20)
    names = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
    row_bytes = max(len(head) / max(head.count(b"\n"), 1), 1.0)
    types = {n.strip('"'): (pa.string() if n.strip('"') == label_column else pa.float32()) for n in names}
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=int(min(max(chunk_rows * row_bytes, 1 << 16), 1 << 28))),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
        for batch in reader:
            yield table_features(batch.to_pandas(), path, label_column)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{path}: cannot read as csv ({str(e).splitlines()[0]})") from None


def _parquet_chunks(path: Path, label_column: str, chunk_rows: int) -> Iterator[np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read as parquet ({e})") from None
    for batch in file.iter_batches(batch_size=chunk_rows):
        yield table_features(batch.to_pandas(), path, label_column)


def _npz_chunks(path: Path, label_column: str, chunk_rows: int) -> Iterator[np.ndarray]:
    """X.npy streamed out of the zip (stored or deflated): only chunk_rows rows are in memory."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(path) as zf:
            if "X.npy" not in zf.namelist():
                raise DataError(
                    f"{path}: missing array 'X'; found {sorted(n.removesuffix('.npy') for n in zf.namelist())}"
                )
            with zf.open("X.npy") as f:
                version = fmt.read_magic(f)
                shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(
                    f
                )
                _check_array(path, shape, dtype, fortran)
                row = int(np.prod(shape[1:])) * dtype.itemsize
                for start in range(0, shape[0], chunk_rows):
                    n = min(chunk_rows, shape[0] - start)
                    yield np.frombuffer(f.read(n * row), dtype).reshape((n, *shape[1:])).astype(np.float32)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def _npy_chunks(path: Path, label_column: str, chunk_rows: int) -> Iterator[np.ndarray]:
    try:
        X = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from None
    _check_array(path, X.shape, X.dtype, False)
    for start in range(0, len(X), chunk_rows):
        yield np.asarray(X[start : start + chunk_rows], dtype=np.float32)


def _check_array(path: Path, shape, dtype, fortran: bool) -> None:
    if len(shape) == 0 or not np.issubdtype(dtype, np.number):
        raise DataError(f"{path}: X must be a numeric array with one row per input; got dtype {dtype}, shape {shape}")
    if fortran and len(shape) > 1:
        raise DataError(f"{path}: X is stored column-major (Fortran order); save it row-major to score it in chunks")


def _image_chunks(path: Path, shape: tuple[int, ...], chunk_rows: int, max_pixels: int) -> Iterator[Chunk]:
    files = image_files(path, shape)
    c, h, w = shape
    for start in range(0, len(files), chunk_rows):
        part = files[start : start + chunk_rows]
        X = np.stack([read_image(f, (h, w), c == 1, max_pixels) for f in part])
        yield Chunk(np.arange(start, start + len(part), dtype=np.int64), X, [str(f.relative_to(path)) for f in part])


def input_hash(path: Path) -> str:
    """SHA-256 of the input's bytes; of a folder, of its image files' relative paths and bytes, in order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _keep(chunk: Chunk, bad: np.ndarray, why: str, path: Path, skipped: list[str] | None) -> np.ndarray:
    """Rows to keep: all, or (with a skipped list) all but the bad ones, named there; else an error naming them."""
    if not bad.any():
        return np.ones(len(bad), bool)
    names = chunk.files or [str(r) for r in chunk.rows]
    if skipped is None:
        drop_rows(names, chunk.X, bad, why, path, None)  # raises, naming the rows
    skipped += [n for n, b in zip(names, bad) if b]
    return ~bad


def _schema(folder: bool):
    import pyarrow as pa

    fields = [("row", pa.int64())] + ([("file", pa.string())] if folder else [])
    fields += [
        ("label", pa.int64()),
        ("class", pa.string()),
        ("confidence", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
    ]
    return pa.schema(fields)


def _predict(chunk: Chunk, predictor, shape, path: Path, skipped: list[str] | None, embed: bool, meta: dict):
    """One chunk -> (its output table, the rows kept for the drift sample: features or embeddings)."""
    import pandas as pd
    import pyarrow as pa

    if shape == ():  # raw strings: nothing to check here, the model tokenizes them
        pred, emb = predictor.predict_embed(pd.DataFrame({"text": chunk.X}), embed)
        cols = {"row": chunk.rows, "label": pred["label"].to_numpy(), "class": pred["class"].to_numpy()}
        cols |= {"confidence": pred["confidence"].to_numpy()} | {k: [v] * len(chunk.rows) for k, v in meta.items()}
        return pa.table(cols, schema=_schema(False)), emb if emb is not None else np.zeros((len(chunk.rows), 0))
    X = to_shape(path, chunk.X, shape)
    keep = _keep(chunk, ~np.isfinite(X.reshape(len(X), -1)).all(1), "with NaN or infinite values", path, skipped)
    kept = Chunk(chunk.rows[keep], X[keep], [f for f, k in zip(chunk.files, keep) if k] if chunk.files else None)
    pred, emb = predictor.predict_embed(kept.X, embed)
    conf = pred["confidence"].to_numpy()
    why = "where the model's output is not finite (values far outside the training data?)"
    ok = _keep(kept, ~np.isfinite(conf), why, path, skipped)
    cols = {"row": kept.rows[ok]} | ({"file": [f for f, k in zip(kept.files, ok) if k]} if chunk.files else {})
    cols |= {"label": pred["label"].to_numpy()[ok], "class": pred["class"].to_numpy()[ok], "confidence": conf[ok]}
    cols |= {k: [v] * int(ok.sum()) for k, v in meta.items()}
    features = emb if emb is not None else kept.X.reshape(len(kept.X), -1)
    return pa.table(cols, schema=_schema(chunk.files is not None)), features[ok]


def score(
    cfg: Config,
    model_uri: str,
    input: Path,
    out: Path,
    skip_invalid: bool = False,
    say: Callable[[str], None] = print,
) -> dict:
    """Predict every row of `input` into the parquet file `out`; check drift; track it all -> summary."""
    import pyarrow.parquet as pq

    input, out = Path(input), Path(out)
    if not input.exists():
        raise DataError(f"{input}: input not found")
    ref = registry.resolve(model_uri)
    model = registry.load(f"models:/{ref.name}/{ref.version}" if ref.version else model_uri)
    predictor = registry.predictor(model)
    shape = () if registry.takes_text(model) else predictor.shape  # (): raw strings in
    embed = cfg.drift.enabled and (len(shape) == 3 or shape == ())  # images, text: drift on embeddings
    check_drift = cfg.drift.enabled
    skipped: list[str] | None = [] if skip_invalid else None
    sample = drift.Reservoir(cfg.drift.sample_rows, cfg.seed)
    meta = {"model_name": ref.name or "", "model_version": ref.version or ""}
    tags = {f"mlpipe.{k}": v for k, v in meta.items()} | {
        "mlpipe.model_uri": model_uri,
        "mlpipe.input": str(input.resolve()),
        "mlpipe.input_hash": input_hash(input),
    }
    with tracking.stage_run("score", None, tags) as run_id:
        registry.link_run_to_version(run_id, ref.name, ref.version)
        tracking.log_params(
            {"input": str(input), "out": str(out), "score": cfg.section("score"), "drift": cfg.section("drift")}
        )
        t0, n = time.perf_counter(), 0
        with atomic_file(out) as f:  # a failure below (bad rows, drift with on_drift: fail) leaves no file
            with pq.ParquetWriter(f, _schema(input.is_dir())) as writer:
                for chunk in read_chunks(
                    input, shape, cfg.data.label_column, cfg.score.chunk_rows, cfg.data.max_pixels, cfg.data.text_column
                ):
                    table, rows = _predict(chunk, predictor, shape, input, skipped, embed, meta)
                    writer.write_table(table)
                    if check_drift:
                        sample.add(rows)
                    n += table.num_rows
            if n == 0:
                why = f"every row ({len(skipped)}) was invalid" if skipped else "0 rows"
                raise DataError(f"{input}: no rows to score ({why})")
            seconds = time.perf_counter() - t0
            result = {"rows": n, "skipped": len(skipped or []), "seconds": round(seconds, 3), "rows_per_s": n / seconds}
            tracking.log_metrics({k: float(v) for k, v in result.items()})
            found = monitor.report(cfg, model, sample.sample(), say) if check_drift else None
            result |= {"out": str(out), "model": f"{ref.name} v{ref.version}" if ref.version else model_uri}
            result |= {"run_id": run_id, "input_hash": tags["mlpipe.input_hash"]}
            if found is not None:
                result |= {"drift_share": round(found.share, 4), "drifted": found.drifted}
                if found.drifted and cfg.drift.on_drift == "fail":
                    raise DataError(
                        f"{input}: data drift: {found.share:.0%} of {len(found.columns)} {found.basis} columns "
                        f"drifted (drift.threshold {cfg.drift.threshold:g}); {out} not written "
                        f"(drift.on_drift: fail); the report is in MLflow run {run_id}"
                    )
        return result
