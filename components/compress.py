"""Compression: variants of a trained model that are smaller or faster on a CPU.

    pruned      global magnitude pruning, prune -> fine-tune rounds, masks made permanent
    structured  whole conv channels / hidden neurons removed: a narrower model of the same arch
    distilled   a shallower, narrower student trained on the fp32 model's soft targets
    int8        ONNX export + ONNX Runtime int8: static (calibrated on training rows) for conv
                nets, dynamic (weights int8, activations quantized per call) for MLPs and Transformers

Transformers (components/transformer.py): structured = fewer attention heads and FFN units per block;
distilled = a student with fewer blocks (and those narrowed); int8 = dynamic, the Linear layers' MatMuls
only, the padding mask computed inside the exported graph from the int64 ids.

Serialization: pruned, structured and distilled variants are ordinary mlpipe model files (components/models
save/load: tensors + constructor args, read with weights_only=True). int8 variants are ONNX files
(a protobuf of graph + tensors, no code) carrying the spec and class names as metadata; they run
in ONNX Runtime. Neither format unpickles code. Figures come from components/measure.py."""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from components import models, transformer
from components.config import CompressConfig, TrainConfig
from components.errors import MlpipeError
from components.fileio import atomic_file
from components.serving import ONNX_FORMAT, OnnxModule, load_model_file, onnx_meta  # noqa: F401 (re-exported)

# fit(model, train_cfg, teacher=None) fine-tunes a model in place; with a teacher it also follows
# the teacher's soft targets (see fine_tuner)
FitFn = Callable[..., None]
# the readers of both file formats (load_model_file, OnnxModule) live in serving.py, the code a registered
# model ships, and are re-exported here


# ---------------------------------------------------------------- fine-tuning


def distill_loss(teacher: nn.Module, alpha: float, temperature: float):
    """The engine loss_fn of distillation: alpha * T^2 * KL(teacher || student, both at temperature T)
    + (1 - alpha) * cross-entropy on the labels (Hinton et al. 2015); the teacher (in eval mode, on the
    batch's device) sees the same augmented batch as the student."""
    F = nn.functional
    on: dict[torch.device, nn.Module] = {}

    def loss(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if xb.device not in on:  # a copy on a training GPU; the caller's teacher stays where it is
            same = next(teacher.parameters()).device == xb.device
            on[xb.device] = (teacher if same else copy.deepcopy(teacher).to(xb.device)).eval()
        with torch.no_grad():
            soft = F.log_softmax(on[xb.device](xb).float() / temperature, 1)
        kd = F.kl_div(F.log_softmax(logits / temperature, 1), soft, log_target=True, reduction="batchmean")
        return alpha * temperature**2 * kd + (1 - alpha) * F.cross_entropy(logits, yb)

    return loss


def distill(
    student: nn.Module,
    teacher: nn.Module,
    X_tr,
    y_tr,
    X_va,
    y_va,
    cfg: TrainConfig,
    seed: int,
    augment=None,
    alpha: float = 0.9,
    temperature: float = 4.0,
) -> None:
    """Fine-tune `student` in place on distill_loss through the training loop (engine.fit: cfg's lr
    schedule, divergence checks, the weights of the epoch with the lowest validation loss)."""
    from components import engine

    engine.fit(
        student,
        X_tr,
        y_tr,
        X_va,
        y_va,
        cfg,
        seed,
        augment=augment,
        progress=False,
        loss_fn=distill_loss(teacher, alpha, temperature),
    )


def fine_tuner(X_tr, y_tr, X_va, y_va, seed: int, augment, cfg: CompressConfig) -> FitFn:
    """The FitFn of the compress stage: the training loop (labels only), or distill() when given a
    teacher and cfg.distill_alpha > 0."""
    from components import engine

    def fit(model: nn.Module, tcfg: TrainConfig, teacher: nn.Module | None = None) -> None:
        if teacher is not None and cfg.distill_alpha > 0:
            distill(
                model, teacher, X_tr, y_tr, X_va, y_va, tcfg, seed, augment, cfg.distill_alpha, cfg.distill_temperature
            )
        else:
            engine.fit(model, X_tr, y_tr, X_va, y_va, tcfg, seed, augment=augment, progress=False)

    return fit


# ---------------------------------------------------------------- unstructured pruning


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The conv and linear weights (biases, norms and batch-norm stay dense)."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sparsity_schedule(final: float, steps: int) -> list[float]:
    """Cumulative sparsity after each round, cubic (Zhu & Gupta 2017): big cuts first."""
    return [final * (1 - (1 - k / steps) ** 3) for k in range(1, steps + 1)]


def prune_unstructured(model: nn.Module, cfg: CompressConfig, fit: FitFn, train_cfg: TrainConfig) -> nn.Module:
    """Copy of `model` with at least cfg.sparsity of its conv/linear weights zeroed (smallest |w| across
    all layers), fine-tuned after every round with the masks held; the masks are then folded
    into the weights, so the result is a plain module of the original shape."""
    model = copy.deepcopy(model)
    params = prunable(model)
    total = sum(m.weight.numel() for m, _ in params)
    for target in sparsity_schedule(cfg.sparsity, cfg.prune_steps):
        done = sum(int((m.weight == 0).sum()) for m, _ in params)
        prune.global_unstructured(
            params, pruning_method=prune.L1Unstructured, amount=max(0, math.ceil(target * total - 1e-9) - done)
        )
        if cfg.step_epochs:
            fit(model, train_cfg.model_copy(update={"epochs": cfg.step_epochs}))
    for m, name in params:
        prune.remove(m, name)
    return model


# ---------------------------------------------------------------- structured pruning


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]


