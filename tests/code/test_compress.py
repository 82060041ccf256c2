"""Compression variants and their measurements, on tiny models and literal data."""

import copy
import gzip
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from components import compress, measure, models
from components.config import CompressConfig, TrainConfig, load_config
from components.engine import fit as train_fit
from components.errors import ConfigError, MlpipeError

MLP_SPEC = {"arch": "mlp", "args": {"in_shape": [16], "n_classes": 3, "hidden": [32], "dropout": 0.0}}
CNN_SPEC = {
    "arch": "cnn",
    "args": {"in_shape": [1, 8, 8], "n_classes": 3, "hidden": [16], "dropout": 0.0, "channels": [8, 16]},
}


def blobs(n=120, shape=(16,), seed=0):
    """Three classes, each a different mean pattern plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = rng.normal(size=(3, int(np.prod(shape)))) * 2
    X = (centers[y] + rng.normal(size=(n, centers.shape[1]))).reshape(n, *shape).astype(np.float32)
    return X, y.astype(np.int64)


_TRAINED = {}  # (spec, data, epochs) -> model: training is seeded, so tests share it (each gets a copy)


def trained(spec, X, y, epochs=5):
    key = (json.dumps(spec, sort_keys=True), X.tobytes(), y.tobytes(), epochs)
    if key not in _TRAINED:
        torch.manual_seed(0)
        m = models.build(spec)
        train_fit(m, X, y, X[:30], y[:30], TrainConfig(epochs=epochs, batch_size=32, patience=100), 0, progress=False)
        _TRAINED[key] = m.eval()
    return copy.deepcopy(_TRAINED[key])


def real_fit(X, y):
    return lambda m, cfg: train_fit(m, X, y, X[:30], y[:30], cfg, 0, progress=False)


def test_schedule_rises_to_target():
    s = compress.sparsity_schedule(0.9, 3)
    assert s == sorted(s) and s[-1] == pytest.approx(0.9) and s[0] > 0.9 / 3


def test_unstructured_pruning_is_measured_from_weights_and_permanent(tmp_path):
    X, y = blobs()
    m = trained(MLP_SPEC, X, y)
    cfg = CompressConfig(sparsity=0.8, prune_steps=2, step_epochs=1)
    p = compress.prune_unstructured(m, cfg, real_fit(X, y), TrainConfig(epochs=1, batch_size=32, patience=100))
    state = p.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # masks folded in
    w = [state[k] for k in state if k.endswith("weight")]
    zeros, total = sum(int((t == 0).sum()) for t in w), sum(t.numel() for t in w)
    assert zeros == math.ceil(0.8 * total)  # global: exact count across layers, not per layer; never under the target
    assert measure.weight_stats(p)["sparsity"] == pytest.approx(zeros / total)
    models.save(p, MLP_SPEC, ["a", "b", "c"], tmp_path / "p.pt")
    back, _, _ = models.load(tmp_path / "p.pt")
    assert measure.weight_stats(back)["nonzeros"] == measure.weight_stats(p)["nonzeros"]
    assert (m.net[1].weight != 0).all()  # the source model is untouched


def _silence_half(model):
    """Zero the second half of every hidden unit so that it outputs relu(0) = 0."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                h = mod.weight.shape[0] // 2
                mod.weight[h:] = 0
                mod.bias[h:] = 0
        lin = [mod for mod in model.modules() if isinstance(mod, nn.Linear)][:-1]
        for mod in lin:
            h = mod.weight.shape[0] // 2
            mod.weight[h:] = 0
            mod.bias[h:] = 0


