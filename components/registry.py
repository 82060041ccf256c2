"""Model registry: log the model as an MLflow pyfunc, register every candidate, and move the
`champion` alias only through the promotion gate. Aliases and tags, never stages."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import components
from components.errors import MlpipeError

ALIAS = "champion"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas", "onnx", "onnxruntime"]  # onnx*: int8 variants


class Classifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw features (N, *feature_shape) in, label/class/confidence out.

    The weights travel as an mlpipe model file (tensors + constructor args, loaded with
    weights_only=True) or, for int8 variants, as an ONNX file run by ONNX Runtime; the class itself
    travels as code (code_paths), not as pickled state."""

    def load_context(self, context):
        from components.compress import load_model_file

        self.model, self.spec, self.classes = load_model_file(context.artifacts["model"])
        self.shape = tuple(self.spec["args"]["in_shape"])

    def predict_proba(self, X) -> np.ndarray:
        import torch

        from components.evaluate import softmax
        from components.train import predict_logits

        x = np.asarray(X.to_numpy() if isinstance(X, pd.DataFrame) else X, dtype=np.float32)
        x = x.reshape((len(x), *self.shape))
        with torch.inference_mode():
            return softmax(predict_logits(self.model, x).numpy())

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        proba = self.predict_proba(model_input)
        label = proba.argmax(1)
        return pd.DataFrame(
            {
                "label": label.astype(np.int64),
                "class": [self.classes[i] for i in label],
                "confidence": proba.max(1).astype(np.float64),
            }
        )


def log_model(model_file: Path, example: np.ndarray) -> str:
    """Log the model to the active run as a pyfunc with signature and input example -> model URI."""
    from mlflow.models import infer_signature

    model_file = Path(model_file)
    wrapper = Classifier()
    wrapper.load_context(type("Ctx", (), {"artifacts": {"model": str(model_file)}})())
    example = np.asarray(example[:5], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hints about integer columns and cloudpickle: see the class docstring
        signature = infer_signature(example, wrapper.predict(None, example))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _log(model_file, signature, example)


def _log(model_file: Path, signature, example) -> str:
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=Classifier(),
        artifacts={"model": str(model_file)},
        code_paths=[str(Path(components.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
    )
    return info.model_uri


def load(uri: str):
    """models:/name@champion, models:/name/3, runs:/... -> pyfunc model."""
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        raise MlpipeError(f"cannot load model {uri!r}: {str(e).splitlines()[0]}") from None


def register(model_uri: str, name: str, tags: dict) -> str:
    """Register a new version -> version number (as a string)."""
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def find_version(name: str, tags: dict):
    """The newest version of `name` carrying all these tags, or None."""
    where = " and ".join([f"name='{name}'"] + [f"tags.`{k}`='{v}'" for k, v in tags.items()])
    found = MlflowClient().search_model_versions(where)
    return max(found, key=lambda v: int(v.version)) if found else None


def champion_version(name: str):
    try:
        return MlflowClient().get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide(challenger_acc: float, champion_acc: float | None, floor: float, tolerance: float) -> Decision:
    """The gate: reach the floor, and do not trail the champion (re-measured on the same test
    data) by more than the tolerance."""
    reasons, ok = [], True
    if challenger_acc >= floor:
        reasons.append(f"accuracy {challenger_acc:.4f} >= floor {floor:.4f}")
    else:
        ok = False
        reasons.append(f"accuracy {challenger_acc:.4f} < floor {floor:.4f}")
    if champion_acc is None:
        reasons.append("no current champion")
    elif challenger_acc >= champion_acc - tolerance:
        reasons.append(f"accuracy {challenger_acc:.4f} >= champion {champion_acc:.4f} - tolerance {tolerance:.4f}")
    else:
        ok = False
        reasons.append(f"accuracy {challenger_acc:.4f} < champion {champion_acc:.4f} - tolerance {tolerance:.4f}")
    return Decision(ok, reasons)


def set_champion(name: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, ALIAS, version)


def tag_version(name: str, version: str, tags: dict) -> None:
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v)[:5000])


def decide_interrupted(name: str) -> list[str]:
    """Give the versions of `name` that have no decision (their register stage was killed between
    registering and deciding) the decision "interrupted" -> their version numbers."""
    client = MlflowClient()
    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    out = []
    for v in found:
        if "mlpipe.decision" not in v.tags:
            tag_version(
                name,
                v.version,
                {
                    "mlpipe.decision": "interrupted",
                    "mlpipe.reasons": "the register stage that created it ended before deciding; not promoted",
                },
            )
            out.append(str(v.version))
    return out


def promotion_record(name: str, version: str) -> dict:
    """The gate's outcome for a version as the registry holds it (the source of truth)."""
    tags = MlflowClient().get_model_version(name, version).tags
    champion = champion_version(name)
    return {
        "model_name": name,
        "version": str(version),
        "decision": tags.get("mlpipe.decision"),
        "promoted": tags.get("mlpipe.decision") == "promoted",
        "reasons": [r for r in tags.get("mlpipe.reasons", "").split("; ") if r],
        "champion": None if champion is None else str(champion.version),
    }


def input_shape(pyfunc_model) -> tuple[int, ...]:
    """The (C, H, W) or (F,) a logged model expects, from its signature."""
    spec = pyfunc_model.metadata.get_input_schema().inputs[0]
    return tuple(int(d) for d in spec.shape[1:])
