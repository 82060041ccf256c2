"""Compression figures for BENCHMARKS.md (issue 5).

Models: the default digits CNN (8x8, channels 32/64, head 128), the same CNN on digits upscaled
to 28x28 (int8 gains need work per call), and a Linear-heavy MLP (64 -> 512 -> 512 -> 10) for
dynamic int8. For each: fp32 (torch eager and ONNX Runtime), the pipeline's variants (ONNX Runtime
int8, unstructured pruning, structured pruning, distilled student; the last two also exported to ONNX
Runtime), a timing-only "floor" (the fp32 layers at width 1: what the layers cost with ~no compute),
and the other int8 paths (torch.ao FX / quantize_dynamic, deprecated; torchao PT2E +
X86InductorQuantizer + torch.compile; torchao quantize_ for Linear).

Torch-eager rows time what the pipeline serves (models.for_inference: BatchNorm folded into the
convolutions, Dropout dropped), in inference mode; one extra row times the fp32 model in its training
form for comparison.

Accuracy: every variant is rebuilt from an fp32 model trained with each of --seeds seeds; drops are
against that seed's fp32 model (mean and range over seeds). Timing: the first seed's models, one
thread, interleaved (`measure.latency_rounds`: each round times every model in turn, median of
--repeats calls at batch 1 and a fifth of that at batch 256); a speedup is taken round by round
against the fp32 model in the same runtime (torch eager, or ONNX Runtime) and against fp32 torch eager.

    python -m benchmarks.compress [--quick] [--no-torchao] [--only digits8,digits28,mlp] [--seeds N] [--out FILE.json]
    python -m benchmarks.compress --smoke     (the 8x8 CNN, 1 seed, 1-epoch trainings, 1 round; no torchao)

The torchao rows need the `bench` extra (`pip install -e .[bench]`); without torchao they are
left out with a note.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from benchmarks.common import SMOKE_HELP, loadavg, scratch, utc_now
from components import compress, data, measure, models, train
from components.augment import build_augment
from components.config import AugmentConfig, CompressConfig, DataConfig, ModelConfig, TrainConfig
from components.evaluate import classification_metrics, softmax

warnings.filterwarnings("ignore")


def digits(size: int):
    ds = data.ingest(DataConfig(), 0)
    if size != 8:
        up = lambda X: torch.nn.functional.interpolate(
            torch.as_tensor(X), size=(size, size), mode="bilinear", align_corners=False
        ).numpy()
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


def torch_ao_int8(model, X_calib, kind):
    """Deprecated torch.ao path: FX static (x86 qconfig) for conv nets, quantize_dynamic for Linear."""
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
    m = copy.deepcopy(model).eval()
    if kind == "dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        return Compiled(m)
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    gm = torch.export.export(
        m, (torch.as_tensor(X_calib[:2]),), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=1024)},)
    ).module()
    p = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(0, len(X_calib), 64):
            p(torch.as_tensor(X_calib[i : i + 64]))
    return Compiled(convert_pt2e(p))


def build(label, ds, mcfg, epochs, ccfg, seed, tmp: Path, extras: bool) -> tuple[dict, dict]:
    """Train fp32 with `seed` and make every variant -> ({row name: entry}, info). An entry holds the
    model, its runtime ("torch" | "ort" | "compiled") and, where it has one, its file size, MACs, sparsity."""
    spec = models.spec_for(mcfg, ds.meta)
    tr, va = train.val_split(ds.y_train, 0.1, 0)
    aug = build_augment(AugmentConfig(), ds.meta.kind, ds.X_train[tr], ds.meta.value_range)
    fit = compress.fine_tuner(ds.X_train[tr], ds.y_train[tr], ds.X_train[va], ds.y_train[va], seed, aug, ccfg)
    tcfg = TrainConfig(
        epochs=epochs, num_threads=2, keep="best"
    )  # the fp32 model as in round 4 (train.keep's default was best then)
    torch.set_num_threads(2)
    train.seed_everything(seed)
    t0 = time.time()
    model = models.build(spec)
    fit(model, tcfg)
    model.eval()
    info = {"train_s": time.time() - t0}
    in_shape, classes, p = spec["args"]["in_shape"], ds.meta.classes, lambda name: tmp / f"{label}-{seed}-{name}"
    calib = ds.X_train[tr][: ccfg.calibration_samples]
    ft = tcfg.model_copy(update={"lr": ccfg.finetune_lr, "scheduler": "cosine", "patience": 10**6})
    t0 = time.time()
    pruned = compress.prune_unstructured(model, ccfg, fit, ft).eval()
    info["prune_s"], t0 = time.time() - t0, time.time()
    small, small_spec = compress.prune_structured(model, spec, ccfg, fit, ft)
    info["structured_s"] = time.time() - t0
    other = ccfg.model_copy(
        update={"structured_teacher": not ccfg.structured_teacher}
    )  # the other fine-tune loss, same epochs
    small_other, _ = compress.prune_structured(model, spec, other, fit, ft)
    t0 = time.time()
    student, student_spec = compress.distill_student(model, spec, ccfg, fit, ft)
    info["distilled_s"] = time.time() - t0
    floor, floor_spec = compress.shrink(model, spec, 1e-3)  # every width 1: the per-call cost of the layers alone
    mode = compress.int8_mode(ccfg, spec)
    q = compress.quantize_int8(model, spec, classes, calib, p("int8.onnx"), mode)
    info["int8_uncompacted_bytes"] = os.path.getsize(
        compress.quantize_int8(model, spec, classes, calib, p("int8-full.onnx"), mode, compact=False)
    )
    for name, m, s in [
        ("fp32", model, spec),
        ("pruned", pruned, spec),
        ("structured", small, small_spec),
        ("distilled", student, student_spec),
    ]:
        models.save(m, s, classes, p(f"{name}.pt"))
    size = lambda f: os.path.getsize(f)
    macs, small_macs, student_macs = (measure.count_macs(m, in_shape) for m in (model, small, student))
    st = measure.weight_stats(pruned)
    serve = models.for_inference  # what the pipeline loads, measures and serves for a torch file
    rows = {
        "fp32 torch eager, training form (BatchNorm, Dropout kept; timing only)": {
            "model": model,
            "rt": "torch",
            "timing_only": True,
        },
        "fp32 torch eager": {
            "model": serve(model),
            "rt": "torch",
            "size": size(p("fp32.pt")),
            "macs": macs,
            "sparsity": 0.0,
        },
        "fp32 onnxruntime": {
            "model": compress.OnnxModule(compress.export_onnx(model, spec, classes, p("fp32.onnx")), 1),
            "rt": "ort",
            "size": size(p("fp32.onnx")),
        },
        f"int8 onnxruntime {mode} (pipeline)": {
            "model": compress.OnnxModule(q, 1),
            "rt": "ort",
            "size": size(q),
            "macs": macs,
        },
        f"int8 torch.ao {'FX static' if mode == 'static' else 'quantize_dynamic'} (deprecated)": {
            "model": torch_ao_int8(model, calib, mode),
            "rt": "torch",
        },
        "pruned (unstructured, pipeline)": {
            "model": serve(pruned),
            "rt": "torch",
            "size": size(p("pruned.pt")),
            "macs": macs,
            "sparsity": st["sparsity"],
            "gzip": measure.file_sizes(p("pruned.pt"))[1],
        },
        "structured (pipeline)": {
            "model": serve(small),
            "rt": "torch",
            "size": size(p("structured.pt")),
            "macs": small_macs,
        },
        "structured onnxruntime (same model)": {
            "model": compress.OnnxModule(compress.export_onnx(small, small_spec, classes, p("s.onnx")), 1),
            "rt": "ort",
            "size": size(p("s.onnx")),
            "macs": small_macs,
        },
        f"structured, {'labels only' if ccfg.structured_teacher else 'with fp32 soft targets'} (not the pipeline's)": {
            "model": serve(small_other),
            "rt": None,
        },
        "distilled (pipeline, one block fewer)": {
            "model": serve(student),
            "rt": "torch",
            "size": size(p("distilled.pt")),
            "macs": student_macs,
        },
        "distilled onnxruntime (same model)": {
            "model": compress.OnnxModule(compress.export_onnx(student, student_spec, classes, p("d.onnx")), 1),
            "rt": "ort",
            "size": size(p("d.onnx")),
            "macs": student_macs,
        },
        "floor: fp32 layers, width 1 (timing only)": {"model": serve(floor), "rt": "torch", "timing_only": True},
        "floor onnxruntime (timing only)": {
            "model": compress.OnnxModule(compress.export_onnx(floor, floor_spec, classes, p("floor.onnx")), 1),
            "rt": "ort",
            "timing_only": True,
        },
    }
    if extras:
        t0 = time.time()
        try:
            rows[
                f"int8 torchao {'PT2E x86 inductor' if mode == 'static' else 'Int8DynAct-Int8Weight'} + torch.compile"
            ] = {"model": torchao_int8(model, calib, mode), "rt": "compiled"}
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            info["torchao_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        info["torchao_build_s"] = time.time() - t0
    return rows, info


def ratios(base: list[float], other: list[float]) -> tuple[float, float, float]:
    r = [b / o for b, o in zip(base, other)]
    return statistics.median(r), min(r), max(r)


def bench_model(label, ds, mcfg, epochs, ccfg, seeds, rounds, reps, tmp, with_torchao):
    acc: dict[str, list[float]] = {}
    drops: dict[str, list[float]] = {}
    for seed in range(seeds):
        rows, info = build(label, ds, mcfg, epochs, ccfg, seed, tmp, extras=with_torchao and seed == 0)
        base = accuracy(rows["fp32 torch eager"]["model"], ds.X_test, ds.y_test)
        for name, r in rows.items():
            if r.get("timing_only"):
                continue
            a = accuracy(r["model"], ds.X_test, ds.y_test)
            acc.setdefault(name, []).append(a)
            drops.setdefault(name, []).append(100 * (base - a))
        if seed == 0:
            first, first_info = rows, info
    torch.set_num_threads(1)  # all timing on one thread
    timed = {k: r["model"] for k, r in first.items() if r["rt"] is not None}
    x = torch.as_tensor(ds.X_test)
    for m in timed.values():  # compile / warm every shape before the rounds
        measure.latency_ms(m, x[:1], 1, warmup=2), measure.latency_ms(m, x[torch.arange(256) % len(x)], 1, warmup=2)
    b1 = measure.latency_rounds(timed, x[:1], rounds, reps)
    b256 = measure.latency_rounds(timed, x[torch.arange(256) % len(x)], rounds, max(3, reps // 5))
    same = {"torch": "fp32 torch eager", "ort": "fp32 onnxruntime"}
    out = []
    for name, r in first.items():
        row = {
            "name": name,
            "runtime": r["rt"],
            "acc": acc.get(name, []),
            "drops": drops.get(name, []),
            **{k: r[k] for k in ("size", "macs", "sparsity", "gzip") if k in r},
        }
        if name in timed:
            for tag, t in (("b1", b1), ("b256", b256)):
                row[tag] = (statistics.median(t[name]), min(t[name]), max(t[name]))
                row[f"x_{tag}_eager"] = ratios(t["fp32 torch eager"], t[name])
                if r["rt"] in same:
                    row[f"x_{tag}_same"] = ratios(t[same[r["rt"]]], t[name])
        if "size" in r:
            row["x_size"] = first["fp32 torch eager"]["size"] / r["size"]
        out.append(row)
    return {
        "model": label,
        "spec_args": models.spec_for(mcfg, ds.meta)["args"],
        "seeds": seeds,
        "rounds": rounds,
        "repeats_b1": reps,
        **first_info,
        "rows": out,
    }


def print_table(res):
    info = ", ".join(
        f"{k} {res[k]:.0f}s"
        for k in ("train_s", "prune_s", "structured_s", "distilled_s", "torchao_build_s")
        if k in res
    )
    print(f"\n#### {res['model']}  (seed 0: {info}; int8 file before compaction {res['int8_uncompacted_bytes']:,} B)")
    if "torchao_error" in res:
        print(f"torchao error: {res['torchao_error']}")
    print(
        f"| variant | acc (mean of {res['seeds']}) | drop pts mean [min, max] | b1 ms [min-max] "
        "| x b1 same runtime [min-max] | x b1 vs eager | b256 ms [min-max] | x b256 same runtime [min-max] "
        "| x b256 vs eager | size B | x size | MACs | sparsity |"
    )
    print("|" + "---|" * 13)
    f3 = lambda t, f="{:.3f}": f"{f.format(t[0])} [{f.format(t[1])}-{f.format(t[2])}]"
    for r in res["rows"]:
        d = r["drops"]
        a = (
            f"{statistics.mean(r['acc']):.4f} | {statistics.mean(d):+.2f} [{min(d):+.2f}, {max(d):+.2f}]"
            if d
            else " | "
        )
        g = lambda k, f="{:.2f}", r=r: f.format(r[k]) if k in r else ""
        t = lambda k, f="{:.2f}", r=r: f3(r[k], f) if k in r else ""
        x = lambda k, r=r: f"{r[k][0]:.2f}" if k in r else ""
        print(
            f"| {r['name']} | {a} | {t('b1', '{:.3f}')} | {t('x_b1_same')} | {x('x_b1_eager')} | {t('b256')} "
            f"| {t('x_b256_same')} | {x('x_b256_eager')} | {g('size', '{:,}')} | {g('x_size')} | {g('macs', '{:,}')} "
            f"| {g('sparsity', '{:.3f}')} |"
        )


def torchao_note(wanted: bool, smoke: bool) -> bool:
    """Whether to build the torchao rows; prints why not."""
    if not wanted:
        return False
    if smoke:
        print("torchao rows: left out of --smoke (torch.compile takes minutes on a CPU)")
        return False
    try:
        found = importlib.util.find_spec("torchao") is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module set to None
        found = False
    if not found:
        print("torchao rows: left out, torchao is not installed (`pip install -e .[bench]`)")
        return False
    return True


def main():
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.compress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer epochs, rounds and repeats")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    ap.add_argument("--no-torchao", action="store_true", help="skip the torchao + torch.compile path (slow to compile)")
    ap.add_argument("--only", default="digits8,digits28,mlp", help="comma list of models")
    ap.add_argument(
        "--seeds", type=int, default=3, help="fp32 models (and their variants) per model, for the accuracy spread"
    )
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--out", default=None, help="also write the results as JSON to this file")
    a = ap.parse_args()
    print(f"loadavg at start: {' '.join(loadavg())}; cores: {os.cpu_count()}; torch {torch.__version__}; {utc_now()}")
    with_torchao = torchao_note(not a.no_torchao, a.smoke)
    reps = 3 if a.smoke else 10 if a.quick else 30
    rounds = 1 if a.smoke else 3 if a.quick else a.rounds
    short = a.quick or a.smoke
    ccfg = CompressConfig(
        step_epochs=1 if short else 2,
        structured_epochs=(1 if a.smoke else 2) if short else CompressConfig().structured_epochs,
        student_epochs=(1 if a.smoke else 2) if short else CompressConfig().student_epochs,
    )
    if a.smoke:
        a.only, a.seeds = "digits8", 1
        ccfg = ccfg.model_copy(update={"prune_steps": 1, "calibration_samples": 32})
    plan = {
        "digits8": lambda: (
            "digits 8x8 CNN (default)",
            digits(8),
            ModelConfig(),
            1 if a.smoke else 5 if a.quick else 40,
            ccfg,
        ),
        "digits28": lambda: (
            "digits 28x28 CNN",
            digits(28),
            ModelConfig(),
            2 if a.quick else 8,
            ccfg.model_copy(
                update={
                    "step_epochs": 1,
                    "structured_epochs": 1 if a.quick else 6,
                    "student_epochs": 1 if a.quick else 10,
                }
            ),
        ),
        "mlp": lambda: (
            "digits MLP 512x512 (Linear-heavy)",
            tabular(digits(8)),
            ModelConfig(kind="mlp", hidden=(512, 512)),
            5 if a.quick else 40,
            ccfg,
        ),
    }
    results = []
    with scratch("compress") as tmp:
        for key in a.only.split(","):
            label, ds, mcfg, epochs, c = plan[key]()
            res = bench_model(key, ds, mcfg, epochs, c, a.seeds, rounds, reps, tmp, with_torchao)
            res["model"] = label
            print_table(res)
            results.append(res)
    print(f"\nloadavg at end: {' '.join(loadavg())}")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
