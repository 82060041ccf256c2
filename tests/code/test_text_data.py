"""Text data (issue 19): the tokenizer fitted on training rows only, the prepared layout and its hash,
the text validation suite, text augmentation, the TF-IDF baseline and raw-string inference. Tiny
literal data; the real tokenizers, GX and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from components import augment, baseline, data, serving, text, textdata, tune, validate
from components.config import AugmentConfig, DataConfig, ValidateConfig
from components.errors import DataError, MlpipeError
from components.folds import val_split

WORDS = {
    "sport": "ball goal team match score player win coach league".split(),
    "tech": "code chip data cloud server bug network compiler kernel".split(),
}
MARK = 0x4E00  # row i carries the character chr(MARK + i): a token of its own that no other row has


def corpus(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ("sport", "tech")[i % 2]
        rows.append({"text": f"x{chr(MARK + i)} " + " ".join(rng.choice(WORDS[label], 6)), "label": label})
    return pd.DataFrame(rows)


def config(path, **kw) -> DataConfig:
    return DataConfig(source=f"csv:{path}", **{"text_column": "text", "vocab_size": 160, "max_length": 16, **kw})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    corpus().to_csv(root / "t.csv", index=False)
    cfg = config(root / "t.csv")
    ds = textdata.ingest(cfg, seed=0)
    data.save_prepared(ds, root / "prepared")
    return root, cfg, ds


def test_the_tokenizer_is_fitted_on_the_training_rows_only(prepared):
    """A token found only in test rows (or in the rows held out for early stopping) gets no id of its
    own: it encodes as [UNK]. The fit rows' tokens do get one."""
    root, cfg, ds = prepared
    tok = textdata.load_tokenizer(root / "prepared")
    train, test = textdata.load_texts(root / "prepared")
    fit, stop = val_split(ds.y_train, cfg.val_size, 0)
    assert ds.meta.text["fit_rows"] == len(fit) and len(stop) > 0

    def mark(t: str) -> str:
        return t.split()[0][-1]

    for t in train["text"].iloc[fit]:
        assert tok.token_to_id(mark(t)) is not None
    held_out = list(train["text"].iloc[stop]) + list(test["text"])
    for t in held_out:
        assert tok.token_to_id(mark(t)) is None, t
        assert text.UNK_ID in tok.encode(t).ids
    # the same through the prepared ids: every held-out row has an [UNK], no fit row has one
    assert all((ds.X_test == text.UNK_ID).any(1)) and all((ds.X_train[stop] == text.UNK_ID).any(1))
    assert not (ds.X_train[fit] == text.UNK_ID).any()


def test_prepared_layout(prepared):
    root, cfg, ds = prepared
    folder = root / "prepared"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "text" and meta["feature_shape"] == [cfg.max_length]
    t = meta["text"]
    assert (t["pad_id"], t["unk_id"], t["cls_id"], t["sep_id"], t["mask_id"]) == (0, 1, 2, 3, 4)
    # the actual size: the whole alphabet of the fit rows is kept even beyond data.vocab_size
    assert t["vocab_size"] == textdata.load_tokenizer(folder).get_vocab_size() >= cfg.vocab_size
    assert t["max_length"] == cfg.max_length
    assert t["tokenizer"] == "tokenizer.json"
    assert t["tokenizer_hash"] == text.file_hash((folder / "tokenizer.json").read_bytes())
    back = data.load_prepared(folder)
    for split in ("train", "test"):
        X, lengths = np.load(folder / f"X_{split}.npy"), np.load(folder / f"len_{split}.npy")
        assert X.dtype == np.int32 and X.shape[1] == cfg.max_length and lengths.dtype == np.int32
        assert (X[:, 0] == text.CLS_ID).all()
        np.testing.assert_array_equal((X != text.PAD_ID).sum(1), lengths)  # right-padded: mask = X != 0
        np.testing.assert_array_equal(X, getattr(back, f"X_{split}"))
        texts = pd.read_parquet(folder / f"texts_{split}.parquet")
        assert list(texts.columns[:3]) == ["text", "file", "row"] and len(texts) == len(X)
        # the stored ids are what the saved tokenizer makes of the stored texts
        np.testing.assert_array_equal(text.TextEncoder.load(folder / "tokenizer.json")(list(texts["text"])), X)
    # the same stratified split as any other source: data.split on the row numbers
    rows = data.split(data.Raw(np.arange(80).reshape(80, 1), corpus()["label"].to_numpy(), "x", None), cfg, 0)
    np.testing.assert_array_equal(pd.read_parquet(folder / "texts_test.parquet")["row"], rows.X_test[:, 0])


def test_the_hash_covers_ids_labels_and_the_tokenizer(prepared):
    root, cfg, ds = prepared
    again = textdata.ingest(cfg, seed=0)
    assert again.meta.content_hash == ds.meta.content_hash  # bpe: reproducible
    for change in ({"vocab_size": 140}, {"max_length": 12}, {"lowercase": False}, {"tokenizer": "wordpiece"}):
        other = textdata.ingest(config(root / "t.csv", **change), seed=0)
        assert other.meta.content_hash != ds.meta.content_hash, change


