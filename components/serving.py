"""Inference on one weights file: the code a registered model runs, and all of it.

A registered model version is MLflow's models-from-code package: its entry point (registry.ENTRY,
written into every version as pyfunc_model.py) wraps `Classifier`, which builds a `Predictor` from
the weights file it carries (and, for a text model, the tokenizer.json it carries: raw strings in).
This module and the six it imports (models, transformer, text, evaluate, errors, fileio) are the only
project code the version ships (registry.SHIPPED); tests/code/test_serving_package.py checks that the
set is closed. Keep it that way: no mlflow, no config tree, no training code here.

Weights: an mlpipe model file (`.pt`: tensors + constructor arguments, read with
torch.load(weights_only=True)) or an ONNX file (int8 variants: graph + tensors, run by ONNX
Runtime). Neither unpickles code. The registry records the file's SHA-256 when it logs the model;
`Predictor.load` refuses a file that no longer matches it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from components import models, text
from components.errors import MlpipeError
from components.evaluate import softmax

ONNX_FORMAT = "mlpipe.onnx/1"
BATCH = 1024  # rows per forward pass: bounds activation memory on big inputs


class IntegrityError(MlpipeError):
    """A model artefact changed after registration."""


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
        # token-id models (components/transformer.py) take int64 ids; the rest float32
        self.dtype = np.int64 if self.session.get_inputs()[0].type == "tensor(int64)" else np.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *in_shape) -> (B, n_classes)
        x = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.dtype)
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def onnx_meta(path: str | Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def load_model_file(path: str | Path, threads: int = 0) -> tuple[nn.Module, dict, list[str]]:
    """Any variant's file -> (model ready for inference, spec, class names). Never unpickles code.
    A torch file comes back with BatchNorm folded and Dropout dropped (models.for_inference)."""
    path = Path(path)
    if path.suffix != ".onnx":
        model, spec, classes = models.load(path)
        return models.for_inference(model), spec, classes
    if not path.exists():
        raise MlpipeError(f"{path}: model file not found")
    meta = onnx_meta(path)
    if meta.get("format") != ONNX_FORMAT:
        raise MlpipeError(f"{path}: not an mlpipe ONNX model (expected metadata format {ONNX_FORMAT})")
    return OnnxModule(path, threads).eval(), json.loads(meta["spec"]), json.loads(meta["classes"])


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_hash(path: str | Path, expected: str | None, what: str = "weights file") -> None:
    """Refuse a file whose SHA-256 is not the one recorded at registration."""
    if not expected:
        raise IntegrityError(f"{Path(path).name}: no SHA-256 recorded for the {what}; refusing to load it")
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(
            f"{Path(path).name}: the {what} was changed after the model was registered "
            f"(sha256 {actual[:16]}..., registered {expected[:16]}...); refusing to load it"
        )


class Predictor:
    """A loaded model: raw features (N, *in_shape) in, or raw strings for a text model (its tokenizer,
    components/text.py, turns them into the token ids it was trained on); class probabilities,
    predictions or penultimate-layer embeddings out."""

    def __init__(self, model: nn.Module, spec: dict, classes: list[str], encoder: text.TextEncoder | None = None):
        self.model, self.spec, self.classes = model.eval(), spec, list(classes)
        self.shape = tuple(spec["args"]["in_shape"])
        self.encoder = encoder
        if encoder is not None and self.shape != (encoder.max_length,):
            raise MlpipeError(
                f"tokenizer: rows of {encoder.max_length} tokens, but the model takes shape {list(self.shape)}"
            )

    @classmethod
    def load(
        cls,
        path: str | Path,
        sha256: str | None = None,
        verify: bool = True,
        threads: int = 0,
        tokenizer: str | Path | None = None,
        tokenizer_sha256: str | None = None,
    ) -> Predictor:
        """verify: check the file (and the tokenizer of a text model) against sha256 (the hashes recorded
        when it was registered) first."""
        if verify:
            check_hash(path, sha256)
            if tokenizer is not None:
                check_hash(tokenizer, tokenizer_sha256, "tokenizer")
        encoder = text.TextEncoder.load(tokenizer) if tokenizer is not None else None
        return cls(*load_model_file(path, threads), encoder)

    def _rows(self, X) -> torch.Tensor:
        if self.encoder is not None:
            ids = np.asarray(X) if isinstance(X, np.ndarray) and np.issubdtype(X.dtype, np.integer) else None
            if ids is None:  # raw strings: tokenized as at ingest
                ids = self.encoder(text.as_texts(X))
            return torch.from_numpy(np.ascontiguousarray(ids.reshape((len(ids), *self.shape))))
        x = np.asarray(X.to_numpy() if isinstance(X, pd.DataFrame) else X, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.reshape((len(x), *self.shape))))

    def outputs(self, X, embed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """-> ((N, n_classes) logits, (N, D) penultimate-layer activations or None), one forward pass.
        The embedding is the input of the last Linear layer (D = the head's width); an ONNX model
        exposes only its outputs, so there the logits stand in (D = n_classes)."""
        x = self._rows(X)
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)] if embed else []
        seen: list[torch.Tensor] = []
        hook = linears[-1].register_forward_hook(lambda m, i, o: seen.append(i[0].flatten(1))) if linears else None
        try:
            with torch.inference_mode():
                out = [self.model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
        finally:
            if hook is not None:
                hook.remove()
        logits = torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), np.float32)
        if not embed:
            return logits, None
        return logits, (torch.cat(seen).numpy() if seen else logits)

    def logits(self, X) -> np.ndarray:  # (N, n_classes)
        return self.outputs(X)[0]

    def proba(self, X) -> np.ndarray:
        return softmax(self.logits(X))

    def predict(self, X) -> pd.DataFrame:
        """-> label (int64), class (name), confidence (probability of that class)."""
        return self.table(self.logits(X))

    def table(self, logits: np.ndarray) -> pd.DataFrame:
        proba = softmax(logits)
        label = proba.argmax(1)
        return pd.DataFrame(
            {
                "label": label.astype(np.int64),
                "class": np.asarray(self.classes, dtype=object)[label],
                "confidence": proba.max(1).astype(np.float64),
            }
        )

    def predict_embed(self, X, embed: bool = False) -> tuple[pd.DataFrame, np.ndarray | None]:
        """predict(X) and, with embed, embed(X), from one forward pass."""
        logits, emb = self.outputs(X, embed)
        return self.table(logits), emb

    def embed(self, X) -> np.ndarray:
        """(N, D) penultimate-layer activations (see outputs)."""
        return self.outputs(X, embed=True)[1]


class Classifier:
    """The registered model's logic: raw features (N, *feature_shape) in; label, class, confidence out.
    MLflow's models-from-code file (registry.ENTRY, written at registration) mixes in its PythonModel."""

    def load_context(self, context):
        cfg = context.model_config or {}
        self.predictor = Predictor.load(
            context.artifacts["model"],
            cfg.get("model_sha256"),
            tokenizer=context.artifacts.get("tokenizer"),  # text models: raw strings in
            tokenizer_sha256=cfg.get("tokenizer_sha256"),
        )
        self.reference_file = context.artifacts.get("reference")  # drift reference rows, if logged
        self.reference_sha256 = cfg.get("reference_sha256")

    def reference(self):
        """The training rows logged at registration (npz, array X) -> array, or None."""
        if not self.reference_file:
            return None
        check_hash(self.reference_file, self.reference_sha256, "drift reference sample")
        with np.load(self.reference_file, allow_pickle=False) as z:
            return z["X"]

    # the hint (a type MLflow infers no schema from) keeps MLflow's own input check: the signature's tensor spec
    def predict(self, context, model_input: np.ndarray, params=None):
        return self.predictor.predict(model_input)
