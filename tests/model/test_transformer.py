"""Transformer encoders (components/transformer.py) on synthetic token ids and small images: padding
invariance, pooling, integer ids through the training loop, length buckets, exact resume, the tune
space, and every compress variant on a tiny text model. (2-rank DDP: tests/e2e/test_transformer_ddp.py.)"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from components import checkpoint, compress, distributed, engine, models, stream, train, tune
from components.config import CompressConfig, Config, ConfigError, ModelConfig, TrainConfig, load_config
from components.errors import MlpipeError
from components.text import CLS_ID, PAD_ID

VOCAB, L, K = 40, 24, 3


def token_data(n=360, seed=0):
    """(n, L) int32 ids: [CLS], then 3..L-1 tokens, half from the class's own band of ids, half noise;
    right-padded with PAD_ID. -> (X, y)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    X = np.full((n, L), PAD_ID, np.int32)
    band = (VOCAB - 5) // K
    for i in range(n):
        k = int(rng.integers(4, L + 1))
        own = 5 + y[i] * band + rng.integers(0, band, k - 1)
        X[i, 0] = CLS_ID
        X[i, 1:k] = np.where(rng.random(k - 1) < 0.5, own, rng.integers(5, VOCAB, k - 1))
    return X, y.astype(np.int64)


class TextMeta:
    feature_shape, n_classes, kind, text = [L], K, "text", {"vocab_size": VOCAB, "max_length": L}


def text_spec(**kw):
    # pooling cls: these tiny models train 4 epochs at lr 0.01, where mean pooling (the default) learns the synthetic
    # task slower with length buckets (0.67 vs 0.87 validation accuracy)
    base = {"kind": "auto", "d_model": 16, "heads": 2, "layers": 2, "ff": 32, "dropout": 0.0, "pooling": "cls"}
    mcfg = ModelConfig(**{**base, **kw})
    return models.spec_for(mcfg, TextMeta)


TCFG = TrainConfig(epochs=4, batch_size=32, lr=1e-2, num_threads=1, checkpoint_min_seconds=0, patience=50)


@pytest.fixture(scope="module")
def trained():
    """A tiny text transformer fitted on the synthetic ids (the fixture of the compress and int8 tests)."""
    X, y = token_data()
    torch.manual_seed(0)
    spec = text_spec()
    model = models.build(spec)
    engine.fit(model, X[:240], y[:240], X[240:300], y[240:300], TCFG, 0, progress=False)
    return model.eval(), spec, X, y


def accuracy(model, X, y) -> float:
    return float((train.predict_logits(model, X).argmax(1).numpy() == y).mean())


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_extra_padding_columns_do_not_change_the_logits(pooling):
    torch.manual_seed(0)
    model = models.build(text_spec(pooling=pooling)).eval()
    X, _ = token_data(8)
    short = torch.from_numpy(X[:, :16].copy())  # some rows cut, others still padded
    with torch.no_grad():
        a = model(short)
        b = model(torch.cat([short, torch.zeros((8, L - 16), dtype=short.dtype)], 1))
        # the same text with different garbage in its padding columns' positions is not possible: pad is pad
        c = model(short.long())
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(a, c)


def test_cls_and_mean_pooling_differ_and_mean_ignores_padding_positions():
    torch.manual_seed(0)
    cls_model = models.build(text_spec(pooling="cls")).eval()
    mean_model = models.build(text_spec(pooling="mean")).eval()
    mean_model.load_state_dict(cls_model.state_dict())
    X, _ = token_data(6)
    x = torch.from_numpy(X)
    with torch.no_grad():
        assert not torch.allclose(cls_model(x), mean_model(x))
        # mean pooling by hand over the real positions of the encoder's output
        h, keys = {}, (x != PAD_ID)
        mean_model.ln_f.register_forward_hook(lambda m, i, o: h.setdefault("out", o))
        logits = mean_model(x)
        w = keys.unsqueeze(-1).float()
        pooled = (h["out"] * w).sum(1) / w.sum(1)
        assert torch.allclose(mean_model.head(pooled), logits, atol=1e-6)


