"""Paths: the one catalog of every file and folder a stage or tool reads or writes.

Code receives a Paths; nothing builds a project path from a root string. The layout:

    data/prepared/  data/augmented/          ingest, augment (DVC outputs)
    reports/{validation,baseline,tune,cv,eval,compress}/  reports/promotion.json
    models/model.pt  models/history.json  models/checkpoints/  models/compressed/  models/baseline/
    .mlpipe/                                 local state: locks, Optuna journal, job files, Prefect
                                             results, server pid files and logs (never versioned)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    # ---- data
    @property
    def prepared(self) -> Path:  # ingest: X/y arrays + meta.json
        return self.root / "data" / "prepared"

    @property
    def augmented(self) -> Path:  # augment: policy.json, preview.png
        return self.root / "data" / "augmented"

    @property
    def augment_policy(self) -> Path:
        return self.augmented / "policy.json"

    @property
    def augment_preview(self) -> Path:
        return self.augmented / "preview.png"

    # ---- reports
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def validation(self) -> Path:
        return self.reports / "validation"

    @property
    def validation_report(self) -> Path:
        return self.validation / "report.json"

    @property
    def validation_docs(self) -> Path:  # GX data docs (HTML)
        return self.validation / "docs"

    @property
    def baseline_dir(self) -> Path:
        return self.reports / "baseline"

    @property
    def baseline_metrics(self) -> Path:  # the best baseline and every model's scores (DVC metrics)
        return self.baseline_dir / "metrics.json"

    @property
    def baseline_folds(self) -> Path:  # fold scores of every model, their fold key; read back by register
        return self.baseline_dir / "folds.json"

    @property
    def baseline_table(self) -> Path:
        return self.baseline_dir / "table.md"

    @property
    def tune_dir(self) -> Path:
        return self.reports / "tune"

    @property
    def best_params(self) -> Path:  # written by tune, read by cv and train
        return self.tune_dir / "best_params.json"

    @property
    def trials_csv(self) -> Path:
        return self.tune_dir / "trials.csv"

    @property
    def cv_dir(self) -> Path:
        return self.reports / "cv"

    @property
    def cv_metrics(self) -> Path:
        return self.cv_dir / "cv_metrics.json"

    @property
    def cv_folds(self) -> Path:
        return self.cv_dir / "cv_folds.json"

    @property
    def eval_dir(self) -> Path:
        return self.reports / "eval"

    @property
    def eval_metrics(self) -> Path:
        return self.eval_dir / "metrics.json"

    @property
    def confusion_json(self) -> Path:
        return self.eval_dir / "confusion_matrix.json"

    @property
    def confusion_png(self) -> Path:
        return self.eval_dir / "confusion_matrix.png"

    @property
    def learning_curves(self) -> Path:
        return self.eval_dir / "learning_curves.png"

    @property
    def compress_dir(self) -> Path:
        return self.reports / "compress"

    @property
    def compress_table(self) -> Path:  # one row per variant; read back by register
        return self.compress_dir / "table.json"

    @property
    def compress_table_md(self) -> Path:
        return self.compress_dir / "table.md"

    @property
    def compress_metrics(self) -> Path:
        return self.compress_dir / "metrics.json"

    @property
    def compress_pareto(self) -> Path:
        return self.compress_dir / "pareto.png"

    @property
    def explain_dir(self) -> Path:  # explain: attributions of models/model.pt on test rows
        return self.reports / "explain"

    @property
    def explain_summary(self) -> Path:  # what was explained, how, the top features; read by register (model cards)
        return self.explain_dir / "attributions.json"

    @property
    def explain_arrays(self) -> Path:  # the class maps or importances behind the plots
        return self.explain_dir / "attributions.npz"

    @property
    def explain_class_maps(self) -> Path:  # images: mean integrated gradients per class
        return self.explain_dir / "class_maps.png"

    @property
    def explain_examples(self) -> Path:  # images: a few rows and their attributions
        return self.explain_dir / "examples.png"

    @property
    def explain_importance(self) -> Path:  # tables: permutation importance of the top features
        return self.explain_dir / "importance.png"

    @property
    def promotion(self) -> Path:
        return self.reports / "promotion.json"

    @property
    def dvc_lock(self) -> Path:  # `dvc repro`'s record of every stage's outputs (read by `mlpipe lineage`)
        return self.root / "dvc.lock"

    # ---- models
    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    @property
    def model_file(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def history(self) -> Path:
        return self.model_dir / "history.json"

    @property
    def checkpoints(self) -> Path:
        return self.model_dir / "checkpoints"

    @property
    def compressed(self) -> Path:  # one file per variant
        return self.model_dir / "compressed"

    @property
    def baseline_models(self) -> Path:  # the best baseline's model file; empty with baseline.enabled false
        return self.model_dir / "baseline"

    @property
    def baseline_model(self) -> Path:  # skops, never pickle (components/baseline.py)
        return self.baseline_models / "model.skops"

    # ---- local state (.mlpipe/)
    @property
    def state(self) -> Path:
        return self.root / ".mlpipe"

    @property
    def run_lock(self) -> Path:  # one pipeline run or stage per project folder at a time
        return self.state / "run.lock"

    @property
    def run_budget(self) -> Path:  # a budgeted run's start, seconds spent and plan; a re-run resumes it
        return self.state / "budget.json"

    @property
    def run_logs(self) -> Path:  # a failed `mlpipe run`'s full traceback, one file per failure
        return self.state / "logs"

    @property
    def cache_dir(self) -> Path:  # per cached stage result: the content hashes of what it wrote
        return self.state / "cache"

    def cache_manifest(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    @property
    def prefect_results(self) -> Path:  # persisted results of cached stage tasks
        return self.state / "prefect-results"

    @property
    def promote_lock(self) -> Path:
        return self.state / "promote.lock"

    @property
    def optuna_dir(self) -> Path:
        return self.state / "optuna"

    @property
    def optuna_journal(self) -> Path:  # the default study storage (tune.storage null)
        return self.optuna_dir / "journal.log"

    def study_lock(self, study: str) -> Path:  # one tune stage per study
        return self.optuna_dir / f"{study}.stage.lock"

    def budget_lock(self, study: str) -> Path:  # workers claim trials of the study's budget under it
        return self.optuna_dir / f"{study}.budget.lock"

    def tune_job(self, study: str, worker: int) -> Path:  # a tune worker process's job file
        return self.optuna_dir / "jobs" / f"{study}-{worker}.json"

    @property
    def train_job(self) -> Path:  # the DDP launcher's folder
        return self.state / "train"

    @property
    def train_config(self) -> Path:  # the resolved config every rank reads
        return self.train_job / "config.yaml"

    @property
    def train_error(self) -> Path:  # a user-facing error a rank reported
        return self.train_job / "error.json"

    @property
    def train_logs(self) -> Path:
        return self.train_job / "logs"

    @property
    def servers(self) -> Path:  # `mlpipe serve`: pid files and logs
        return self.state / "servers"

    def server_pid(self, name: str) -> Path:
        return self.servers / f"{name}.pid"

    def server_log(self, name: str) -> Path:
        return self.servers / f"{name}.log"

    def relative(self, path: Path) -> str:
        """A catalog path relative to the project root, as dvc.yaml writes it."""
        return Path(path).relative_to(self.root).as_posix()