def test_textfolder_source(tmp_path):
    for i, row in corpus(20).iterrows():
        (tmp_path / row["label"]).mkdir(exist_ok=True)
        (tmp_path / row["label"] / f"{i:03d}.txt").write_text(row["text"])
    ds = textdata.ingest(DataConfig(source=f"textfolder:{tmp_path}", vocab_size=60, max_length=8), seed=0)
    assert ds.meta.kind == "text" and ds.meta.classes == ["sport", "tech"] and ds.X_train.shape[1] == 8
    texts = pd.read_parquet(pd.io.common.BytesIO(ds.files["texts_train.parquet"]))
    assert texts["file"].str.match(r"^(sport|tech)/\d{3}\.txt$").all()


def test_text_sources_refuse_bad_input(tmp_path):
    df = corpus(20)
    df.assign(text=np.arange(20)).to_csv(tmp_path / "num.csv", index=False)
    with pytest.raises(DataError, match=r"num.csv: text column 'text' \(data.text_column\) holds numbers only"):
        textdata.ingest(config(tmp_path / "num.csv"), 0)
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"text column 'body' \(data.text_column\) not found"):
        textdata.ingest(config(tmp_path / "t.csv", text_column="body"), 0)
    with pytest.raises(DataError, match=r"data.vocab_size 5000: .* fill only \d+ tokens"):
        textdata.ingest(config(tmp_path / "t.csv", vocab_size=5000), 0)


def test_validation_flags_each_problem_by_file_and_row(tmp_path):
    df = corpus(60)
    df.loc[3, "text"] = "   "  # whitespace only
    df.loc[5, "text"] = "ball goal\x07 team"  # a control character
    df.loc[7, "text"] = df.loc[9, "text"] = "Code  chip DATA"  # duplicates after normalisation
    df.to_csv(tmp_path / "t.csv", index=False)
    raw = (tmp_path / "t.csv").read_bytes().replace(df.loc[11, "text"].encode(), b"bad \xff\xfe bytes", 1)
    (tmp_path / "t.csv").write_bytes(raw)  # invalid UTF-8 in row 11
    cfg = config(tmp_path / "t.csv", max_length=4)  # almost every text is cut
    ds = textdata.ingest(cfg, 0)
    data.save_prepared(ds, tmp_path / "p")
    texts = textdata.load_texts(tmp_path / "p")
    report = validate.validate(ds, ValidateConfig(min_rows_per_class=1, max_truncated_fraction=0.5), texts=texts)
    assert not report.success
    lines = "\n".join(report.failures)
    by_column = {c: [f for f in report.failures if f".{c}:" in f] for c in ("empty", "bad_chars", "truncated")}
    assert all(by_column.values()), lines
    assert any("t.csv row" in f and " 3" in f for f in by_column["empty"]), lines
    bad = " ".join(by_column["bad_chars"])
    assert "5" in bad and "11" in bad and "t.csv" in bad
    assert "duplicate" in lines or "leak" in lines  # rows 7 and 9 are one text


def test_a_clean_text_dataset_passes(prepared):
    root, _, ds = prepared
    report = validate.validate(ds, ValidateConfig(min_rows_per_class=5), texts=textdata.load_texts(root / "prepared"))
    assert report.success, report.failures


def test_text_augmentation_never_touches_cls_or_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 16, (256,))
    x = torch.where(torch.arange(16)[None] < lengths[:, None], torch.randint(5, 50, (256, 16)), 0).to(torch.int32)
    x[:, 0] = text.CLS_ID
    strong = AugmentConfig(token_dropout=0.3, token_mask=0.3, span_delete=0.5)
    out = augment.build_augment(strong, "text", x)(x, g)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert (out[:, 0] == text.CLS_ID).all()
    n_out = (out != text.PAD_ID).sum(1)
    assert (n_out <= lengths).all() and (out[x == text.PAD_ID] == text.PAD_ID).all()
    # still [CLS] + tokens + padding: no padding before a token
    pos = torch.arange(16)[None]
    assert ((out != text.PAD_ID) == (pos < n_out[:, None])).all()
    assert (n_out < lengths).any() and (out == text.MASK_ID).any()  # it did something
    # the tuner's strength 0 is the identity
    zero = AugmentConfig(**{k.split(".")[1]: v for k, v in tune.scale_augment(strong, 0.0).items()})
    assert augment.build_augment(zero, "text", x) is None
    assert torch.equal(augment.TextAugment(0.0, 0.0, 0.0)(x, g), x)


def test_tfidf_baseline_on_raw_texts(prepared, tmp_path):
    root, _, ds = prepared
    tr, te = textdata.load_texts(root / "prepared")
    X, Xt = tr["text"].to_numpy(dtype=object), te["text"].to_numpy(dtype=object)
    [r] = baseline.fit_all(["tfidf"], X, ds.y_train, Xt, ds.y_test, ds.meta.classes, 3, 0, (1.0, 10.0))
    assert r.test["accuracy"] >= 0.9 and len(r.folds) == 3
    baseline.save(r.model, tmp_path / "b.skops")
    back = baseline.load(tmp_path / "b.skops")
    pred = back.predict(pd.DataFrame({"text": list(Xt)}))
    np.testing.assert_array_equal(pred["label"], r.model.predict(Xt)["label"])