def test_a_row_of_padding_only_gives_finite_logits_and_too_long_input_is_refused():
    model = models.build(text_spec()).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros((2, L), dtype=torch.int64))).all()
        with pytest.raises(MlpipeError, match=f"at most {L}"):
            model(torch.zeros((1, L + 1), dtype=torch.int64))


def test_auto_picks_the_transformer_for_text_and_kinds_must_fit_the_data():
    assert text_spec()["arch"] == "transformer"
    assert text_spec()["args"]["vocab_size"] == VOCAB

    class Image:
        feature_shape, n_classes, kind = [1, 8, 8], 10, "image"

    class Table:
        feature_shape, n_classes, kind = [30], 2, "tabular"

    assert models.spec_for(ModelConfig(), Image)["arch"] == "cnn"
    assert models.spec_for(ModelConfig(), Table)["arch"] == "mlp"
    with pytest.raises(MlpipeError, match="transformer"):
        models.spec_for(ModelConfig(kind="transformer"), Image)
    with pytest.raises(MlpipeError, match="vit needs image data"):
        models.spec_for(ModelConfig(kind="vit"), Table)
    with pytest.raises(MlpipeError, match="does not fit text"):
        models.spec_for(ModelConfig(kind="mlp"), TextMeta)


def test_config_ranges_name_the_key():
    with pytest.raises(ConfigError, match=r"model: d_model \(96\) must be a multiple of heads \(5\)"):
        load_config(None, ["model.d_model=96", "model.heads=5"])
    with pytest.raises(ConfigError, match="tune.d_model 96 is not a multiple of tune.heads 5"):
        load_config(None, ["tune.d_model=[96]", "tune.heads=[2, 5]"])
    with pytest.raises(ConfigError, match="train.warmup"):
        load_config(None, ["train.warmup=1.5"])
    with pytest.raises(ConfigError, match="model.kind"):
        load_config(None, ["model.kind=rnn"])


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 9)])
def test_vit_takes_images_whose_sides_are_no_multiple_of_the_patch(shape):
    class Image:
        feature_shape, n_classes, kind = list(shape), 4, "image"

    spec = models.spec_for(ModelConfig(kind="vit", d_model=16, heads=2, layers=1, ff=32, patch_size=4), Image)
    model = models.build(spec).eval()
    patches = -(-shape[1] // 4) * -(-shape[2] // 4)
    assert model.pos.shape == (1, patches + 1, 16)
    assert model(torch.randn(3, *shape)).shape == (3, 4)


def test_vit_stem_is_validated_and_a_spec_without_one_builds_the_patch_stem():
    class Image:
        feature_shape, n_classes, kind = [3, 10, 9], 4, "image"

    with pytest.raises(ConfigError, match="model.stem"):
        load_config(None, ["model.stem=resnet"])
    x = torch.randn(2, 3, 10, 9)
    for stem in ("conv", "patch"):
        spec = models.spec_for(ModelConfig(kind="vit", d_model=16, heads=2, layers=1, ff=32, stem=stem), Image)
        assert spec["args"]["stem"] == stem
        model = models.build(spec).eval()
        assert model.pos.shape == (1, 3 * 3 + 1, 16) and model(x).shape == (2, 4)
        assert isinstance(model.stem, torch.nn.Identity) == (stem == "patch")
    del spec["args"]["stem"]  # a ViT saved before the key existed: the linear patch embedding it was trained with
    assert isinstance(models.build(spec).stem, torch.nn.Identity)


def test_vit_int8_onnx_keeps_a_dynamic_batch_axis(tmp_path):
    class Image:
        feature_shape, n_classes, kind = [3, 10, 9], 4, "image"

    spec = models.spec_for(ModelConfig(kind="vit", d_model=16, heads=2, layers=1, ff=32), Image)
    model = models.build(spec).eval()
    assert compress.int8_mode(CompressConfig(), spec) == "dynamic"
    path = compress.quantize_int8(model, spec, list("abcd"), None, tmp_path / "vit.onnx", "dynamic")
    X = np.random.default_rng(0).random((7, 3, 10, 9), dtype=np.float32)  # 7 rows: the export traced 2
    q = compress.load_model_file(path)[0]
    assert torch.allclose(train.predict_logits(q, X), train.predict_logits(model, X), atol=0.05)


def test_vit_learns_digits():
    from components import data

    cfg = load_config(
        None,
        [
            "model.kind=vit",
            "model.d_model=32",
            "model.heads=2",
            "model.layers=1",
            "model.ff=64",
            "model.patch_size=4",
            "model.dropout=0",
            "augment.enabled=false",
            "train.epochs=2",  # the default conv stem: 0.95 after 3 epochs (the linear patch embedding 0.70)
            "train.num_threads=1",
        ],
    )
    ds = data.ingest(cfg.data, cfg.seed)
    model, _ = train.Recipe(cfg, ds.X_train, ds.y_train, "image", ds.meta.value_range).fit(
        models.spec_for(cfg.model, ds.meta)
    )
    assert float(model.norm.std.min()) > 1.0  # standardized like the CNN: pixel values 0..16
    assert accuracy(model, ds.X_test, ds.y_test) > 0.5  # 10 classes: chance 0.1


# ---------------------------------------------------------------- the training loop


def test_integer_ids_reach_the_embedding_unchanged_under_bf16(trained):
    model, spec, X, y = trained
    seen, rows = [], {tuple(r) for r in X[:96].tolist()}
    m = models.build(spec)
    m.register_forward_pre_hook(lambda mod, i: seen.append((i[0].dtype, {tuple(r) for r in i[0].tolist()})))
    m.tok.register_forward_hook(lambda mod, i, o: seen.append((i[0].dtype, None)))
    cfg = TCFG.model_copy(update={"epochs": 1, "precision": "bf16", "bucket_batches": 0})
    hist = engine.fit(m, X[:64], y[:64], X[64:96], y[64:96], cfg, 0, progress=False)
    assert {dtype for dtype, _ in seen} == {torch.int32, torch.int64} and np.isfinite(hist.epochs[-1]["train_loss"])
    assert all(batch <= rows for dtype, batch in seen if dtype == torch.int32)  # ids as stored, rows intact
    assert train.as_input(X[:2]).dtype == torch.int32  # predict_logits: no float cast of ids
    assert train.as_input(X[:2].astype(np.float64)).dtype == torch.float32


def test_length_buckets_hold_rows_of_similar_length_and_every_row_once_per_epoch():
    X, _ = token_data(300)
    lengths = stream.token_lengths(stream.as_view(X))
    assert (lengths == (X != PAD_ID).sum(1)).all()
    assert stream.token_lengths(stream.as_view(X.astype(np.float32))) is None  # images, tables: no buckets
    plain = distributed.shard(300, 0, 1)
    bucket = (lengths, 32, 4)
    pos = distributed.shard(300, 0, 1, bucket=bucket)
    assert sorted(pos) == list(range(300))
    spread = lambda p: np.mean([np.ptp(lengths[p[i : i + 32]]) for i in range(0, 288, 32)])  # noqa: E731
    assert spread(pos) < 0.5 * spread(plain)
    # two ranks: global batch i is the union of each rank's batch i, as without buckets
    r0, r1 = (distributed.shard(300, 0, 1, rank, 2, bucket=bucket) for rank in (0, 1))
    for i in range(0, 144, 16):
        assert sorted([*r0[i : i + 16], *r1[i : i + 16]]) == sorted(pos[2 * i : 2 * i + 32])
    assert not np.array_equal(pos, distributed.shard(300, 0, 2, bucket=bucket))  # reshuffled per epoch
    xb = torch.from_numpy(X[np.argsort(lengths)[:5]])
    assert stream.trim(xb).shape[1] == lengths[np.argsort(lengths)[:5]].max()


def test_trimmed_length_sorted_evaluation_scores_the_same(trained):
    model, _, X, y = trained
    view, d = stream.as_view(X), distributed.single()
    plain = engine.evaluate(model, view, y, d)
    bucketed = engine.evaluate(model, view, y, d, lengths=stream.token_lengths(view))
    assert bucketed == pytest.approx(plain, abs=1e-5)


def test_training_with_and_without_buckets_learns_and_resume_is_exact(tmp_path):
    X, y = token_data()
    args = (X[:240], y[:240], X[240:], y[240:])
    results = {}
    for buckets in (0, 50):
        torch.manual_seed(0)
        m = models.build(text_spec())
        cfg = TCFG.model_copy(update={"bucket_batches": buckets})
        hist = engine.fit(m, *args, cfg, 0, progress=False)
        results[buckets] = (hist, m)
        assert hist.epochs[-1]["val_accuracy"] > 0.8, buckets
    # interrupted after epoch 2, resumed: the same weights as the uninterrupted bucketed run
    cfg = TCFG.model_copy(update={"bucket_batches": 50})

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(models.build(text_spec()), *args, cfg, 0, progress=False, checkpoint_dir=tmp_path, on_epoch=stop)
    assert [e.epoch for e in checkpoint.entries(tmp_path)] == [1]
    torch.manual_seed(0)
    m = models.build(text_spec())
    hist = engine.fit(m, *args, cfg, 0, progress=False, checkpoint_dir=tmp_path)
    full_hist, full = results[50]
    assert hist.resumed_from == 1 and hist.epochs == full_hist.epochs
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), full.state_dict().values()))


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "none"])
def test_warmup_raises_the_lr_linearly_over_its_fraction_of_the_steps(scheduler):
    cfg = TrainConfig(epochs=10, lr=0.1, scheduler=scheduler, warmup=0.2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = engine.make_scheduler(opt, cfg, 10)  # 100 steps, 20 of warm-up
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.02 and lrs[10] < lrs[19] and max(lrs) == pytest.approx(0.1, rel=0.02)
    assert int(np.argmax(lrs)) in range(18, 22)
    # no warm-up key: the schedules as before (onecycle's own 15%, cosine from the top, none: constant)
    plain = engine.make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), TrainConfig(), 10)
    assert isinstance(plain, torch.optim.lr_scheduler.OneCycleLR) and plain.total_steps == 400