@pytest.mark.parametrize("spec", [MLP_SPEC, CNN_SPEC], ids=["mlp", "cnn"])
def test_structured_shrink_keeps_the_function_of_the_kept_units(spec):
    X, y = blobs(shape=tuple(spec["args"]["in_shape"]))
    m = trained(spec, X, y, epochs=2)
    _silence_half(m)  # the removed half then carries nothing: the narrow model must match exactly
    small, small_spec = compress.shrink(m, spec, 0.5)
    x = torch.as_tensor(X[:20])
    torch.testing.assert_close(small(x), m(x), rtol=1e-4, atol=1e-4)
    assert small_spec["args"]["hidden"] == [w // 2 for w in spec["args"]["hidden"]]
    in_shape = spec["args"]["in_shape"]
    if spec["arch"] == "cnn":
        assert measure.count_macs(m, in_shape) / measure.count_macs(small, in_shape) > 3.0  # convs: in and out halved
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("spec", [CNN_SPEC, MLP_SPEC], ids=["cnn", "mlp"])
def test_inference_copy_folds_batchnorm_drops_dropout_and_predicts_the_same(tmp_path, spec):
    spec = copy.deepcopy(spec)
    spec["args"]["dropout"] = 0.3
    X, y = blobs(shape=tuple(spec["args"]["in_shape"]))
    m = trained(spec, X, y, epochs=3)  # BatchNorm running statistics away from their initial 0/1
    served = models.for_inference(m)
    kinds = {type(layer) for layer in served.modules()}
    assert nn.BatchNorm2d not in kinds and nn.Dropout not in kinds
    assert not any(p.requires_grad for p in served.parameters())
    if spec["arch"] == "cnn":
        convs = [layer for layer in served.modules() if isinstance(layer, nn.Conv2d)]
        assert len(convs) == 4 and all(c.bias is not None for c in convs)  # each BatchNorm became its conv's bias
    x = torch.as_tensor(X)
    with torch.no_grad():
        torch.testing.assert_close(served(x), m.eval()(x), rtol=1e-4, atol=1e-4)
    assert nn.Dropout in {type(layer) for layer in m.modules()}  # the original is left as it was
    models.save(m, spec, ["a", "b", "c"], tmp_path / "m.pt")
    loaded = compress.load_model_file(tmp_path / "m.pt")[0]  # what measurement and serving load
    assert nn.Dropout not in {type(layer) for layer in loaded.modules()}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), served(x))


def test_distillation_learns_the_teachers_answers_and_alpha_zero_the_labels():
    X, y = blobs()
    teacher = trained(MLP_SPEC, X, y)
    wrong = (y + 1) % 3  # labels that contradict the teacher
    with torch.no_grad():
        said = teacher(torch.as_tensor(X)).argmax(1).numpy()
    for alpha, val_y, expect in [(1.0, said[:30], said), (0.0, wrong[:30], wrong)]:
        torch.manual_seed(1)
        student = models.build(MLP_SPEC)
        student.norm.load_state_dict(teacher.norm.state_dict())
        compress.distill(
            student,
            teacher,
            X,
            wrong,
            X[:30],
            val_y,
            TrainConfig(epochs=8, batch_size=32, lr=1e-2),
            0,
            alpha=alpha,
            temperature=2.0,
        )
        with torch.no_grad():
            assert (student.eval()(torch.as_tensor(X)).argmax(1).numpy() == expect).mean() > 0.9, alpha


def test_distilled_student_is_shallower_and_starts_from_the_kept_channels():
    m = models.build(CNN_SPEC).eval()
    cfg = CompressConfig(keep=0.5, student_drop_blocks=1, student_epochs=3)
    calls = []
    student, s_spec = compress.distill_student(
        m, CNN_SPEC, cfg, lambda model, tcfg, teacher=None: calls.append((tcfg.epochs, teacher)), TrainConfig()
    )
    assert (
        s_spec["args"]["channels"] == [4]
        and s_spec["args"]["hidden"] == [8]
        and CNN_SPEC["args"]["channels"] == [8, 16]
    )
    assert calls == [(3, m)]  # trained once, on the fp32 model's soft targets
    small, _ = compress.shrink(m, CNN_SPEC, 0.5)
    kept, own = small.state_dict(), student.state_dict()
    assert torch.equal(own["features.0.weight"], kept["features.0.weight"]) and torch.equal(
        own["norm.std"], kept["norm.std"]
    )
    assert (
        own["head.2.weight"].shape[1] == 4 * 4 * 4 != kept["head.2.weight"].shape[1]
    )  # the head after the dropped block is new
    assert measure.count_macs(student, (1, 8, 8)) < measure.count_macs(small, (1, 8, 8))


