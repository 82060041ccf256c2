"""Compression figures for BENCHMARKS.md (issue 5).

Models: the default digits CNN (8x8, channels 32/64, head 128), the same CNN on digits upscaled
to 28x28 (int8 gains need work per call), and a Linear-heavy MLP (64 -> 512 -> 512 -> 10) for
dynamic int8. For each: fp32 (torch eager), ONNX Runtime fp32, the pipeline's variants (ONNX
Runtime int8, unstructured pruning, structured pruning) and the other int8 paths (torch.ao FX /
quantize_dynamic, deprecated; torchao PT2E + X86InductorQuantizer + torch.compile; torchao
quantize_ for Linear). All timed in this one process, one thread, median and IQR.

    .venv/bin/python benchmarks/bench_compress.py [--quick] [--no-torchao] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from components import compress, data, measure, models, train
from components.augment import build_augment
from components.config import AugmentConfig, CompressConfig, DataConfig, ModelConfig, TrainConfig
from components.evaluate import classification_metrics, softmax

warnings.filterwarnings("ignore")


def digits(size: int):
    ds = data.ingest(DataConfig(), 0)
    if size != 8:
        up = lambda X: torch.nn.functional.interpolate(torch.as_tensor(X), size=(size, size), mode="bilinear",
                                                       align_corners=False).numpy()
        ds.X_train, ds.X_test = up(ds.X_train), up(ds.X_test)
        ds.meta.feature_shape = [1, size, size]
    return ds


def tabular(ds):
    """Digits as 64 features: the MLP's standardization is per feature."""
    ds.X_train, ds.X_test = ds.X_train.reshape(len(ds.X_train), -1), ds.X_test.reshape(len(ds.X_test), -1)
    ds.meta.kind, ds.meta.feature_shape = "tabular", [64]
    return ds


def accuracy(model, X, y) -> float:
    return classification_metrics(y, softmax(train.predict_logits(model, X).numpy()))["accuracy"]


def timed(model, X, reps):
    x = torch.as_tensor(X)
    big = x[torch.arange(256) % len(x)]
    b1 = measure.latency_ms(model, x[:1], reps)
    b256 = measure.latency_ms(model, big, max(3, reps // 5))
    return {"b1_ms": b1[0], "b1_iqr": b1[1], "b256_ms": b256[0], "b256_iqr": b256[1]}


def row(name, model, X, y, reps, size=None, macs=None, sparsity=None):
    r = {"name": name, "accuracy": accuracy(model, X, y), **timed(model, X, reps)}
    r.update({k: v for k, v in {"size_bytes": size, "macs": macs, "sparsity": sparsity}.items() if v is not None})
    return r


def torch_ao_int8(model, X_calib, kind):
    """Deprecated torch.ao path: FX static (x86 qconfig) for conv nets, quantize_dynamic for Linear."""
    import copy

    from torch.ao import quantization as q

    m = copy.deepcopy(model).eval()
    if kind == "dynamic":
        return q.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    ex = (torch.as_tensor(X_calib[:2]),)
    p = prepare_fx(m, q.get_default_qconfig_mapping("x86"), ex)
    with torch.no_grad():
        for i in range(0, len(X_calib), 64):
            p(torch.as_tensor(X_calib[i : i + 64]))
    return convert_fx(p)


class Compiled(torch.nn.Module):
    """torch.compile output, re-compiled per batch shape (static shapes, as the quantizer needs)."""

    def __init__(self, gm):
        super().__init__()
        self.gm, self.fns = gm, {}

    def train(self, mode: bool = True):  # an exported graph refuses .eval(); it is already in eval mode
        return self

    def forward(self, x):
        key = tuple(x.shape)
        if key not in self.fns:
            self.fns[key] = torch.compile(self.gm)
        return self.fns[key](x)


def torchao_int8(model, X_calib, kind):
    """torchao: PT2E static with X86InductorQuantizer then torch.compile (conv nets);
    quantize_(Int8DynamicActivationInt8WeightConfig) then torch.compile (Linear)."""
    import copy

    m = copy.deepcopy(model).eval()
    if kind == "dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        return Compiled(m)
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    gm = torch.export.export(m, (torch.as_tensor(X_calib[:2]),), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=1024)},)).module()
    p = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(0, len(X_calib), 64):
            p(torch.as_tensor(X_calib[i : i + 64]))
    return Compiled(convert_pt2e(p))


