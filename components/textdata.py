"""Text sources and their ingest: raw texts + labels -> the prepared text layout (components/text.py).

Sources:
    csv:PATH / parquet:PATH with data.text_column set   one row per text, labels in data.label_column
    textfolder:PATH                                      one sub-folder per class of UTF-8 .txt files

The train/test split is data.split's (same stratification, seed and test_size). The tokenizer is fitted
on the training rows less the rows the training recipe holds out for early stopping
(folds.val_split(y_train, data.val_size, seed), the training recipe's own split), never on validation
or test rows. Every text keeps where it came from (file and row, numbered from 0 after the header; a
textfolder's file name) so that validation failures can name them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components import text
from components.config import DataConfig
from components.errors import DataError

TEXT_SUFFIX = ".txt"
NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
SHOWN = 10  # rows named in a message


@dataclass
class TextRaw:
    texts: list[str]
    labels: np.ndarray  # (N,) original labels
    files: list[str]  # where each text came from
    rows: np.ndarray  # (N,) row in that file (0 for a textfolder file)


def is_text(cfg: DataConfig) -> bool:
    scheme = cfg.source.partition(":")[0]
    return scheme == "textfolder" or (scheme in ("csv", "parquet") and cfg.text_column is not None)


def listed(items: list) -> str:
    shown = ", ".join(str(i) for i in items[:SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def load_table(scheme: str, path: Path, text_column: str, label_column: str) -> TextRaw:
    if not path.exists():
        raise DataError(f"{path}: {scheme} file not found")
    try:
        # undecodable bytes become U+FFFD: validation names the rows instead of the whole file failing here
        df = pd.read_csv(path, encoding_errors="replace") if scheme == "csv" else pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{path}: cannot read as {scheme} ({type(e).__name__}: {e})") from None
    for key, col in (("text_column", text_column), ("label_column", label_column)):
        if col not in df.columns:
            raise DataError(
                f"{path}: {key.split('_')[0]} column {col!r} (data.{key}) not found; columns are {list(df.columns)}"
            )
    if df.empty:
        raise DataError(f"{path}: dataset is empty (0 rows)")
    col = df[text_column]
    if pd.api.types.is_numeric_dtype(col):
        raise DataError(
            f"{path}: text column {text_column!r} (data.text_column) holds numbers only (dtype {col.dtype}); "
            "name a column of text, or set data.text_column: null for a table of numeric features"
        )
    filled = col.dropna().astype(str)
    filled = filled[filled.str.strip() != ""]
    if filled.empty:
        raise DataError(f"{path}: text column {text_column!r} (data.text_column) is empty: no row has any text")
    if filled.map(lambda s: bool(NUMBER.match(s))).all():
        raise DataError(
            f"{path}: text column {text_column!r} (data.text_column) holds numbers only "
            f"(e.g. {filled.iloc[0]!r}); name a column of text"
        )
    if df[label_column].isna().any():
        rows = df.index[df[label_column].isna()].tolist()
        raise DataError(f"{path}: label column {label_column!r} has missing values (rows {listed(rows)}, from 0)")
    texts = [v if isinstance(v, str) else ("" if pd.isna(v) else str(v)) for v in col.tolist()]
    return TextRaw(texts, df[label_column].to_numpy(), [path.name] * len(df), np.arange(len(df)))


def load_folder(root: Path) -> TextRaw:
    if not root.exists():
        raise DataError(f"{root}: text folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected one folder of {TEXT_SUFFIX} files per class)")
    texts, labels, files = [], [], []
    for d in class_dirs:
        found = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() == TEXT_SUFFIX)
        if not found:
            raise DataError(f"{d}: class folder {d.name!r} has no {TEXT_SUFFIX} files")
        for f in found:
            raw = f.read_bytes()
            try:
                texts.append(raw.decode("utf-8-sig"))
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{f}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                    f"every {TEXT_SUFFIX} file of a textfolder must be UTF-8"
                ) from None
            labels.append(d.name)
            files.append(f"{d.name}/{f.name}")
    return TextRaw(texts, np.array(labels), files, np.zeros(len(texts), np.int64))


def load_source(cfg: DataConfig) -> TextRaw:
    scheme, _, rest = cfg.source.partition(":")
    if not rest:
        raise DataError(f"data.source: {cfg.source!r} names no path")
    if scheme == "textfolder":
        return load_folder(Path(rest))
    return load_table(scheme, Path(rest), cfg.text_column, cfg.label_column)


def _sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def frame(raw: TextRaw, idx: np.ndarray, tok, lengths: np.ndarray, truncated: np.ndarray) -> pd.DataFrame:
    """texts_<split>.parquet: the raw text, where it came from, and what validation checks."""
    texts = [raw.texts[i] for i in idx]
    return pd.DataFrame(
        {
            "text": texts,
            "file": [raw.files[i] for i in idx],
            "row": raw.rows[idx].astype(np.int64),
            "normalized_sha1": [_sha1(text.normalize(tok, t)) for t in texts],
            "n_tokens": lengths.astype(np.int64),
            "truncated": truncated,
        }
    )


def _parquet(df: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def ingest(cfg: DataConfig, seed: int, classes: list[str] | None = None):
    """-> data.Prepared of token ids, meta.kind "text", with the extra files (len_*, texts_*, tokenizer.json)."""
    from components import data
    from components.folds import val_split

    raw = load_source(cfg)
    n = len(raw.texts)
    if n == 0:
        raise DataError(f"{cfg.source}: dataset is empty (0 rows)")
    # data.split on row numbers: the same stratified, seeded split as every other source
    split = data.split(data.Raw(np.arange(n).reshape(n, 1), raw.labels, "text", None), cfg, seed, classes)
    tr, te = split.X_train[:, 0], split.X_test[:, 0]
    try:
        fit_pos, _ = val_split(split.y_train, cfg.val_size, seed)
    except ValueError as e:
        raise DataError(f"data.val_size: cannot split {len(tr)} training rows for early stopping ({e})") from None
    fit_rows = tr[fit_pos]
    tok = text.fit((raw.texts[i] for i in fit_rows), cfg.tokenizer, cfg.vocab_size, cfg.max_length, cfg.lowercase)
    size = tok.get_vocab_size()
    if size < cfg.vocab_size:
        raise DataError(
            f"data.vocab_size {cfg.vocab_size}: the {len(fit_rows)} training texts of {cfg.source} fill only "
            f"{size} tokens ({cfg.tokenizer}); set data.vocab_size to at most {size}"
        )
    tok_bytes = text.to_bytes(tok)
    Xtr, len_tr, cut_tr = text.encode(tok, [raw.texts[i] for i in tr])
    Xte, len_te, cut_te = text.encode(tok, [raw.texts[i] for i in te])
    ytr, yte = split.y_train, split.y_test
    m = split.meta
    m.kind, m.feature_shape, m.value_range = "text", [cfg.max_length], None
    m.content_hash = data.content_hash(Xtr, ytr, Xte, yte, np.frombuffer(tok_bytes, np.uint8))
    m.text = {
        "vocab_size": size,
        "max_length": cfg.max_length,
        "pad_id": text.PAD_ID,
        "unk_id": text.UNK_ID,
        "cls_id": text.CLS_ID,
        "sep_id": text.SEP_ID,
        "mask_id": text.MASK_ID,
        "tokenizer": text.TOKENIZER_FILE,
        "tokenizer_hash": text.file_hash(tok_bytes),
        "tokenizer_kind": cfg.tokenizer,
        "lowercase": cfg.lowercase,
        "text_column": cfg.text_column,
        "fit_rows": len(fit_rows),
        "truncated_train": float(cut_tr.mean()),
        "truncated_test": float(cut_te.mean()),
    }
    files = {
        "len_train.npy": len_tr,
        "len_test.npy": len_te,
        "texts_train.parquet": _parquet(frame(raw, tr, tok, len_tr, cut_tr)),
        "texts_test.parquet": _parquet(frame(raw, te, tok, len_te, cut_te)),
        text.TOKENIZER_FILE: tok_bytes,
    }
    return data.Prepared(Xtr, ytr, Xte, yte, m, files)


def load_texts(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(texts_train, texts_test) of a prepared text dataset."""
    folder = Path(folder)
    out = []
    for name in ("train", "test"):
        path = folder / f"texts_{name}.parquet"
        if not path.exists():
            raise DataError(f"{path}: not found (a text dataset's raw texts; run the ingest stage)")
        out.append(pd.read_parquet(path))
    return out[0], out[1]


def load_tokenizer(folder: Path):
    return text.load(Path(folder) / text.TOKENIZER_FILE)


def model_input(folder: Path, split: str = "test") -> pd.DataFrame:
    """A split's raw texts as a registered text model takes them: one string column "text"."""
    texts = load_texts(folder)[0 if split == "train" else 1]
    return pd.DataFrame({"text": texts["text"].astype(str).tolist()})


def tokenizer_file(folder: Path) -> Path:
    return Path(folder) / text.TOKENIZER_FILE