def _importance(layers: list[nn.Module], i: int) -> torch.Tensor:
    """Score per output unit of layers[i]. Conv: filter norm times the |scale| of the batch norm
    after it (what survives into the activation). Linear: norm of the neuron's input weights
    times the norm of its outgoing weights in the next linear layer."""
    layer = layers[i]
    w = layer.weight.detach()
    score = w.flatten(1).norm(dim=1)
    if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
        bn = layers[i + 1]
        score = score * (bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt())
    if isinstance(layer, nn.Linear):
        nxt = next((m for m in layers[i + 1 :] if isinstance(m, nn.Linear)), None)
        if nxt is not None:
            score = score * nxt.weight.detach().norm(dim=0)
    return score


def narrow_spec(spec: dict, keep: float) -> dict:
    """The same architecture with every hidden width scaled by `keep` (at least 1 unit)."""
    spec = copy.deepcopy(spec)
    args = spec["args"]
    for key in ("channels", "hidden"):
        if key in args:
            args[key] = [max(1, round(w * keep)) for w in args[key]]
    return spec


@torch.no_grad()
def shrink(model: nn.Module, spec: dict, keep: float) -> tuple[nn.Module, dict]:
    """-> (a narrower model holding the highest-scoring channels/neurons of `model`, its spec).

    Works on the models.CNN / models.MLP layer order: each conv/linear's kept outputs select the
    next layer's inputs; at the flatten a kept channel brings all of its H*W positions."""
    new_spec = narrow_spec(spec, keep)
    new = models.build(new_spec).eval()
    new.norm.load_state_dict(model.norm.state_dict())
    old_layers, new_layers = _layers(model), _layers(new)
    prev: torch.Tensor | None = None  # indices of the previous layer's kept outputs
    prev_n = None  # number of outputs of the previous layer in the old model
    for i, (o, n) in enumerate(zip(old_layers, new_layers)):
        if isinstance(o, nn.BatchNorm2d):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(n, name).copy_(getattr(o, name)[prev])
            continue
        out_n = o.weight.shape[0]
        keep_idx = (
            torch.arange(out_n)
            if n.weight.shape[0] == out_n
            else _importance(old_layers, i).topk(n.weight.shape[0]).indices.sort().values
        )
        w = o.weight[keep_idx]
        if prev is not None:
            cols = prev
            if isinstance(o, nn.Linear) and o.in_features != prev_n:  # flatten: (C, H, W) -> C*H*W columns
                hw = o.in_features // prev_n
                cols = (prev[:, None] * hw + torch.arange(hw)).flatten()
            w = w[:, cols]
        n.weight.copy_(w)
        if o.bias is not None:
            n.bias.copy_(o.bias[keep_idx])
        prev, prev_n = keep_idx, out_n
    return new, new_spec


