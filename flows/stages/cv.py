"""cv: stratified k-fold cross-validation of the tuned config over the training split; each fold
an MLflow child run -> reports/cv/cv_metrics.json (mean and std of every metric), cv_folds.json."""

from __future__ import annotations

from components import cv, data, models, tracking, train, tune
from components.config import Config
from components.fileio import write_json
from flows.paths import Paths


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """k-fold CV of the tuned config over the training split; mean and std of every metric."""
    with tracking.stage_run("cv", parent) as run_id:
        m = data.load_meta(paths.prepared)
        tracking.set_tags({"mlpipe.data_hash": m.content_hash})
        if not cfg.cv.enabled:  # both declared outputs exist either way (dvc.yaml); no data is read
            write_json(paths.cv_metrics, {"folds": 0})
            write_json(paths.cv_folds, {"data_hash": m.content_hash, "folds": []})
            return {"folds": 0}
        cfg = tune.apply_best(cfg, paths.best_params, m.content_hash)
        ds = data.load_prepared(paths.prepared, mmap=True)  # folds are index views of the mapped rows
        cv.check_folds(ds.y_train, m.classes, cfg.cv.folds)  # before any training
        spec = models.spec_for(cfg.model, m)
        train.set_threads(cfg.train.num_threads)
        tracking.log_params(
            {
                "folds": cfg.cv.folds,
                "model": cfg.section("model"),
                "train": cfg.section("train"),
                "augment": cfg.section("augment"),
            }
        )

        def fold_run(i: int):
            return tracking.stage_run(f"fold-{i}", run_id, {"mlpipe.stage": "cv.fold", "mlpipe.fold": i})

        def on_fold(f: cv.Fold) -> None:
            tracking.log_metrics({**{f"fold_{k}": v for k, v in f.metrics.items()}, "best_epoch": f.best_epoch})

        folds = cv.cross_validate(
            ds.X_train,
            ds.y_train,
            spec,
            cfg,
            m.kind,
            m.value_range,
            m.classes,
            fold_log=lambda i: tracking.metric_logger(),
            on_fold=on_fold,
            fold_run=fold_run,
        )
        summary = cv.summarize(folds)
        write_json(paths.cv_metrics, summary)
        write_json(
            paths.cv_folds,
            {
                "data_hash": m.content_hash,
                "tuned": paths.best_params.exists(),
                "seed": cfg.seed,  # with data_hash and the fold count, names the folds (components/folds.py)
                "folds": [
                    {"fold": f.index, "best_epoch": f.best_epoch, "epochs_run": f.epochs_run, **f.metrics}
                    for f in folds
                ],
            },
        )
        tracking.log_metrics({f"cv_{k}": v for k, v in summary.items()})
        for f in (paths.cv_metrics, paths.cv_folds):
            tracking.log_artifact(f, "cv")
        if parent:
            tracking.log_metrics({f"cv_{k}": v for k, v in summary.items()}, run_id=parent)
        return summary
