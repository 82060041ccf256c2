"""The entry point of every registered model: MLflow's models-from-code file.

components/registry.py logs this file (not an object) as the version's `python_model`; MLflow
copies it into the version's artefacts and, at load, runs it, and it hands MLflow the model with
`mlflow.models.set_model`. Nothing is pickled: the weights are the mlpipe model file / ONNX file
among the version's artefacts, the code is this file plus the modules components/serving.py
needs (registry.SHIPPED), and the load checks the weights against the SHA-256 recorded when the
version was registered.

Why here, importing mlflow: MLflow requires the file itself to call `mlflow.models.set_model`,
so it must import mlflow. It lives beside registry.py because it is the registry's artefact and
must run in a fresh interpreter with only the shipped modules on the path (`mlflow models serve`);
import-linter allows it as the one exception to "only tracking.py and registry.py import mlflow"
(pyproject.toml). Project code never imports it: it has an import-time side effect by design."""

import mlflow
import numpy as np

from components.serving import Predictor, check_hash


class Classifier(mlflow.pyfunc.PythonModel):
    """Raw features (N, *feature_shape) in; label, class, confidence out."""

    def load_context(self, context):
        cfg = context.model_config or {}
        self.predictor = Predictor.load(context.artifacts["model"], cfg.get("model_sha256"))
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


mlflow.models.set_model(Classifier())