def test_every_variant_is_built_through_the_real_fine_tuner_and_handed_back_on_the_cpu(tmp_path):
    """The compress stage's variant step on a tiny CNN. On a CUDA machine the fine-tunes train on the
    GPU; every variant must still come back on the CPU, where it is counted, saved and measured."""
    X, y = blobs(shape=(1, 8, 8))
    m = trained(CNN_SPEC, X, y)
    cfg = CompressConfig(
        variants=["pruned", "structured", "distilled", "int8"],
        prune_steps=1,
        step_epochs=1,
        structured_epochs=1,
        student_epochs=1,
        calibration_samples=32,
    )
    fit = compress.fine_tuner(X, y, X[:30], y[:30], 0, None, cfg)
    made = compress.build_variants(m, CNN_SPEC, ["a", "b", "c"], X[:32], cfg, fit, TrainConfig(batch_size=32), tmp_path)
    assert [v["variant"] for v in made] == list(cfg.variants)
    for v in made:
        assert v["file"].exists() and v["macs"] > 0
        if v["model"] is not None:
            assert {p.device.type for p in v["model"].parameters()} == {"cpu"}, v["variant"]
            loaded, _, _ = compress.load_model_file(v["file"])
            assert loaded(torch.as_tensor(X[:4])).shape == (4, 3)
    assert {p.device.type for p in m.parameters()} == {"cpu"}  # the fp32 teacher too


def test_count_macs_by_hand():
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 7))
    assert measure.count_macs(conv, (2, 5, 5)) == 4 * 5 * 5 * 2 * 3 * 3 + 100 * 7


@pytest.mark.parametrize("spec,mode", [(CNN_SPEC, "static"), (MLP_SPEC, "dynamic")], ids=["cnn-static", "mlp-dynamic"])
def test_int8_layers_are_int8_and_predict_like_fp32(tmp_path, spec, mode):
    X, y = blobs(shape=tuple(spec["args"]["in_shape"]))
    m = trained(spec, X, y, epochs=2)  # the model the structured test trains too
    path = compress.quantize_int8(m, spec, ["a", "b", "c"], X[:64], tmp_path / "q.onnx", mode)
    types = compress.onnx_weight_types(path)
    assert types and set(types.values()) == {"INT8"}, types
    q, spec_back, classes = compress.load_model_file(path, threads=1)
    assert spec_back == spec and classes == ["a", "b", "c"]
    with torch.no_grad():
        agree = (q(torch.as_tensor(X)).argmax(1) == m(torch.as_tensor(X)).argmax(1)).float().mean().item()
    assert agree > 0.9  # (size: a model this small is dominated by per-channel scales; see the next test)


def _optimized_ops(path, out):
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(out), 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # fusions, no CPU-specific layout
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sorted(n.op_type for n in onnx.load(str(out)).graph.node)


def test_compacted_int8_is_smaller_and_runs_the_same_fused_int8_graph(tmp_path):
    import onnx

    X, _ = blobs(shape=(1, 8, 8))
    m = models.build(CNN_SPEC).eval()  # untrained: the file's bytes and the graph do not depend on training
    full = compress.quantize_int8(m, CNN_SPEC, ["a", "b", "c"], X[:64], tmp_path / "full.onnx", "static", compact=False)
    small = compress.quantize_int8(m, CNN_SPEC, ["a", "b", "c"], X[:64], tmp_path / "small.onnx", "static")
    g = onnx.load(str(small)).graph
    assert not g.value_info and not any(n.name for n in g.node)
    assert max(len(t.name) for t in g.initializer) <= 2 and [v.name for v in g.input] == ["x"]
    assert os.path.getsize(full) - os.path.getsize(small) > 2000
    ops = _optimized_ops(small, tmp_path / "small.opt.onnx")
    assert (
        ops == _optimized_ops(full, tmp_path / "full.opt.onnx") and ops.count("QLinearConv") == 4 and "Conv" not in ops
    )
    a, b = compress.load_model_file(full, 1)[0], compress.load_model_file(small, 1)[0]
    x = torch.as_tensor(X)
    assert torch.equal(a(x), b(x))


