"""Text: the tokenizer (Hugging Face `tokenizers`, fitted on the training rows only) and its encoding.

This module is shipped inside every registered text model (registry.SHIPPED): the pyfunc tokenizes
raw strings with it. Keep it to numpy, `tokenizers` and components.errors. Text sources and ingest
are components/textdata.py.

Prepared layout of a text dataset (data/prepared, meta.kind == "text"), the contract later stages read:
    X_train.npy (N, max_length) int32  token ids: [CLS] first, right-padded with PAD_ID (0);
                                       the attention mask is X != PAD_ID
    len_train.npy (N,) int32           tokens before padding ([CLS] included)
    y_train.npy (N,) int64             (and the same three for test)
    texts_train.parquet                the raw texts and where each came from (file, row), for validation and reports
    tokenizer.json                     the fitted tokenizer; its hash is part of meta.content_hash
    meta.json                          kind "text", feature_shape [max_length], text: {vocab_size, max_length, ...}

tokenizer.json is self-contained: NFKC (+ lower-casing), whitespace/punctuation pre-tokenization, the
trained BPE or WordPiece model, "[CLS] $A" post-processing, truncation to max_length and padding to
max_length. Encoding a string with it gives exactly a row of X.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from components.errors import DataError, MlpipeError

# Special tokens: the same ids in every tokenizer mlpipe fits, so models and augmentation can rely on them.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))

TOKENIZER_FILE = "tokenizer.json"
KINDS = ("bpe", "wordpiece")
WORDPIECE_PREFIX = "##"
_SPACES = re.compile(r"\s+")


def _blank(kind: str, lowercase: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer {kind!r}; expected one of {KINDS}")
    model = (
        models.BPE(unk_token=UNK)
        if kind == "bpe"
        else models.WordPiece(unk_token=UNK, continuing_subword_prefix=WORDPIECE_PREFIX)
    )
    tok = Tokenizer(model)
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    return tok


def fit(texts: Iterable[str], kind: str, vocab_size: int, max_length: int, lowercase: bool = True):
    """A tokenizer trained on `texts` (the training rows only) -> tokenizers.Tokenizer, ready to encode
    rows of max_length ids. Its vocabulary may come out smaller than vocab_size when the texts cannot
    fill it (every word already one token): the caller decides whether that is an error.

    BPE training is deterministic; WordPiece training in `tokenizers` breaks ties between equally
    frequent merges in an unseeded order, so two fits on the same texts can differ in their rarest tokens."""
    from tokenizers import processors, trainers

    tok = _blank(kind, lowercase)
    common = {"vocab_size": vocab_size, "special_tokens": list(SPECIAL_TOKENS), "show_progress": False}
    trainer = (
        trainers.BpeTrainer(**common)
        if kind == "bpe"
        else trainers.WordPieceTrainer(**common, continuing_subword_prefix=WORDPIECE_PREFIX)
    )
    tok.train_from_iterator(texts, trainer)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):  # the trainers put special tokens first, in order
        raise MlpipeError(f"tokenizer: special tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, CLS_ID)])
    return _fixed_length(tok, max_length)


def _fixed_length(tok, max_length: int):
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=PAD_ID, pad_token=PAD, length=max_length)
    return tok


def max_length_of(tok) -> int:
    return int(tok.truncation["max_length"])


def to_bytes(tok) -> bytes:
    return tok.to_str().encode()


def load(path: str | Path):
    """tokenizer.json -> tokenizers.Tokenizer; a file that is not one names itself."""
    from tokenizers import Tokenizer

    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001  the Rust side raises plain Exception
        raise MlpipeError(f"{path}: not a readable tokenizer file ({e})") from None
    if not tok.truncation or not tok.padding or tok.token_to_id(CLS) != CLS_ID or tok.token_to_id(PAD) != PAD_ID:
        raise MlpipeError(f"{path}: not an mlpipe tokenizer (fixed length, [CLS]={CLS_ID}, [PAD]={PAD_ID} expected)")
    return tok


def encode(tok, texts: Sequence[str], batch: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (ids (N, max_length) int32, lengths (N,) int32 with [CLS], truncated (N,) bool)."""
    L = max_length_of(tok)
    ids = np.zeros((len(texts), L), np.int32)
    lengths = np.zeros(len(texts), np.int32)
    truncated = np.zeros(len(texts), bool)
    for start in range(0, len(texts), batch):
        for i, e in enumerate(tok.encode_batch(list(texts[start : start + batch])), start):
            ids[i] = e.ids
            lengths[i] = sum(e.attention_mask)
            truncated[i] = bool(e.overflowing)
    return ids, lengths, truncated


def normalize(tok, text: str) -> str:
    """The text as the tokenizer sees it (NFKC, lower-cased if configured), runs of white space as one
    space: what duplicate and leakage checks compare."""
    norm = tok.normalizer.normalize_str(text) if tok.normalizer is not None else text
    return _SPACES.sub(" ", norm).strip()


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_texts(X, column: str | None = None) -> list[str]:
    """Model input -> a list of strings: a DataFrame (its `column`, a column named "text", or its only
    column), a Series, a 1-D array or list of strings. Anything else is an error naming what was given."""
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        if column and column in X.columns:
            X = X[column]
        elif "text" in X.columns:
            X = X["text"]
        elif X.shape[1] == 1:
            X = X.iloc[:, 0]
        else:
            raise DataError(f"text model input: expected one text column (or one named 'text'); got {list(X.columns)}")
    values = list(X.tolist() if isinstance(X, (pd.Series, np.ndarray)) else X)
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise DataError(
            f"text model input: rows {bad[:10]} are not strings "
            f"(e.g. {type(values[bad[0]]).__name__} {values[bad[0]]!r}); a text model takes raw strings"
        )
    return values


class TextEncoder:
    """A registered text model's tokenizer: raw strings -> (N, max_length) ids, as at ingest."""

    def __init__(self, tok):
        self.tok = tok
        self.max_length = max_length_of(tok)

    @classmethod
    def load(cls, path: str | Path) -> TextEncoder:
        return cls(load(path))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:  # (N, max_length) int32
        return encode(self.tok, texts)[0]