class BagOfIds(nn.Module):
    """The smallest model on token ids: mean embedding of the non-padding tokens -> logits."""

    def __init__(self, vocab: int, n_classes: int):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, 8), nn.Linear(8, n_classes)

    def forward(self, x):  # (B, L) int ids
        mask = (x != text.PAD_ID).unsqueeze(-1).float()
        return self.head((self.emb(x.long()) * mask).sum(1) / mask.sum(1).clamp(min=1))


def test_raw_strings_are_tokenized_inside_the_predictor(prepared, tmp_path):
    root, cfg, ds = prepared
    tok_file = root / "prepared" / "tokenizer.json"
    torch.manual_seed(0)
    model = BagOfIds(ds.meta.text["vocab_size"], 2)
    spec = {"arch": "test", "args": {"in_shape": [cfg.max_length]}}
    pred = serving.Predictor(model, spec, ds.meta.classes, text.TextEncoder.load(tok_file))
    _, te = textdata.load_texts(root / "prepared")
    from_strings = pred.predict(pd.DataFrame({"text": list(te["text"])}))
    from_ids = pred.predict(ds.X_test)
    pd.testing.assert_frame_equal(from_strings, from_ids)
    assert list(from_strings.columns) == ["label", "class", "confidence"]
    assert len(pred.predict(["", "ball goal " * 50])) == 2  # empty and over-long texts are fine
    with pytest.raises(DataError, match="not strings"):
        pred.predict(pd.DataFrame({"text": ["ok", 3.5]}))
    # the tokenizer is checked against the hash recorded at registration
    copy = tmp_path / "tokenizer.json"
    copy.write_bytes(tok_file.read_bytes().replace(b'"lowercase"', b'"Lowercase"', 1) + b" ")
    with pytest.raises(MlpipeError, match="the tokenizer was changed after the model was registered"):
        serving.check_hash(copy, text.file_hash(tok_file.read_bytes()), "tokenizer")


@pytest.mark.slow
def test_a_registered_text_model_takes_raw_strings(prepared, tmp_path, monkeypatch):
    """The package carries the tokenizer: the pyfunc's signature is one string column, it predicts raw
    strings as the Predictor does on the prepared ids, and `mlpipe predict` / `mlpipe score` read a text
    file (one text per line). Real MLflow store in tmp_path; the model is an untrained tiny Transformer."""
    import mlflow

    from components import models, registry, tracking
    from components.config import ModelConfig, TrackingConfig, load_config
    from flows import score
    from tests.conftest import REPO, cli

    root, cfg, ds = prepared
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.setup(TrackingConfig(), tmp_path)
    small = ModelConfig(kind="transformer", d_model=16, heads=2, layers=1, ff=32)
    spec = models.model_args(small, ds.meta.feature_shape, ds.meta.n_classes, "text", ds.meta.text)
    torch.manual_seed(0)
    models.save(models.build(spec), spec, ds.meta.classes, tmp_path / "model.pt")
    tests = textdata.model_input(root / "prepared")
    with mlflow.start_run():
        uri = registry.log_model(tmp_path / "model.pt", tests["text"], None, textdata.tokenizer_file(root / "prepared"))
    version = registry.register(uri, "mlpipe-text", {"variant": "fp32"})
    model = registry.load(f"models:/mlpipe-text/{version}")
    assert registry.takes_text(model) and registry.input_shape(model) == ()
    got = model.predict(tests)
    want = serving.Predictor.load(tmp_path / "model.pt", verify=False).predict(ds.X_test)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["confidence"], want["confidence"], atol=1e-5)
    (tmp_path / "in.txt").write_text("\n".join(tests["text"][:3]) + "\n\n" + tests["text"][3] + "\n")
    r = cli("predict", "--model", f"models:/mlpipe-text/{version}", "in.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "input,class,confidence" and [x.split(",")[0] for x in lines[1:]] == ["0", "1", "2", "4"]
    assert [x.split(",")[1] for x in lines[1:]] == list(np.asarray(ds.meta.classes)[want["label"][:4]])
    out = score.score(
        load_config(tmp_path / "params.yaml"),
        f"models:/mlpipe-text/{version}",
        tmp_path / "in.txt",
        tmp_path / "out.parquet",
        say=lambda m: None,
    )
    assert out["rows"] == 4
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "out.parquet")["row"], [0, 1, 2, 4])
    # the scoring server's path (`mlpipe serve-model`, `mlflow models serve`): JSON strings in
    from flows import serve_model

    served = serve_model.load_version(registry.resolve(f"models:/mlpipe-text/{version}"))
    body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in tests["text"][:2]]}}
    status, _, answer = registry.invoke(served.model, json.dumps(body).encode(), "application/json")
    assert status == 200, answer
    assert [p["label"] for p in json.loads(answer)["predictions"]] == list(want["label"][:2])
