"""Compression: variants of a trained model that are smaller or faster on a CPU.

    pruned      global magnitude pruning, prune -> fine-tune rounds, masks made permanent
    structured  whole conv channels / hidden neurons removed: a narrower model of the same arch
    int8        ONNX export + ONNX Runtime int8: static (calibrated on training rows) for conv
                nets, dynamic (weights int8, activations quantized per call) for MLPs

Serialization: pruned and structured variants are ordinary mlpipe model files (components/models
save/load: tensors + constructor args, read with weights_only=True). int8 variants are ONNX files
(a protobuf of graph + tensors, no code) carrying the spec and class names as metadata; they run
in ONNX Runtime. Neither format unpickles code. Figures come from components/measure.py."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from components import models
from components.config import CompressConfig, TrainConfig
from components.errors import MlpipeError
from components.fileio import atomic_file

ONNX_FORMAT = "mlpipe.onnx/1"
FitFn = Callable[[nn.Module, TrainConfig], None]  # fine-tunes a model in place


# ---------------------------------------------------------------- serialization


class OnnxModule(nn.Module):
    """An ONNX file run by ONNX Runtime behind the nn.Module call interface (logits out)."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort

        super().__init__()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: ONNX Runtime's default (all cores)
        opts.inter_op_num_threads = 1
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *in_shape) -> (B, n_classes)
        x = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def onnx_meta(path: str | Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def load_model_file(path: str | Path, threads: int = 0) -> tuple[nn.Module, dict, list[str]]:
    """Any variant's file -> (model in eval mode, spec, class names). Never unpickles code."""
    path = Path(path)
    if path.suffix != ".onnx":
        return models.load(path)
    if not path.exists():
        raise MlpipeError(f"{path}: model file not found")
    meta = onnx_meta(path)
    if meta.get("format") != ONNX_FORMAT:
        raise MlpipeError(f"{path}: not an mlpipe ONNX model (expected metadata format {ONNX_FORMAT})")
    return OnnxModule(path, threads).eval(), json.loads(meta["spec"]), json.loads(meta["classes"])


# ---------------------------------------------------------------- unstructured pruning


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The conv and linear weights (biases, norms and batch-norm stay dense)."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sparsity_schedule(final: float, steps: int) -> list[float]:
    """Cumulative sparsity after each round, cubic (Zhu & Gupta 2017): big cuts first."""
    return [final * (1 - (1 - k / steps) ** 3) for k in range(1, steps + 1)]


def prune_unstructured(model: nn.Module, cfg: CompressConfig, fit: FitFn, train_cfg: TrainConfig) -> nn.Module:
    """Copy of `model` with cfg.sparsity of its conv/linear weights zeroed (smallest |w| across
    all layers), fine-tuned after every round with the masks held; the masks are then folded
    into the weights, so the result is a plain module of the original shape."""
    model = copy.deepcopy(model)
    params = prunable(model)
    total = sum(m.weight.numel() for m, _ in params)
    for target in sparsity_schedule(cfg.sparsity, cfg.prune_steps):
        done = sum(int((m.weight == 0).sum()) for m, _ in params)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=max(0, round(target * total) - done))
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
        nxt = next((l for l in layers[i + 1 :] if isinstance(l, nn.Linear)), None)
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
        keep_idx = torch.arange(out_n) if n.weight.shape[0] == out_n else _importance(old_layers, i).topk(n.weight.shape[0]).indices.sort().values
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


def prune_structured(model: nn.Module, spec: dict, cfg: CompressConfig, fit: FitFn, train_cfg: TrainConfig) -> tuple[nn.Module, dict]:
    small, small_spec = shrink(model, spec, cfg.keep)
    if cfg.structured_epochs:
        fit(small, train_cfg.model_copy(update={"epochs": cfg.structured_epochs}))
    return small.eval(), small_spec


# ---------------------------------------------------------------- int8 (ONNX Runtime)