def shrink_any(model: nn.Module, spec: dict, keep: float) -> tuple[nn.Module, dict]:
    """shrink() for CNN / MLP; for a transformer, cfg.keep of each block's heads and FFN units."""
    if spec["arch"] in transformer.ARCHS:
        small_spec = transformer.narrow_spec(spec, keep)
        return transformer.shrink(model, spec, small_spec, models.build), small_spec
    return shrink(model, spec, keep)


def prune_structured(
    model: nn.Module, spec: dict, cfg: CompressConfig, fit: FitFn, train_cfg: TrainConfig
) -> tuple[nn.Module, dict]:
    """shrink(), then fine-tune on the labels, or also on `model`'s soft targets (cfg.structured_teacher:
    measured better on the 8x8 digits CNN by ~0.3 points, worse on the 28x28 CNN and the MLP by ~1)."""
    small, small_spec = shrink_any(model, spec, cfg.keep)
    if cfg.structured_epochs:
        ft = train_cfg.model_copy(update={"epochs": cfg.structured_epochs})
        fit(small, ft, teacher=model) if cfg.structured_teacher else fit(small, ft)
    return small.eval(), small_spec


# ---------------------------------------------------------------- distillation


def student_spec(spec: dict, cfg: CompressConfig) -> dict:
    """The distilled variant's architecture: widths scaled by cfg.keep, and cfg.student_drop_blocks
    fewer conv blocks (cnn) or hidden layers (mlp), at least one left. Fewer layers is what cuts
    batch-1 latency, which per-layer framework overhead dominates in a small model."""
    s = narrow_spec(spec, cfg.keep)
    key = "channels" if s["arch"] == "cnn" else "hidden"
    s["args"][key] = s["args"][key][: max(1, len(s["args"][key]) - cfg.student_drop_blocks)]
    return s


def distill_student(
    model: nn.Module, spec: dict, cfg: CompressConfig, fit: FitFn, train_cfg: TrainConfig
) -> tuple[nn.Module, dict]:
    """-> (a shallower, narrower student trained on `model`'s soft targets, its spec). Every tensor
    it shares by name and shape with shrink(model) starts from there (the input normalization and the
    kept channels of the blocks it keeps); the rest (the head after the removed block) starts fresh.
    A transformer student keeps the first blocks (narrowed), the embeddings, final norm and head."""
    if spec["arch"] in transformer.ARCHS:
        s_spec = transformer.student_spec(spec, cfg.keep, cfg.student_drop_blocks)
        student = transformer.shrink(model, spec, s_spec, models.build)
        fit(student, train_cfg.model_copy(update={"epochs": cfg.student_epochs, "lr": cfg.student_lr}), teacher=model)
        return student.eval(), s_spec
    small, _ = shrink(model, spec, cfg.keep)
    s_spec = student_spec(spec, cfg)
    student = models.build(s_spec)
    src = small.state_dict()
    student.load_state_dict(
        {k: src[k] if k in src and src[k].shape == v.shape else v for k, v in student.state_dict().items()}
    )
    fit(student, train_cfg.model_copy(update={"epochs": cfg.student_epochs, "lr": cfg.student_lr}), teacher=model)
    return student.eval(), s_spec


# ---------------------------------------------------------------- int8 (ONNX Runtime)


def int8_mode(cfg: CompressConfig, spec: dict) -> str:
    """auto: static for the CNN, dynamic otherwise. A text transformer is always dynamic, whatever
    compress.int8_mode says: its input is token ids, which the static calibration (float rows) cannot feed."""
    if spec["arch"] == "transformer":
        return "dynamic"
    if cfg.int8_mode != "auto":
        return cfg.int8_mode
    return "static" if spec["arch"] == "cnn" else "dynamic"


def export_onnx(model: nn.Module, spec: dict, classes: list[str], path: str | Path, variant: str = "fp32") -> Path:
    """fp32 ONNX (batch axis dynamic; batch norm folded into the convs by the exporter). A text transformer
    takes int64 ids (B, T <= max_length; both axes dynamic) and builds its padding mask inside the graph."""
    import onnx

    path = Path(path)
    model = copy.deepcopy(model).eval()
    text = spec["arch"] == "transformer"
    x = model.example_input(2) if text else torch.zeros((2, *spec["args"]["in_shape"]))
    axes = {0: "batch", 1: "tokens"} if text else {0: "batch"}
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": axes, "logits": {0: "batch"}},
        dynamo=False,
    )
    _set_meta(path, spec, classes, variant, onnx)
    return path


