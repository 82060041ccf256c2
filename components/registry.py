"""Model registry: log the model as an MLflow pyfunc, register every candidate, and move the
`champion` alias only through the promotion gate. Aliases and tags, never stages."""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components import gate
from components.errors import MlpipeError
from components.serving import Predictor, sha256_file

ALIAS = "champion"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas", "onnx", "onnxruntime"]  # onnx*: int8 variants
# the package: MLflow's models-from-code. The entry file and the only project modules it needs; no pickle
# MLflow's models-from-code file: the version's `python_model`, run at load. MLflow requires it to call
# mlflow.models.set_model itself, so it is written here (the one place that may import mlflow) at
# registration; the logic is components/serving.Classifier, shipped as code. Nothing is pickled.
ENTRY = """import mlflow
from components.serving import Classifier


class Model(Classifier, mlflow.pyfunc.PythonModel):
    pass


mlflow.models.set_model(Model())
"""
SHIPPED = (
    "__init__.py",
    "errors.py",
    "fileio.py",
    "models.py",
    "transformer.py",
    "evaluate.py",
    "serving.py",
    "text.py",
)
PACKAGE = "code/1"  # version tag mlpipe.package; versions of an older (pickled) package are not reused
REFERENCE_ROWS = 1000  # training rows logged with each model for drift checks
BASELINE_SHIPPED = ("__init__.py", "errors.py", "baseline.py")  # what a registered baseline runs


