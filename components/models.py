"""Models: a small CNN for images, an MLP for tabular data, Transformer encoders for text and images
(components/transformer.py). A model saves and loads itself with its constructor arguments, so the
registry and serving never rebuild it by hand."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from components import transformer
from components.errors import MlpipeError
from components.fileio import atomic_file

if TYPE_CHECKING:  # a registered model ships this module without the config tree (components/serving.py)
    from components.config import ModelConfig

FORMAT = "mlpipe.model/1"


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on training data, kept as buffers so they
    travel with the weights. Images: one value per channel; tabular: one per feature."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def fit(self, X: np.ndarray) -> None:
        x = torch.as_tensor(np.asarray(X, dtype=np.float32))
        if self.mean.ndim == 4:  # per channel: (1, C, 1, 1)
            dims = (0, 2, 3)
        else:  # per feature, whatever the input's shape (an MLP on images flattens)
            x, dims = x.reshape(len(x), -1), (0,)
        mean, std = x.mean(dim=dims), x.std(dim=dims)
        self.mean.copy_(mean.reshape(self.mean.shape))
        # a feature constant in training gets scale 1 (as sklearn's StandardScaler does): a tiny
        # floor would blow any non-zero test value up to ~1e6 and wreck int8 calibration ranges
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.std.copy_(std.reshape(self.std.shape))

    def forward(self, x):
        return (x - self.mean) / self.std


class CNN(nn.Module):
    def __init__(self, in_shape, n_classes, channels=(32, 64), hidden=(128,), dropout=0.2):
        super().__init__()
        c, h, w = in_shape
        self.norm = Standardize((1, c, 1, 1))
        layers = []
        for width in channels:
            layers += [
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = width
        self.features = nn.Sequential(*layers)
        head, d = [nn.Flatten()], c * h * w
        for width in hidden:
            head += [nn.Dropout(dropout), nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        head += [nn.Dropout(dropout), nn.Linear(d, n_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x):  # (B, C, H, W) -> (B, n_classes) logits
        return self.head(self.features(self.norm(x)))


class MLP(nn.Module):
    def __init__(self, in_shape, n_classes, hidden=(128,), dropout=0.2):
        super().__init__()
        d = math.prod(in_shape)
        self.norm = Standardize((d,))
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = width
        layers.append(nn.Linear(d, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # (B, *in_shape) -> (B, n_classes) logits
        return self.net(self.norm(x.flatten(1)))


class ViT(transformer.ViT):
    """transformer.ViT with its input standardized per channel, as the CNN's (fitted on training data)."""

    def __init__(self, in_shape, n_classes, **kw):
        super().__init__(in_shape, n_classes, **kw)
        self.norm = Standardize((1, in_shape[0], 1, 1))


ARCHS = {"cnn": CNN, "mlp": MLP, "transformer": transformer.TextTransformer, "vit": ViT}
AUTO = {"image": "cnn", "text": "transformer"}  # model.kind auto, by data kind; anything else: mlp


def model_args(cfg: ModelConfig, feature_shape, n_classes: int, kind: str, text: dict | None = None) -> dict:
    """text: meta.text of a text dataset (vocab_size ...; components/text.py)."""
    arch = cfg.kind if cfg.kind != "auto" else AUTO.get(kind, "mlp")
    if arch in ("cnn", "vit") and len(feature_shape) != 3:
        raise MlpipeError(
            f"model.kind: {arch} needs image data (C, H, W); this dataset has feature shape {list(feature_shape)}"
        )
    if (arch == "transformer") != (kind == "text"):
        raise MlpipeError(
            f"model.kind: {cfg.kind} does not fit {kind} data: text takes transformer (or auto), "
            "other data cnn, mlp or vit"
        )
    if arch in transformer.ARCHS:
        return {"arch": arch, "args": _encoder_args(cfg, feature_shape, n_classes, arch, text)}
    args = {
        "in_shape": list(feature_shape),
        "n_classes": int(n_classes),
        "hidden": list(cfg.hidden),
        "dropout": cfg.dropout,
    }
    if arch == "cnn":
        args["channels"] = list(cfg.channels)
    return {"arch": arch, "args": args}


def _encoder_args(cfg: ModelConfig, feature_shape, n_classes: int, arch: str, text: dict | None) -> dict:
    args = {
        "in_shape": list(feature_shape),
        "n_classes": int(n_classes),
        "d_model": cfg.d_model,
        "heads": cfg.heads,
        "layers": cfg.layers,
        "ff": cfg.ff,
        "dropout": cfg.dropout,
        "pooling": cfg.pooling,
    }
    if arch == "vit":
        return {**args, "patch_size": cfg.patch_size, "stem": cfg.stem}
    if not text or "vocab_size" not in text:
        raise MlpipeError("model.kind: transformer needs the text metadata of the prepared data (meta.text.vocab_size)")
    return {**args, "vocab_size": int(text["vocab_size"])}


def spec_for(cfg: ModelConfig, meta) -> dict:
    """The model spec for a dataset: meta is anything with feature_shape, n_classes and kind, and
    text for text data (data.Meta, tune.TrialData)."""
    return model_args(cfg, meta.feature_shape, meta.n_classes, meta.kind, getattr(meta, "text", None))


def build(spec: dict) -> nn.Module:
    return ARCHS[spec["arch"]](**spec["args"])


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-only copy for serving: each BatchNorm2d folded into the convolution before it (its
    running statistics and affine become the conv's weight scale and bias) and the Dropout layers,
    identities in eval mode, removed. Same outputs up to float rounding; fewer layer calls make
    batch-1 inference of the default CNN 1.28x faster (benchmarks/results/HISTORY.md, issue 5). Not trainable:
    the copy has no BatchNorm statistics left to update."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(model).eval()
    for name, child in list(out.named_children()):
        if not isinstance(child, nn.Sequential):
            continue
        kept: list[nn.Module] = []
        for layer in child:
            if isinstance(layer, nn.BatchNorm2d) and kept and isinstance(kept[-1], nn.Conv2d):
                kept[-1] = fuse_conv_bn_eval(kept[-1], layer)
            elif not isinstance(layer, nn.Dropout):
                kept.append(layer)
        setattr(out, name, nn.Sequential(*kept))
    return out.requires_grad_(False)


def save(model: nn.Module, spec: dict, classes: list[str], path: str | Path) -> None:
    """Weights + constructor arguments + class names, as plain tensors and builtins only
    (loadable with weights_only=True)."""
    payload = {
        "format": FORMAT,
        "spec": spec,
        "classes": list(classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_file(path) as f:
        torch.save(payload, f)


def load(path: str | Path) -> tuple[nn.Module, dict, list[str]]:
    """-> (model in eval mode, spec, class names). Never unpickles code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MlpipeError(f"{path}: model file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError for foreign or torn files
        raise MlpipeError(
            f"{path}: not a loadable mlpipe model ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MlpipeError(f"{path}: not an mlpipe model file (expected format {FORMAT})")
    model = build(payload["spec"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["spec"], payload["classes"]
