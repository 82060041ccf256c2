"""baseline: classical scikit-learn models (components/baseline.py) on the prepared split, scored on
the test split and on the cv stage's folds; each model an MLflow child run -> reports/baseline/
(metrics.json, folds.json, table.md) and the best one's model file models/baseline/model.skops.
The register stage reads them back: the gate compares the network with the best baseline."""

from __future__ import annotations

import hashlib
import json
import time

from components import baseline, data, folds, textdata, tracking
from components.config import Config
from components.fileio import atomic_dir, write_json
from flows.paths import Paths


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """Fit the configured models, keep the best (highest mean fold accuracy); with
    baseline.enabled false, write reports that say so and no model."""
    with tracking.stage_run("baseline", parent) as run_id:
        t0 = time.perf_counter()
        m = data.load_meta(paths.prepared)
        b = cfg.baseline
        tracking.set_tags({"mlpipe.data_hash": m.content_hash})
        if not b.enabled:  # every declared output exists either way (dvc.yaml); no model file
            with atomic_dir(paths.baseline_models):
                pass
            _write(paths, {"enabled": False, "data_hash": m.content_hash}, {"data_hash": m.content_hash, "models": {}})
            paths.baseline_table.write_text("baseline.enabled: false\n")
            return {"enabled": False}
        ds = data.load_prepared(paths.prepared, mmap=True)
        wanted = {"image": b.image, "text": ("tfidf",)}.get(m.kind, b.tabular)
        models, skipped = baseline.plan(wanted, b.svc_max_rows, m.n_train)
        k = baseline.fold_count(ds.y_train, cfg.cv.folds)
        tracking.log_params({"baseline": cfg.section("baseline"), "folds": k, "kind": m.kind})

        def model_run(name: str):
            return tracking.stage_run(
                f"baseline/{name}", run_id, {"mlpipe.stage": "baseline.model", "mlpipe.baseline": name}
            )

        def on_model(r: baseline.Result) -> None:  # one write per model run
            buf = tracking.RunBuffer()
            buf.log_params({"model": r.name, **r.params})
            buf({name: v for name, v in r.summary().items() if isinstance(v, float)}, 0)
            for i, a in enumerate(r.folds):
                buf({"fold_accuracy": a}, i)
            buf.flush()

        if m.kind == "text":  # TF-IDF on the raw texts of the same split
            texts = textdata.load_texts(paths.prepared)
            X_train, X_test = (t["text"].to_numpy(dtype=object) for t in texts)
        else:
            X_train, X_test = ds.X_train, ds.X_test
        results = baseline.fit_all(
            models,
            X_train,
            ds.y_train,
            X_test,
            ds.y_test,
            m.classes,
            k,
            cfg.seed,
            b.C,
            b.threads,
            model_run=model_run,
            on_model=on_model,
        )
        top = baseline.best(results)
        with atomic_dir(paths.baseline_models) as tmp:
            baseline.save(top.model, tmp / paths.baseline_model.name)
        summaries = {r.name: r.summary() for r in results}
        best = summaries[top.name]
        key = folds.fold_key(m.content_hash, k, cfg.seed)
        seconds = time.perf_counter() - t0
        metrics = {
            "enabled": True,
            "data_hash": m.content_hash,
            "best": top.name,
            "model_key": model_key(m.content_hash, top, k, cfg.seed),
            "test_accuracy": best["test_accuracy"],
            "cv_accuracy_mean": best["cv_accuracy_mean"],
            "cv_accuracy_std": best["cv_accuracy_std"],
            "folds": k,
            "seconds": seconds,
            "skipped": skipped,
            "models": {n: {x: s[x] for x in s if x not in ("name", "fold_accuracy")} for n, s in summaries.items()},
        }
        fold_report = {
            "data_hash": m.content_hash,
            "fold_key": key,
            "folds": k,
            "seed": cfg.seed,
            "best": top.name,
            "models": {n: s["fold_accuracy"] for n, s in summaries.items()},
        }
        _write(paths, metrics, fold_report)
        paths.baseline_table.write_text(table(summaries, top.name, skipped) + "\n")
        tracking.log_metrics(
            {
                "best_test_accuracy": best["test_accuracy"],
                "best_cv_accuracy_mean": best["cv_accuracy_mean"],
                "seconds": seconds,
            }
        )
        tracking.set_tags({"mlpipe.baseline_best": top.name})
        for f in (paths.baseline_metrics, paths.baseline_folds, paths.baseline_table):
            tracking.log_artifact(f, "baseline")
        if parent:
            tracking.log_metrics(
                {
                    "baseline_test_accuracy": best["test_accuracy"],
                    "baseline_cv_accuracy_mean": best["cv_accuracy_mean"],
                },
                run_id=parent,
            )
        return {
            "enabled": True,
            "best": top.name,
            "test_accuracy": best["test_accuracy"],
            "cv_accuracy_mean": best["cv_accuracy_mean"],
            "cv_accuracy_std": best["cv_accuracy_std"],
            "folds": k,
            "seconds": seconds,
            "models": {
                n: {"test_accuracy": s["test_accuracy"], "cv_accuracy_mean": s["cv_accuracy_mean"]}
                for n, s in summaries.items()
            },
            "skipped": skipped,
        }


def _write(paths: Paths, metrics: dict, folds: dict) -> None:
    paths.baseline_dir.mkdir(parents=True, exist_ok=True)
    write_json(paths.baseline_metrics, metrics)
    write_json(paths.baseline_folds, folds)


def model_key(data_hash: str, r: baseline.Result, folds: int, seed: int) -> str:
    """Names the fitted model by what made it (the fits are deterministic given these), so a
    re-run registers no copy: skops files of the same model differ byte for byte."""
    import sklearn

    what = {
        "data": data_hash,
        "model": r.name,
        "params": r.params,
        "folds": folds,
        "seed": seed,
        "sklearn": sklearn.__version__,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def table(summaries: dict[str, dict], best: str, skipped: dict[str, str]) -> str:
    rows = [
        "| model | params | test accuracy | test macro F1 | cv accuracy (mean +- std) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for n, s in summaries.items():
        params = ", ".join(f"{k}={v:g}" for k, v in s["params"].items()) or "defaults"
        rows.append(
            f"| {n}{' (best)' if n == best else ''} | {params} | {s['test_accuracy']:.4f} | {s['test_f1_macro']:.4f} "
            f"| {s['cv_accuracy_mean']:.4f} +- {s['cv_accuracy_std']:.4f} | {s['seconds']:.2f} |"
        )
    rows += [f"| {n} | left out: {why} | | | | |" for n, why in skipped.items()]
    return "\n".join(rows)
