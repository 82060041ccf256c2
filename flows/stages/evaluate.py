"""evaluate: models/model.pt on the test split -> reports/eval (metrics, confusion matrix, learning curves)."""

from __future__ import annotations

import json

from components import data, evaluate, models, tracking, train
from components.config import Config
from components.fileio import write_json
from flows.paths import Paths


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("evaluate", parent):
        ds = data.load_prepared(paths.prepared, mmap=True)  # the test rows only are read, a batch at a time
        model, _, classes = models.load(paths.model_file)
        proba = evaluate.softmax(train.predict_logits(model, ds.X_test).numpy())
        metrics = {f"test_{k}": v for k, v in evaluate.classification_metrics(ds.y_test, proba).items()}
        cm = evaluate.confusion(ds.y_test, proba.argmax(1), len(classes))
        paths.eval_dir.mkdir(parents=True, exist_ok=True)
        evaluate.plot_confusion(cm, classes, paths.confusion_png)
        history = json.loads(paths.history.read_text())
        evaluate.plot_history(history["epochs"], paths.learning_curves)
        write_json(paths.confusion_json, {"classes": classes, "matrix": cm.tolist()})
        write_json(paths.eval_metrics, metrics)
        tracking.log_metrics(metrics)
        for f in (paths.eval_metrics, paths.confusion_json, paths.confusion_png, paths.learning_curves):
            tracking.log_artifact(f, "evaluate")
        return metrics