# ---------------------------------------------------------------- tune


def test_tune_space_for_transformers_sets_valid_configs_and_the_default_is_its_first_trial():
    cfg = load_config(None, ["model.kind=transformer"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        o = tune.search_space(trial, cfg, "transformer")
        tcfg = tune.apply_overrides(cfg, o)
        assert tcfg.model.d_model in cfg.tune.d_model and tcfg.model.heads in cfg.tune.heads
        assert tcfg.model.ff // tcfg.model.d_model in cfg.tune.ff_mult and 0 <= tcfg.train.warmup <= 0.2
        assert {"model.layers", "augment.token_mask"} <= set(o) and "model.hidden" not in o
        study.tell(trial, 0.0)
    p = tune.default_params(cfg, "transformer")
    assert p["warmup"] == 0.15 and p["ff_mult"] == 2 and p["d_model"] == 128  # onecycle's own warm-up
    # the default config as a trial reproduces the config as written
    fixed = optuna.trial.FixedTrial(p)
    again = tune.apply_overrides(cfg, tune.search_space(fixed, cfg, "transformer"))
    assert again.model == cfg.model and again.train.lr == cfg.train.lr
    assert tune.default_params(load_config(None, ["model.kind=transformer", "model.ff=200"]), "transformer") is None


# ---------------------------------------------------------------- compress


def test_int8_onnx_takes_ids_masks_padding_and_agrees_with_fp32(trained, tmp_path):
    model, spec, X, y = trained
    mode = compress.int8_mode(CompressConfig(int8_mode="static"), spec)
    assert mode == "dynamic"  # token ids: never static
    path = compress.quantize_int8(model, spec, list("abc"), X[:8], tmp_path / "int8.onnx", mode)
    q, q_spec, _ = compress.load_model_file(path)
    assert q_spec == spec and q.dtype == np.int64
    types = compress.onnx_weight_types(path)
    assert sum(t == "INT8" for t in types.values()) >= 2 * 4  # qkv, proj, fc1, fc2 of both blocks
    test = X[300:]
    agree = (train.predict_logits(q, test).argmax(1) == train.predict_logits(model, test).argmax(1)).float().mean()
    assert agree >= 0.95
    fp32 = compress.export_onnx(model, spec, list("abc"), tmp_path / "fp32.onnx")
    assert fp32.stat().st_size > 1.5 * path.stat().st_size
    f = compress.load_model_file(fp32)[0]
    with torch.no_grad():  # padding masked inside the graph: extra PAD columns change nothing
        short = torch.from_numpy(X[300:310, :16].astype(np.int64))
        long = torch.cat([short, torch.zeros((10, L - 16), dtype=torch.int64)], 1)
        assert torch.allclose(f(short), f(long), atol=1e-5) and torch.allclose(f(long), model(long), atol=1e-5)
        # int8: the same up to the activation ranges, which dynamic quantization takes per call over all positions
        assert torch.allclose(q(short), q(long), atol=1e-2)


def test_every_compress_variant_works_on_a_tiny_transformer(trained, tmp_path):
    model, spec, X, y = trained
    cfg = CompressConfig(
        keep=0.5, step_epochs=1, prune_steps=1, structured_epochs=1, student_epochs=2, student_drop_blocks=1
    )
    fit = compress.fine_tuner(X[:240], y[:240], X[240:300], y[240:300], 0, None, cfg)
    tcfg = TCFG.model_copy(update={"lr": 3e-3, "scheduler": "cosine", "keep": "best"})
    made = {v["variant"]: v for v in compress.build_variants(model, spec, list("abc"), X[:8], cfg, fit, tcfg, tmp_path)}
    assert set(made) == {"int8", "pruned", "structured", "distilled"}
    base = accuracy(model, X[300:], y[300:])
    for name, v in made.items():
        loaded, vspec, _ = compress.load_model_file(v["file"])
        assert accuracy(loaded, X[300:], y[300:]) >= base - 0.25, name
        assert v["macs"] > 0
    s = models.load(made["structured"]["file"])[1]["args"]
    assert s["block_heads"] == [1, 1] and s["block_ff"] == [16, 16]
    d = models.load(made["distilled"]["file"])[1]["args"]
    assert d["layers"] == 1 and d["block_heads"] == [1]
    assert made["structured"]["macs"] < made["pruned"]["macs"] == made["int8"]["macs"]
    assert "heads/FFN units kept 0.5" in made["structured"]["method"]


def test_structured_shrink_keeps_the_most_important_heads_exactly():
    torch.manual_seed(0)
    spec = text_spec()
    model = models.build(spec).eval()
    from components import transformer

    with torch.no_grad():  # head 1 of every block made negligible: keeping 1 of 2 heads keeps head 0
        for b in model.blocks:
            b.proj.weight[:, 8:] *= 1e-6
    small = transformer.shrink(model, spec, transformer.narrow_spec(spec, 0.5), models.build)
    for old, new in zip(model.blocks, small.blocks):
        assert torch.equal(new.qkv.weight, torch.cat([old.qkv.weight[i * 16 : i * 16 + 8] for i in range(3)]))
    X, _ = token_data(20)
    x = torch.from_numpy(X)
    # the pruned heads carried almost nothing: with the FFN kept whole the logits barely move
    whole_ffn = transformer.narrow_spec(spec, 0.5)
    whole_ffn["args"]["block_ff"] = [32, 32]
    same = transformer.shrink(model, spec, whole_ffn, models.build)
    with torch.no_grad():
        assert torch.allclose(same(x), model(x), atol=1e-4)


def test_config_tree_accepts_text_model_defaults():
    cfg = Config.model_validate({"model": {"kind": "transformer", "pooling": "mean"}, "train": {"warmup": 0.1}})
    assert cfg.model.pooling == "mean" and cfg.train.bucket_batches == 50