def bench_model(label, ds, mcfg, epochs, ccfg, reps, tmp, with_torchao):
    spec = models.model_args(mcfg, ds.meta.feature_shape, ds.meta.n_classes, ds.meta.kind)
    tr, va = train.val_split(ds.y_train, 0.1, 0)
    aug = build_augment(AugmentConfig(), ds.meta.kind, ds.X_train[tr], ds.meta.value_range)
    fit = lambda m, c: train.fit(m, ds.X_train[tr], ds.y_train[tr], ds.X_train[va], ds.y_train[va], c, 0, augment=aug, progress=False)
    tcfg = TrainConfig(epochs=epochs, num_threads=2)
    train.seed_everything(0)
    torch.set_num_threads(2)
    t0 = time.time()
    model = models.build(spec)
    fit(model, tcfg)
    model.eval()
    t_train = time.time() - t0
    X, y, in_shape = ds.X_test, ds.y_test, spec["args"]["in_shape"]
    calib = ds.X_train[tr][: ccfg.calibration_samples]
    ft = tcfg.model_copy(update={"lr": ccfg.finetune_lr, "scheduler": "cosine", "patience": 10**6})
    t0 = time.time()
    pruned = compress.prune_unstructured(model, ccfg, fit, ft).eval()
    t_prune = time.time() - t0
    t0 = time.time()
    small, small_spec = compress.prune_structured(model, spec, ccfg, fit, ft)
    t_struct = time.time() - t0
    mode = compress.int8_mode(ccfg, spec)
    q_path = compress.quantize_int8(model, spec, ds.meta.classes, calib, tmp / f"{label}-int8.onnx", mode)
    f_path = compress.export_onnx(model, spec, ds.meta.classes, tmp / f"{label}-fp32.onnx")
    for name, m, s in [("fp32", model, spec), ("pruned", pruned, spec), ("structured", small, small_spec)]:
        models.save(m, s, ds.meta.classes, tmp / f"{label}-{name}.pt")

    torch.set_num_threads(1)  # all timing on one thread
    size = lambda p: os.path.getsize(p)
    macs = measure.count_macs(model, in_shape)
    rows = [row("fp32 torch eager", model, X, y, reps, size(tmp / f"{label}-fp32.pt"), macs, 0.0),
            row("fp32 onnxruntime", compress.OnnxModule(f_path, 1), X, y, reps, size(f_path)),
            row(f"int8 onnxruntime {mode} (pipeline)", compress.OnnxModule(q_path, 1), X, y, reps, size(q_path), macs)]
    ao = torch_ao_int8(model, calib, mode)
    ao_file = tmp / f"{label}-ao.pt"
    torch.save(ao.state_dict(), ao_file)
    rows.append(row(f"int8 torch.ao {'FX static' if mode == 'static' else 'quantize_dynamic'} (deprecated)", ao, X, y, reps, size(ao_file)))
    if with_torchao:
        t0 = time.time()
        try:
            tao = torchao_int8(model, calib, mode)
            r = row(f"int8 torchao {'PT2E x86 inductor' if mode == 'static' else 'Int8DynAct-Int8Weight'} + torch.compile", tao, X, y, reps)
            r["compile_and_first_calls_s"] = time.time() - t0
            rows.append(r)
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            rows.append({"name": "int8 torchao", "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})
    st = measure.weight_stats(pruned)
    rows.append(row("pruned (unstructured, pipeline)", pruned, X, y, reps, size(tmp / f"{label}-pruned.pt"),
                    macs, st["sparsity"]) | {"gzip_bytes": measure.file_sizes(tmp / f"{label}-pruned.pt")[1],
                                             "nonzeros": st["nonzeros"], "params": st["params"]})
    rows.append(row("structured (pipeline)", small, X, y, reps, size(tmp / f"{label}-structured.pt"), measure.count_macs(small, in_shape)))
    base = rows[0]
    for r in rows:
        if "error" not in r:
            r["drop_points"] = 100 * (base["accuracy"] - r["accuracy"])
            r["speedup_b1"] = base["b1_ms"] / r["b1_ms"]
            r["speedup_b256"] = base["b256_ms"] / r["b256_ms"]
            if "size_bytes" in r:
                r["size_ratio"] = base["size_bytes"] / r["size_bytes"]
    return {"model": label, "spec": spec, "train_s": t_train, "prune_s": t_prune, "structured_s": t_struct,
            "fp32_gzip_bytes": measure.file_sizes(tmp / f"{label}-fp32.pt")[1], "fp32_params": measure.weight_stats(model)["params"],
            "rows": rows}


def print_table(res):
    print(f"\n## {res['model']}  (train {res['train_s']:.0f}s, prune {res['prune_s']:.0f}s, structured {res['structured_s']:.0f}s)")
    print("| variant | acc | drop (pts) | b1 ms (IQR) | x b1 | b256 ms (IQR) | x b256 | size B | x size | MACs | sparsity |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error']} |")
            continue
        g = lambda k, f: (f.format(r[k]) if k in r else "")
        print(f"| {r['name']} | {r['accuracy']:.4f} | {r['drop_points']:+.2f} | {r['b1_ms']:.3f} ({r['b1_iqr']:.3f}) | {r['speedup_b1']:.2f} | "
              f"{r['b256_ms']:.2f} ({r['b256_iqr']:.2f}) | {r['speedup_b256']:.2f} | {g('size_bytes', '{:,}')} | {g('size_ratio', '{:.2f}')} | "
              f"{g('macs', '{:,}')} | {g('sparsity', '{:.3f}')} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer epochs and repeats (a smoke run)")
    ap.add_argument("--no-torchao", action="store_true", help="skip the torchao + torch.compile path (slow to compile)")
    ap.add_argument("--only", default="digits8,digits28,mlp", help="comma list of models")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    print(f"loadavg at start: {open('/proc/loadavg').read().strip()}; cores: {os.cpu_count()}; torch {torch.__version__}")
    reps = 10 if a.quick else 50
    ccfg = CompressConfig(step_epochs=1 if a.quick else 2, structured_epochs=2 if a.quick else 6)
    plan = {
        "digits8": lambda: ("digits 8x8 CNN (default)", digits(8), ModelConfig(), 5 if a.quick else 40, ccfg),
        "digits28": lambda: ("digits 28x28 CNN", digits(28), ModelConfig(), 2 if a.quick else 8,
                             ccfg.model_copy(update={"step_epochs": 1, "structured_epochs": 1 if a.quick else 3})),
        "mlp": lambda: ("digits MLP 512x512 (Linear-heavy)", tabular(digits(8)), ModelConfig(kind="mlp", hidden=(512, 512)), 5 if a.quick else 40, ccfg),
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in a.only.split(","):
            label, ds, mcfg, epochs, c = plan[key]()
            res = bench_model(key, ds, mcfg, epochs, c, reps, Path(tmp), not a.no_torchao)
            res["model"] = label
            print_table(res)
            results.append(res)
    print(f"\nloadavg at end: {open('/proc/loadavg').read().strip()}")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