def test_int8_is_much_smaller_for_a_weight_heavy_model(tmp_path):
    spec = {"arch": "mlp", "args": {"in_shape": [64], "n_classes": 3, "hidden": [256, 256], "dropout": 0.0}}
    X, y = blobs(shape=(64,))
    m = models.build(spec).eval()
    q = compress.quantize_int8(m, spec, ["a", "b", "c"], X, tmp_path / "q.onnx", "dynamic")
    models.save(m, spec, ["a", "b", "c"], tmp_path / "m.pt")
    assert os.path.getsize(tmp_path / "m.pt") / os.path.getsize(q) > 3.5


def test_foreign_onnx_is_refused(tmp_path):
    import onnx

    m = models.build(MLP_SPEC).eval()
    torch.onnx.export(m, (torch.zeros(1, 16),), str(tmp_path / "x.onnx"), dynamo=False)
    with pytest.raises(MlpipeError, match="x.onnx.*mlpipe.onnx/1"):
        compress.load_model_file(tmp_path / "x.onnx")
    assert onnx.load(str(tmp_path / "x.onnx")).graph.node


def test_measure_reads_size_from_the_file_and_accuracy_from_predictions(tmp_path):
    X, y = blobs()
    m = trained(MLP_SPEC, X, y)
    models.save(m, MLP_SPEC, ["a", "b", "c"], tmp_path / "m.pt")
    batches = []  # rows per call: which batch sizes were timed (comparing the two times is flaky under load)

    def load(threads):
        model = compress.load_model_file(tmp_path / "m.pt", threads)[0]
        model.register_forward_pre_hook(lambda mod, inp: batches.append(len(inp[0])))
        return model

    row = measure.measure("fp32", tmp_path / "m.pt", load, "t", X, y, 0, measure.weight_stats(m), threads=1, repeats=3)
    data = (tmp_path / "m.pt").read_bytes()
    assert row.size_bytes == len(data) and row.gzip_bytes == len(gzip.compress(data, compresslevel=9, mtime=0))
    with torch.no_grad():
        acc = (m(torch.as_tensor(X)).argmax(1).numpy() == y).mean()
    assert row.accuracy == pytest.approx(acc)
    assert row.latency_b1_ms > 0 and row.latency_b256_ms > 0
    assert batches.count(1) == 5 + 3 and batches.count(256) >= 5 + 3  # warm-up + timed calls at each size


def _row(variant, acc, size, lat, accepted=True):
    return {
        "variant": variant,
        "accuracy": acc,
        "size_bytes": size,
        "latency_b1_ms": lat,
        "latency_b256_ms": lat * 50,
        "accepted": accepted,
    }


TABLE = [
    _row("fp32", 0.990, 400_000, 0.20),
    _row("int8", 0.985, 110_000, 0.05),
    _row("pruned", 0.991, 400_000, 0.21),
    _row("structured", 0.960, 90_000, 0.03, accepted=False),
]


@pytest.mark.parametrize(
    "objective,variant", [("accuracy", "pruned"), ("smallest_within_budget", "int8"), ("fastest_within_budget", "int8")]
)
def test_choose_on_a_hand_built_table(objective, variant):
    best, why = measure.choose(TABLE, objective)
    assert best["variant"] == variant and variant in why and "structured" not in why.split("among")[1]


def test_choose_prefers_fp32_on_an_accuracy_tie():
    rows = [_row("int8", 0.99, 100, 0.1), _row("fp32", 0.99, 400, 0.2)]
    assert measure.choose(rows, "accuracy")[0]["variant"] == "fp32"


def test_budget_rejects_beyond_the_drop():
    rows = [
        measure.Row(v, "f", "m", acc, acc, 0.0, 1, 1, 1, 1, 0.0, 1, 1.0, 0.0, 1.0, 0.0, 0.0)
        for v, acc in [("fp32", 0.95), ("int8", 0.945), ("pruned", 0.93)]
    ]
    out = {r.variant: r for r in measure.apply_budget(rows, 0.01)}
    assert out["int8"].accepted and not out["pruned"].accepted
    assert out["pruned"].accuracy_drop == pytest.approx(0.02) and "over budget" in out["pruned"].reason


def test_config_names_the_key():
    with pytest.raises(ConfigError, match="compress.max_accuracy_drop"):
        load_config(None, ["compress.max_accuracy_drop=2"])
    with pytest.raises(ConfigError, match="promote.objective"):
        load_config(None, ["promote.objective=cheapest"])