def log_model(model_file: Path, example, reference: np.ndarray | None = None, tokenizer: Path | None = None) -> str:
    """Log the model to the active run as a models-from-code pyfunc with signature and input
    example -> model URI. reference: training rows (a sample of REFERENCE_ROWS is kept) that drift
    checks compare new data with; they travel with the model. tokenizer: a text model's
    tokenizer.json (components/text.py), shipped inside the package: the pyfunc then takes raw strings
    (example: a few texts; its signature is one string column "text") and tokenizes them itself."""
    from mlflow.models import infer_signature

    model_file = Path(model_file)
    if tokenizer is not None:
        example = pd.DataFrame({"text": [str(t) for t in list(example)[:5]]})
    else:
        example = np.asarray(example[:5], dtype=np.float32)
    predictor = Predictor.load(model_file, verify=False, tokenizer=tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hints about integer columns
        signature = infer_signature(example, predictor.predict(example))
    config = {"model_sha256": sha256_file(model_file), "package": PACKAGE}
    requirements = PIP_REQUIREMENTS
    if tokenizer is not None:
        from importlib.metadata import version

        config["tokenizer_sha256"] = sha256_file(tokenizer)
        requirements = [*PIP_REQUIREMENTS, f"tokenizers=={version('tokenizers')}"]
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code" / "components"
        code.mkdir(parents=True)
        for name in SHIPPED:
            shutil.copy2(Path(__file__).with_name(name), code / name)
        entry = Path(tmp) / "pyfunc_model.py"
        entry.write_text(ENTRY)
        artifacts = {"model": str(model_file)}
        if tokenizer is not None:
            artifacts["tokenizer"] = str(tokenizer)
        if reference is not None:
            artifacts["reference"] = str(Path(tmp) / "reference.npz")
            np.savez(artifacts["reference"], X=reference_sample(reference))
            config["reference_sha256"] = sha256_file(artifacts["reference"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(entry),
                artifacts=artifacts,
                code_paths=[str(code)],
                model_config=config,
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
            )
    return info.model_uri


def log_sklearn(model, example: np.ndarray) -> str:
    """Log a baseline (components/baseline.py BaselineClassifier) to the active run as an MLflow
    sklearn model serialised with skops -> model URI. No pickle: skops stores the estimator's state
    and names its types; at load only scikit-learn's and BaselineClassifier are trusted (MLmodel's
    skops_trusted_types, checked here before logging). Its pyfunc is the sklearn flavor's, which
    calls model.predict: BaselineClassifier.predict returns label, class, confidence, the columns
    of the network's pyfunc. The code it needs travels with it (code/components: baseline.py and the
    package's __init__, errors)."""
    from mlflow.models import infer_signature

    from components import baseline

    if getattr(model, "text", False):  # a text baseline (TF-IDF) takes raw strings, as a text network does
        example = pd.DataFrame({"text": [str(t) for t in list(baseline._texts(example))[:5]]})
    else:
        example = np.asarray(example[:5], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hints about integer columns
        signature = infer_signature(example, model.predict(example))
    trusted = baseline.trusted_types(baseline.dumps(model))
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code" / "components"
        code.mkdir(parents=True)
        for name in BASELINE_SHIPPED:
            shutil.copy2(Path(__file__).with_name(name), code / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format="skops",
                skops_trusted_types=trusted,
                code_paths=[str(code)],
                signature=signature,
                input_example=example,
                pip_requirements=sklearn_requirements(),
            )
    return info.model_uri


def sklearn_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"scikit-learn=={version('scikit-learn')}", f"skops=={version('skops')}", "numpy", "pandas"]


def reference_sample(X: np.ndarray, n: int = REFERENCE_ROWS) -> np.ndarray:
    """n rows drawn without replacement (seeded, in their original order), float32; integer rows (a text
    model's token ids, which its embedding takes as they are) keep their integer type."""
    rows = np.sort(np.random.default_rng(0).choice(len(X), n, replace=False)) if len(X) > n else slice(None)
    return np.asarray(X[rows], dtype=X.dtype if np.issubdtype(X.dtype, np.integer) else np.float32)


def load(uri: str):
    """models:/name@champion, models:/name/3, runs:/... -> pyfunc model.

    MLflow runs the version's entry file and puts the version's code/ folder first on sys.path.
    The modules that file imports are already imported here (components.serving, at the top), and
    sys.path is restored afterwards, so the only code taken from the artefacts is the entry file
    (tests/code/test_serving_package.py)."""
    saved = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        raise MlpipeError(f"cannot load model {uri!r}: {str(e).splitlines()[0]}") from None
    finally:
        sys.path[:] = saved


@dataclass(frozen=True)
class ModelRef:
    """A model URI taken apart: models:/NAME@ALIAS (alias set), models:/NAME/VERSION, or another URI."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None


def parse_uri(uri: str) -> ModelRef:
    body = uri.removeprefix("models:/") if uri.startswith("models:/") else None
    if not body:
        return ModelRef(uri)
    if "@" in body:
        name, _, alias = body.partition("@")
        return ModelRef(uri, name, None, alias)
    name, _, version = body.rpartition("/")
    return ModelRef(uri, name or None, version or None) if version.isdigit() else ModelRef(uri)


def resolve(uri: str) -> ModelRef:
    """The version a models:/ URI names now (an alias looked up in the registry); a clear error when the
    registered model, its alias or its version does not exist. Other URIs are returned as they are."""
    ref = parse_uri(uri)
    if ref.name is None:
        return ref
    client = MlflowClient()
    try:
        model = client.get_registered_model(ref.name)
    except MlflowException as e:
        where = mlflow.get_registry_uri()
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise MlpipeError(f"{uri}: cannot read the registry at {where}: {e.message}") from None
        raise MlpipeError(f"{uri}: no registered model {ref.name!r} in the registry at {where}") from None
    if ref.alias is not None:
        if ref.alias not in (model.aliases or {}):
            have = ", ".join(f"@{a}" for a in sorted(model.aliases or {})) or "none"
            raise MlpipeError(f"{uri}: registered model {ref.name!r} has no alias @{ref.alias} (its aliases: {have})")
        return ModelRef(uri, ref.name, str(model.aliases[ref.alias]), ref.alias)
    try:
        client.get_model_version(ref.name, ref.version)
    except MlflowException:
        raise MlpipeError(f"{uri}: registered model {ref.name!r} has no version {ref.version}") from None
    return ref


def alias_reader(uri: str):
    """-> a function that returns the version the alias of `uri` (models:/NAME@ALIAS) names now: one
    registry read (get_model_version_by_alias, with one client), for a caller that reads it often; when
    the read fails, the error is resolve()'s, which says what does not exist."""
    ref = parse_uri(uri)
    client = MlflowClient()

    def read() -> ModelRef:
        try:
            version = client.get_model_version_by_alias(ref.name, ref.alias).version
            return ModelRef(uri, ref.name, str(version), ref.alias)
        except MlflowException:
            return resolve(uri)  # raises the clear error (or answers, if the alias came back meanwhile)

    return read


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(name, version).tags)


def link_run_to_version(run_id: str, name: str | None, version: str | None) -> None:
    """Record a registered version's logged model as an input of the run (MLflow's run -> model link)."""
    from mlflow.entities import LoggedModelInput

    if not (name and version):
        return
    mv = MlflowClient().get_model_version(name, version)
    # a version registered from models:/<model id> has that id as its source (its model_id is not always set)
    model_id = mv.model_id or (mv.source.removeprefix("models:/") if mv.source.startswith("models:/m-") else None)
    if model_id:
        MlflowClient().log_inputs(run_id, models=[LoggedModelInput(model_id)])


def invoke(pyfunc_model, body: bytes, content_type: str | None) -> tuple[int, str, str]:
    """MLflow's /invocations on a loaded model: the request body in any of the scoring server's formats
    (JSON dataframe_split / dataframe_records / instances / inputs, CSV, parquet) -> (HTTP status,
    content type, response body). Bad input is MLflow's JSON error with its status (400, 415)."""
    from mlflow.pyfunc import scoring_server

    try:
        r = scoring_server.invocations(body, content_type or "", pyfunc_model, pyfunc_model.metadata.get_input_schema())
    except MlflowException as e:
        return e.get_http_status_code(), "application/json", e.serialize_as_json()
    return r.status, r.mimetype, r.response


def _mlpipe_model(pyfunc_model):
    """The serving.Classifier inside a loaded model, or None (another flavor: a baseline)."""
    try:
        inner = pyfunc_model.unwrap_python_model()
    except MlflowException:
        return None
    return inner if hasattr(inner, "predictor") else None


class PyfuncPredictor:
    """Any other registered model (a scikit-learn baseline) behind Predictor's scoring interface: its own
    pyfunc predict (label, class, confidence), no embeddings."""

    def __init__(self, pyfunc_model):
        self.model, self.shape = pyfunc_model, input_shape(pyfunc_model)

    def predict_embed(self, X, embed: bool = False):
        if self.shape == ():  # a text baseline: raw strings, as they are
            return self.model.predict(X), None
        return self.model.predict(np.asarray(X, dtype=np.float32)), None


def predictor(pyfunc_model) -> Predictor | PyfuncPredictor:
    """The Predictor inside a loaded mlpipe model (probabilities, embeddings), else a PyfuncPredictor."""
    inner = _mlpipe_model(pyfunc_model)
    return inner.predictor if inner is not None else PyfuncPredictor(pyfunc_model)


def reference(pyfunc_model) -> np.ndarray | None:
    """The training rows logged with the model for drift checks (hash-checked), or None."""
    inner = _mlpipe_model(pyfunc_model)
    return inner.reference() if inner is not None else None


def register(model_uri: str, name: str, tags: dict) -> str:
    """Register a new version -> version number (as a string)."""
    tags = {**tags, "mlpipe.package": PACKAGE}
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def find_version(name: str, tags: dict):
    """The newest version of `name` carrying all these tags and the current package format, or None."""
    tags = {**tags, "mlpipe.package": PACKAGE}
    where = " and ".join([f"name='{name}'"] + [f"tags.`{k}`='{v}'" for k, v in tags.items()])
    found = MlflowClient().search_model_versions(where)
    return max(found, key=lambda v: int(v.version)) if found else None


def champion_version(name: str):
    try:
        return MlflowClient().get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def decide(challenger_acc: float, champion_acc: float | None, floor: float, tolerance: float) -> gate.Decision:
    """The gate on test accuracies alone: reach the floor, and do not trail the champion (re-measured
    on the same test data) by more than the tolerance. components/gate.py is the whole gate (the
    baseline and the fold rules); the register stage calls it."""
    champion = None if champion_acc is None else gate.Scores("champion", champion_acc)
    return gate.decide(gate.Scores("challenger", challenger_acc), champion, floor, tolerance)


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
    """The (C, H, W) or (F,) a logged model expects, from its signature; () for a text model (a column
    of raw strings)."""
    if takes_text(pyfunc_model):
        return ()
    spec = pyfunc_model.metadata.get_input_schema().inputs[0]
    return tuple(int(d) for d in spec.shape[1:])


def takes_text(pyfunc_model) -> bool:
    """Whether a logged model's signature is a column of strings (a text model that tokenizes inside)."""
    from mlflow.types import ColSpec, DataType

    schema = pyfunc_model.metadata.get_input_schema()
    inputs = schema.inputs if schema is not None else []
    return len(inputs) == 1 and isinstance(inputs[0], ColSpec) and inputs[0].type == DataType.string


# ---------------------------------------------------------------- model cards and lineage (issue 22)


def version_info(name: str, version: str) -> dict | None:
    """What the registry holds about a version, as plain values (None when it does not exist)."""
    try:
        v = MlflowClient().get_model_version(name, str(version))
    except MlflowException:
        return None
    return {
        "name": v.name,
        "version": str(v.version),
        "run_id": v.run_id,  # the run that logged the model (a register run)
        "source": v.source,
        "status": v.status,
        "created_ms": v.creation_timestamp,
        "aliases": sorted(v.aliases or []),
        "tags": dict(v.tags),
        "description": v.description or "",
    }


def versions_with_tags(name: str, tags: dict) -> list[dict]:
    """version_info of every version of `name` carrying all these tags, newest first."""
    where = " and ".join([f"name='{name}'"] + [f"tags.`{k}`='{v}'" for k, v in tags.items()])
    found = sorted(MlflowClient().search_model_versions(where), key=lambda v: -int(v.version))
    return [version_info(name, v.version) for v in found]


def set_description(name: str, version: str, text: str) -> None:
    """The version's description: the MLflow model page shows it as Markdown."""
    MlflowClient().update_model_version(name, str(version), description=text)


def version_url(tracking_uri: str, name: str, version: str) -> str | None:
    """The version's page in the MLflow UI when tracking goes to a server, else None."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}"