def int8_mode(cfg: CompressConfig, spec: dict) -> str:
    if cfg.int8_mode != "auto":
        return cfg.int8_mode
    return "static" if spec["arch"] == "cnn" else "dynamic"


def export_onnx(model: nn.Module, spec: dict, classes: list[str], path: str | Path, variant: str = "fp32") -> Path:
    """fp32 ONNX (batch axis dynamic; batch norm folded into the convs by the exporter)."""
    import onnx

    path = Path(path)
    x = torch.zeros((2, *spec["args"]["in_shape"]))
    model = copy.deepcopy(model).eval()
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    _set_meta(path, spec, classes, variant, onnx)
    return path


def _set_meta(path: Path, spec: dict, classes: list[str], variant: str, onnx) -> None:
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in {"format": ONNX_FORMAT, "spec": json.dumps(spec), "classes": json.dumps(list(classes)), "variant": variant}.items():
        m.metadata_props.add(key=k, value=v)
    with atomic_file(path) as f:
        f.write(m.SerializeToString())


class _Calibration:
    """ONNX Runtime CalibrationDataReader over training rows, in batches of 64."""

    def __init__(self, X: np.ndarray, name: str = "x"):
        self.batches = iter([{name: np.ascontiguousarray(X[i : i + 64], dtype=np.float32)} for i in range(0, len(X), 64)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(model: nn.Module, spec: dict, classes: list[str], X_calib: np.ndarray, path: str | Path, mode: str) -> Path:
    """int8 ONNX at `path`. static: per-channel int8 weights, uint8 activations with ranges
    from X_calib (QDQ format, run as fused int8 kernels). dynamic: int8 weights, activations
    quantized per call from their observed range (per batch: one outlier row coarsens every row)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    fp32, prep = path.with_suffix(".fp32.onnx"), path.with_suffix(".prep.onnx")
    try:
        export_onnx(model, spec, classes, fp32)
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        if mode == "static":
            quantize_static(str(prep), str(path), _Calibration(X_calib), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        elif mode == "dynamic":
            quantize_dynamic(str(prep), str(path), per_channel=True, weight_type=QuantType.QInt8)
        else:
            raise MlpipeError(f"compress.int8_mode: {mode!r} is not one of auto, static, dynamic")
    finally:
        fp32.unlink(missing_ok=True)
        prep.unlink(missing_ok=True)
    _set_meta(path, spec, classes, "int8", onnx)
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
        out[n.name or w] = onnx.TensorProto.DataType.Name(t.data_type) if t is not None else "computed"
    return out


# ---------------------------------------------------------------- all variants


def build_variants(model: nn.Module, spec: dict, classes: list[str], X_calib: np.ndarray, cfg: CompressConfig,
                   fit: FitFn, train_cfg: TrainConfig, out_dir: str | Path) -> list[dict]:
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
            made.append({"variant": name, "file": out_dir / "pruned.pt", "method": method, "macs": count_macs(m, in_shape), "model": m})
        elif name == "structured":
            m, small_spec = prune_structured(model, spec, cfg, fit, train_cfg)
            models.save(m, small_spec, classes, out_dir / "structured.pt")
            method = f"channels/neurons kept {cfg.keep}, {cfg.structured_epochs} epochs fine-tune"
            made.append({"variant": name, "file": out_dir / "structured.pt", "method": method, "macs": count_macs(m, in_shape), "model": m})
        elif name == "int8":
            mode = int8_mode(cfg, spec)
            quantize_int8(model, spec, classes, X_calib, out_dir / "int8.onnx", mode)
            method = f"onnxruntime {mode} int8" + (f" (QDQ, per-channel, {len(X_calib)} calibration rows)" if mode == "static" else " (per-channel weights)")
            made.append({"variant": name, "file": out_dir / "int8.onnx", "method": method, "macs": count_macs(model, in_shape), "model": None})
    return made
