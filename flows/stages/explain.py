"""explain: attributions of models/model.pt on a bounded sample of test rows (components/explain.py)
-> reports/explain/ (attributions.json, attributions.npz, and the plots: class maps and examples for
images, permutation importance for tables). The register stage puts them on each version's model card."""

from __future__ import annotations

import hashlib

import numpy as np

from components import data, explain, models, tracking
from components.config import Config
from components.fileio import atomic_dir, write_json
from flows.paths import Paths


def model_hash(paths: Paths) -> str:
    """As the compress stage hashes a model file (the versions' tag mlpipe.model_hash)."""
    return hashlib.sha256(paths.model_file.read_bytes()).hexdigest()[:16]


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("explain", parent) as run_id:
        m = data.load_meta(paths.prepared)
        record = {"data_hash": m.content_hash, "model_hash": model_hash(paths), "run_id": run_id}
        tracking.set_tags({"mlpipe.data_hash": m.content_hash, "mlpipe.model_hash": record["model_hash"]})
        tracking.log_params(cfg.section("explain"))
        if not cfg.explain.enabled or m.kind not in ("image", "tabular"):
            why = "explain.enabled is false" if not cfg.explain.enabled else f"no attribution method for {m.kind} data"
            with atomic_dir(paths.explain_dir) as tmp:  # the declared output exists either way (dvc.yaml)
                write_json(tmp / paths.explain_summary.name, {**record, "method": None, "status": why})
            return {"method": None, "status": why}
        ds = data.load_prepared(paths.prepared, mmap=True)  # explain reads a bounded sample of test rows
        model, _, classes = models.load(paths.model_file)
        a = explain.explain(model, ds.X_test, ds.y_test, m.kind, classes, cfg.explain, m.feature_names)
        summary = {**record, **a.summary(), "config": cfg.section("explain")}
        with atomic_dir(paths.explain_dir) as tmp:
            arrays = {"rows": a.rows}
            if a.class_maps is not None:
                arrays.update(class_maps=a.class_maps, example_maps=a.example_maps)
                explain.plot_class_maps(a, tmp / paths.explain_class_maps.name)
                explain.plot_examples(a, ds.X_test, ds.y_test, tmp / paths.explain_examples.name)
            else:
                arrays.update(importance_mean=a.importance_mean, importance_std=a.importance_std)
                explain.plot_importance(a, tmp / paths.explain_importance.name)
            np.savez(tmp / paths.explain_arrays.name, **arrays)
            summary["plots"] = sorted(p.name for p in tmp.glob("*.png"))
            write_json(tmp / paths.explain_summary.name, summary)
        tracking.log_metrics({"samples": len(a.rows), "evaluations": a.evaluations, "seconds": a.seconds})
        tracking.log_artifact(paths.explain_dir, "explain")
        return {"method": a.method, "samples": len(a.rows), "seconds": round(a.seconds, 3)}