def _set_meta(path: Path, spec: dict, classes: list[str], variant: str, onnx, compact: bool = False) -> None:
    m = onnx.load(str(path))
    if compact:
        _compact(m.graph)
    del m.metadata_props[:]
    for k, v in {
        "format": ONNX_FORMAT,
        "spec": json.dumps(spec),
        "classes": json.dumps(list(classes)),
        "variant": variant,
    }.items():
        m.metadata_props.add(key=k, value=v)
    with atomic_file(path) as f:
        f.write(m.SerializeToString())


def _short_names(taken: set[str]):
    """name -> a short id (base 36, unique, never one of `taken`), the same id for the same name."""
    ids: dict[str, str] = {}
    fresh = (i for k in itertools.count() if (i := np.base_repr(k, 36).lower()) not in taken)

    def short(name: str) -> str:
        if not name or name in taken:
            return name
        if name not in ids:
            ids[name] = next(fresh)
        return ids[name]

    return short


def _compact(g) -> None:
    """Drop the bytes of a quantized graph that ONNX Runtime does not use to run it (a small CNN's
    int8 file was 15% of them): shape annotations (value_info, inferred again at load), node names and
    doc strings, the exporter's long tensor names (e.g. '/features/features.0/Conv_output_0_quantized',
    each stored in every node that reads it; renamed to short ids, graph inputs/outputs keep theirs),
    and the int32 zero points of the biases' DequantizeLinear (always 0, the optional input's default).
    Tensors and graph are otherwise unchanged: outputs are bit-identical. The int8 weights' zero points
    stay: without them ONNX Runtime no longer fuses DequantizeLinear + Gemm into an int8 QGemm."""
    from onnx import TensorProto, numpy_helper

    del g.value_info[:]
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        n.name, n.doc_string = "", ""
        zp = inits.get(n.input[2]) if n.op_type == "DequantizeLinear" and len(n.input) == 3 else None
        if zp is not None and zp.data_type == TensorProto.INT32 and not numpy_helper.to_array(zp).any():
            del n.input[2]
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    short = _short_names({v.name for v in (*g.input, *g.output)})
    for t in g.initializer:
        t.name = short(t.name)
    for n in g.node:
        n.input[:] = [short(i) for i in n.input]
        n.output[:] = [short(o) for o in n.output]


class _Calibration:
    """ONNX Runtime CalibrationDataReader over training rows, in batches of 64."""

    def __init__(self, X: np.ndarray, name: str = "x"):
        self.batches = iter(
            [{name: np.ascontiguousarray(X[i : i + 64], dtype=np.float32)} for i in range(0, len(X), 64)]
        )

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(
    model: nn.Module,
    spec: dict,
    classes: list[str],
    X_calib: np.ndarray,
    path: str | Path,
    mode: str,
    compact: bool = True,
) -> Path:
    """int8 ONNX at `path`. static: per-channel int8 weights, uint8 activations with ranges
    from X_calib (QDQ format, run as fused int8 kernels). dynamic: int8 weights, activations
    quantized per call from their observed range (per batch: one outlier row coarsens every row).
    compact: strip what the runtime does not need (see _compact); False keeps the quantizer's file."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    fp32, prep = path.with_suffix(".fp32.onnx"), path.with_suffix(".prep.onnx")
    try:
        export_onnx(model, spec, classes, fp32)
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        if mode == "static":
            quantize_static(
                str(prep),
                str(path),
                _Calibration(X_calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        elif mode == "dynamic":
            # a transformer: the Linear layers' MatMuls (constant weights) and the token embedding table (Gather;
            # most of a small text model's bytes), not the ViT's patch conv
            ops = ["MatMul", "Gemm", "Gather"] if spec["arch"] in transformer.ARCHS else None
            quantize_dynamic(
                str(prep), str(path), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=ops
            )
        else:
            raise MlpipeError(f"compress.int8_mode: {mode!r} is not one of auto, static, dynamic")
    finally:
        fp32.unlink(missing_ok=True)
        prep.unlink(missing_ok=True)
    _set_meta(path, spec, classes, "int8", onnx, compact)
    return path


def onnx_weight_types(path: str | Path) -> dict[str, str]:
    """For every Conv/Gemm/MatMul in the graph: the element type its weight is stored in
    (followed back through DequantizeLinear), e.g. {'/features/features.0/Conv': 'INT8'}."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    out = {}
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"):
            continue
        w = n.input[3] if n.op_type in ("QLinearConv", "QLinearMatMul") else n.input[1]
        src = producers.get(w)
        if src is not None and src.op_type == "DequantizeLinear":
            w = src.input[0]
        t = inits.get(w)
        out[n.name or f"{n.op_type}:{w}"] = onnx.TensorProto.DataType.Name(t.data_type) if t is not None else "computed"
    return out


