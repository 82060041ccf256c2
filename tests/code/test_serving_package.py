"""The registered model package (issue 21): models-from-code, no pickle, only the modules inference
needs, the weights checked against the hash recorded at registration, and nothing but the entry
file run from the artefacts when mlpipe loads a version. Real MLflow store in a tmp folder."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from components import compress, models, registry, tracking
from components.config import ModelConfig, TrackingConfig
from components.errors import MlpipeError
from tests.conftest import REPO

SHAPE = (1, 8, 8)
CLASSES = ["bar", "dot"]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE)).astype(np.float32) * 16


def make_store(root: Path, name: str = "mlpipe-t", seeds=(0,), onnx: bool = False) -> dict[str, str]:
    """A project folder with an MLflow store (sqlite, mlartifacts/) holding one version of `name` per
    seed (untrained 1 x 8 x 8 CNNs, each with a drift reference sample), plus an ONNX version when asked;
    the first is @champion. -> {label: version}. The caller's tracking URI is left on this store."""
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    tracking.setup(TrackingConfig(), root)
    spec = models.model_args(ModelConfig(hidden=(16,), channels=(8, 16)), SHAPE, len(CLASSES), "image")
    files = {}
    for seed in seeds:
        torch.manual_seed(seed)
        model = models.build(spec)
        model.norm.fit(rows(64))
        files[f"seed{seed}"] = root / f"model-{seed}.pt"
        models.save(model, spec, CLASSES, files[f"seed{seed}"])
    if onnx:
        files["onnx"] = compress.export_onnx(models.load(files["seed0"])[0], spec, CLASSES, root / "int8.onnx", "int8")
    out = {}
    for label, f in files.items():
        with mlflow.start_run(run_name=f"log-{label}"):
            uri = registry.log_model(f, rows(5), rows(300, seed=1))
        out[label] = registry.register(uri, name, {"variant": "int8" if f.suffix == ".onnx" else "fp32"})
    registry.set_champion(name, out[f"seed{seeds[0]}"])
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by mlflow.set_tracking_uri; tests' subprocesses pick their own
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    versions = make_store(root, onnx=True)
    return root, versions


def version_dir(root: Path, version: str) -> Path:
    from mlflow.tracking import MlflowClient

    tracking.setup(TrackingConfig(), root)
    mv = MlflowClient().get_model_version("mlpipe-t", version)
    model_id = mv.model_id or mv.source.split("/")[-1]
    return next(p for p in (root / "mlartifacts").rglob(model_id) if p.is_dir()) / "artifacts"


def _project_imports(body: list) -> set[str]:
    """components.* modules imported by these statements, outside `if TYPE_CHECKING:` blocks."""
    out: set[str] = set()
    for node in body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("components"):
            out |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("components.")}
        for field in ("body", "orelse", "finalbody", "handlers"):
            out |= _project_imports(getattr(node, field, []) or [])
    return out


def test_the_shipped_modules_are_all_that_serving_imports():
    """registry.SHIPPED is closed: every components.* module they or the entry file import is shipped."""
    shipped = {Path(f).stem for f in registry.SHIPPED} - {"__init__"}
    assert {"serving", "models"} <= shipped and not {"registry", "config", "train", "compress"} & shipped
    sources = {f"components/{name}.py": (REPO / "components" / f"{name}.py").read_text() for name in shipped}
    for name, text in {**sources, "registry.ENTRY": registry.ENTRY}.items():
        found = _project_imports(ast.parse(text).body)
        assert found <= shipped, f"{name} imports {sorted(found - shipped)}, not in registry.SHIPPED"


def test_no_pickle_in_any_registered_version_and_only_the_needed_code(store):
    root, versions = store
    found = [p for p in (root / "mlartifacts").rglob("*") if p.is_file()]
    assert found
    for p in found:
        assert p.suffix not in (".pkl", ".pickle"), p
        head = p.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"{p} is a pickle"
    for label, v in versions.items():
        art = version_dir(root, v)
        code = sorted(p.name for p in (art / "code" / "components").iterdir())
        assert code == sorted(registry.SHIPPED), label
        assert (art / "pyfunc_model.py").read_text() == registry.ENTRY
        weights = [p.name for p in (art / "artifacts").iterdir()]
        assert sorted(weights) == sorted(["reference.npz", "int8.onnx" if label == "onnx" else "model-0.pt"]), weights


def test_every_variant_loads_and_predicts_like_the_file(store):
    root, versions = store
    tracking.setup(TrackingConfig(), root)
    X = rows(7, seed=3)
    want = registry.Predictor.load(root / "model-0.pt", verify=False).predict(X)
    for label, v in versions.items():
        pred = registry.load(f"models:/mlpipe-t/{v}").predict(X)
        assert list(pred.columns) == ["label", "class", "confidence"], label
        np.testing.assert_array_equal(pred["label"], want["label"])
        np.testing.assert_allclose(pred["confidence"], want["confidence"], atol=1e-4)
    ref = registry.reference(registry.load("models:/mlpipe-t@champion"))
    np.testing.assert_array_equal(ref, rows(300, seed=1))


def test_a_weights_file_changed_after_registration_is_refused(store):
    root, versions = store
    weights = version_dir(root, versions["seed0"]) / "artifacts" / "model-0.pt"
    original = weights.read_bytes()
    tracking.setup(TrackingConfig(), root)
    try:
        payload = torch.load(weights, weights_only=True)  # a plausible attack: same format, other weights
        last_bias = [k for k in payload["state_dict"] if k.endswith("bias")][-1]
        payload["state_dict"][last_bias] += 5.0
        torch.save(payload, weights)
        with pytest.raises(
            MlpipeError, match=r"model-0.pt: the weights file was changed after the model was registered"
        ):
            registry.load(f"models:/mlpipe-t/{versions['seed0']}")
    finally:
        weights.write_bytes(original)
    registry.load(f"models:/mlpipe-t/{versions['seed0']}")  # restored: loads again


def test_mlpipe_runs_no_code_from_the_artefacts_but_the_entry_file(store, tmp_path):
    root, versions = store
    art = version_dir(root, versions["seed0"])
    shipped = art / "code" / "components" / "serving.py"
    original = shipped.read_text()
    marker = tmp_path / "ran"
    tracking.setup(TrackingConfig(), root)
    path_before = list(sys.path)
    try:
        shipped.write_text(original + f"\nopen({str(marker)!r}, 'w').close()\n")  # runs if this copy is imported
        pred = registry.load(f"models:/mlpipe-t/{versions['seed0']}").predict(rows(3))
        assert len(pred) == 3 and not marker.exists()
        assert sys.path == path_before  # MLflow's code/ entry is not left in front of the project's modules
        # a fresh interpreter (what `mlflow models serve` is) runs the shipped copies, and they suffice
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        script = (
            "import mlflow, numpy as np, sys\n"
            f"m = mlflow.pyfunc.load_model('models:/mlpipe-t/{versions['seed0']}')\n"
            "print(len(m.predict(np.zeros((2, 1, 8, 8), np.float32))), sys.modules['components.serving'].__file__)\n"
        )
        r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        n, where = r.stdout.split()[-2:]
        assert n == "2" and not where.startswith(str(REPO)) and where.endswith("code/components/serving.py"), where
        assert marker.exists()
    finally:
        shipped.write_text(original)
