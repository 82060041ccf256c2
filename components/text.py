"""Text data: the tokenizer (Hugging Face `tokenizers`, fitted on the training rows only) and text sources.

Prepared layout of a text dataset (data/prepared, meta.kind == "text"), the contract later stages read:
    X_train.npy (N, max_length) int32  token ids: [CLS] first, right-padded with PAD_ID (0);
                                       the attention mask is X != PAD_ID
    len_train.npy (N,) int32           tokens before padding ([CLS] included)
    y_train.npy (N,) int64             (and the same three for test)
    texts_train.parquet                the raw texts and where each came from (file, row), for validation and reports
    tokenizer.json                     the fitted tokenizer; its hash is part of meta.content_hash
    meta.json                          kind "text", feature_shape [max_length], text: {vocab_size, max_length, ...}
"""

from __future__ import annotations

# Special tokens: the same ids in every tokenizer mlpipe fits, so models and augmentation can rely on them.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