# ---------------------------------------------------------------- all variants


def build_variants(
    model: nn.Module,
    spec: dict,
    classes: list[str],
    X_calib: np.ndarray,
    cfg: CompressConfig,
    fit: FitFn,
    train_cfg: TrainConfig,
    out_dir: str | Path,
) -> list[dict]:
    """Make each variant in cfg.variants and write it under out_dir ->
    [{variant, file, method, macs, model (the torch module it came from)}]."""
    from components.measure import count_macs

    out_dir = Path(out_dir)
    in_shape = spec["args"]["in_shape"]
    made = []
    for name in cfg.variants:
        if name == "pruned":
            m = prune_unstructured(model, cfg, fit, train_cfg).eval()
            models.save(m, spec, classes, out_dir / "pruned.pt")
            method = f"global magnitude, {cfg.prune_steps} rounds x {cfg.step_epochs} epochs, sparsity {cfg.sparsity}"
            made.append(
                {
                    "variant": name,
                    "file": out_dir / "pruned.pt",
                    "method": method,
                    "macs": count_macs(m, in_shape),
                    "model": m,
                }
            )
        elif name == "structured":
            m, small_spec = prune_structured(model, spec, cfg, fit, train_cfg)
            models.save(m, small_spec, classes, out_dir / "structured.pt")
            how = (
                f"on fp32 soft targets (alpha {cfg.distill_alpha}, T {cfg.distill_temperature})"
                if cfg.structured_teacher
                else "on labels"
            )
            unit = "heads/FFN units" if spec["arch"] in transformer.ARCHS else "channels/neurons"
            method = f"{unit} kept {cfg.keep}, {cfg.structured_epochs} epochs fine-tune {how}"
            made.append(
                {
                    "variant": name,
                    "file": out_dir / "structured.pt",
                    "method": method,
                    "macs": count_macs(m, in_shape),
                    "model": m,
                }
            )
        elif name == "distilled":
            m, s_spec = distill_student(model, spec, cfg, fit, train_cfg)
            models.save(m, s_spec, classes, out_dir / "distilled.pt")
            a = s_spec["args"]
            key = "channels" if s_spec["arch"] == "cnn" else "hidden"
            shape = (
                f"student {a['layers']} blocks, heads {a['block_heads']}, ffn {a['block_ff']}"
                if s_spec["arch"] in transformer.ARCHS
                else f"student {key} {a[key]}, hidden {a['hidden']}"
            )
            method = (
                f"{shape}, "
                f"{cfg.student_epochs} epochs on soft targets "
                f"(alpha {cfg.distill_alpha}, T {cfg.distill_temperature})"
            )
            made.append(
                {
                    "variant": name,
                    "file": out_dir / "distilled.pt",
                    "method": method,
                    "macs": count_macs(m, in_shape),
                    "model": m,
                }
            )
        elif name == "int8":
            mode = int8_mode(cfg, spec)
            quantize_int8(model, spec, classes, X_calib, out_dir / "int8.onnx", mode)
            method = f"onnxruntime {mode} int8" + (
                f" (QDQ, per-channel, {len(X_calib)} calibration rows)"
                if mode == "static"
                else " (per-channel weights)"
            )
            made.append(
                {
                    "variant": name,
                    "file": out_dir / "int8.onnx",
                    "method": method,
                    "macs": count_macs(model, in_shape),
                    "model": None,
                }
            )
    return made
