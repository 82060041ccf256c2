"""Pipeline stages: run_<stage>(cfg, paths, parent_run_id) -> small JSON-able summary.

Files on disk are the contract between stages: each reads what the previous one wrote. The
Prefect tasks (flows/pipeline.py) and `mlpipe stage NAME` (dvc.yaml) call these same functions.
An MLflow child run is opened per stage under the pipeline run, or a top-level run when a stage
runs alone (under DVC)."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path


from components import augment, data, evaluate, measure, models, registry, tracking, train, tune, validate
from components.config import Config
from components.fileio import write_json

STAGES = ("ingest", "validate", "augment", "tune", "cv", "train", "evaluate", "compress", "register")


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def augmented(self) -> Path:
        return self.root / "data" / "augmented"

    @property
    def validation(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def tune_dir(self) -> Path:
        return self.root / "reports" / "tune"

    @property
    def best_params(self) -> Path:  # written by tune, read by cv and train
        return self.tune_dir / "best_params.json"

    @property
    def cv_dir(self) -> Path:
        return self.root / "reports" / "cv"

    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    @property
    def model_file(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def eval_dir(self) -> Path:
        return self.root / "reports" / "eval"

    @property
    def promotion(self) -> Path:
        return self.root / "reports" / "promotion.json"

    @property
    def state(self) -> Path:  # local state: locks, Prefect results
        return self.root / ".mlpipe"

    def outputs(self, stage: str) -> list[Path]:
        """What a stage writes; a cached stage whose outputs are gone must run again."""
        return {
            "ingest": [self.prepared / "meta.json"],
            "validate": [self.validation / "report.json"],
            "augment": [self.augmented / "policy.json"],
            "tune": [self.best_params],
            "cv": [self.cv_dir / "cv_metrics.json"],
            "train": [self.model_file, self.model_dir / "history.json"],
            "evaluate": [self.eval_dir / "metrics.json"],
            "compress": [self.root / "reports" / "compress" / "table.json", self.model_dir / "compressed"],
            "register": [self.promotion],
        }[stage]


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_ingest(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("ingest", parent):
        ds = data.ingest(cfg.data, cfg.seed, list(cfg.data.classes) if cfg.data.classes else None)
        data.save_prepared(ds, paths.prepared)
        m = ds.meta
        tracking.log_params({"source": m.source, "kind": m.kind, "feature_shape": m.feature_shape, "n_classes": m.n_classes})
        tracking.log_metrics({"n_train": m.n_train, "n_test": m.n_test})
        tracking.set_tags({"mlpipe.data_hash": m.content_hash})
        tracking.log_dataset(ds.X_train, ds.y_train, f"{data.dataset_name(m.source)}-train", str(paths.prepared), m.content_hash, "training")
        tracking.log_dataset(ds.X_test, ds.y_test, f"{data.dataset_name(m.source)}-test", str(paths.prepared), m.content_hash, "testing")
        tracking.log_artifact(paths.prepared / "meta.json")
        return {"data_hash": m.content_hash, "n_train": m.n_train, "n_test": m.n_test, "classes": m.classes}


def run_validate(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """Fails (ValidationFailed) when the suite fails; the report is written and logged first."""
    with tracking.stage_run("validate", parent):
        ds = data.load_prepared(paths.prepared)
        docs = paths.validation / "docs"
        report = validate.validate(ds, cfg.validate_, docs_dir=docs)
        write_json(paths.validation / "report.json", {"data_hash": ds.meta.content_hash, **report.to_dict()})
        tracking.log_metrics({"expectations": report.n_expectations, "failed": len(report.failures)})
        tracking.set_tags({"mlpipe.validation": "passed" if report.success else "failed", "mlpipe.data_hash": ds.meta.content_hash})
        tracking.log_artifact(paths.validation / "report.json", "validation")
        if docs.exists():
            tracking.log_artifact(docs, "validation/data_docs")
        validate.require_valid(report, str(paths.prepared))
        return {"success": True, "expectations": report.n_expectations, "data_hash": ds.meta.content_hash}


def _preview(ds: data.Prepared, aug, seed: int, path: Path) -> None:
    """Originals (top row) and their augmented versions (below): a visual check of the policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    n = min(8, len(ds.X_train))
    x = torch.as_tensor(ds.X_train[:n])
    g = torch.Generator().manual_seed(seed)
    rows = [x] + [aug(x, g) if aug else x for _ in range(3)]
    fig, axes = plt.subplots(len(rows), n, figsize=(n, len(rows)), squeeze=False)
    for r, batch in enumerate(rows):
        for c in range(n):
            img = batch[c].numpy()
            axes[r][c].imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0).clip(0, 1), cmap="gray")
            axes[r][c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_augment(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """Resolves the training-time augmentation policy and renders a preview. The transforms
    themselves run on the fly inside training, on training batches only."""
    with tracking.stage_run("augment", parent):
        ds = data.load_prepared(paths.prepared, mmap=True)
        policy = augment.describe(cfg.augment, ds.meta.kind)
        paths.augmented.mkdir(parents=True, exist_ok=True)
        if ds.meta.kind == "image":
            aug = augment.build_augment(cfg.augment, "image", ds.X_train, ds.meta.value_range)
            _preview(ds, aug, cfg.seed, paths.augmented / "preview.png")
            tracking.log_artifact(paths.augmented / "preview.png", "augment")
        write_json(paths.augmented / "policy.json", {"data_hash": ds.meta.content_hash, **policy})
        tracking.log_params(cfg.section("augment"))
        tracking.log_artifact(paths.augmented / "policy.json", "augment")
        return policy


def run_train(cfg: Config, paths: Paths, parent: str | None = None, progress: bool = True) -> dict:
    """One process, or train.distributed.nproc_per_node DDP ranks (flows/train_worker.py); either
    way one MLflow run, to which only rank 0 logs. Resumes from models/checkpoints."""
    from flows import train_worker

    with tracking.stage_run("train", parent) as run_id:
        cfg = tune.apply_best(cfg, paths.best_params, data.load_meta(paths.prepared).content_hash)  # tune stage's output
        return train_worker.run_stage(cfg, paths.root, run_id, progress)


def run_evaluate(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("evaluate", parent):
        ds = data.load_prepared(paths.prepared)
        model, _, classes = models.load(paths.model_file)
        proba = evaluate.softmax(train.predict_logits(model, ds.X_test).numpy())
        metrics = evaluate.classification_metrics(ds.y_test, proba)
        cm = evaluate.confusion(ds.y_test, proba.argmax(1), len(classes))
        paths.eval_dir.mkdir(parents=True, exist_ok=True)
        evaluate.plot_confusion(cm, classes, paths.eval_dir / "confusion_matrix.png")
        history = json.loads((paths.model_dir / "history.json").read_text())
        evaluate.plot_history(history["epochs"], paths.eval_dir / "learning_curves.png")
        write_json(paths.eval_dir / "confusion_matrix.json", {"classes": classes, "matrix": cm.tolist()})
        write_json(paths.eval_dir / "metrics.json", {f"test_{k}": v for k, v in metrics.items()})
        tracking.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        for f in ("metrics.json", "confusion_matrix.json", "confusion_matrix.png", "learning_curves.png"):
            tracking.log_artifact(paths.eval_dir / f, "evaluate")
        return {f"test_{k}": v for k, v in metrics.items()}


def run_register(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """Log the trained model and its accepted compressed variants as pyfuncs, register each as a
    version (tag `variant`), pick one by promote.objective, and move @champion to it if it passes
    the gate. The current champion is re-measured on the current test set, under a lock."""
    from flows import compress_stage

    with tracking.stage_run("register", parent) as run_id:
        ds = data.load_prepared(paths.prepared)
        metrics = json.loads((paths.eval_dir / "metrics.json").read_text())
        name = cfg.promote.model_name or f"mlpipe-{data.dataset_name(ds.meta.source)}"
        model_hash = hashlib.sha256(paths.model_file.read_bytes()).hexdigest()[:16]
        rows, table_note = compress_stage.candidates(paths, model_hash, metrics["test_accuracy"])
        base_tags = {"mlpipe.run_id": parent or run_id, "mlpipe.data_hash": ds.meta.content_hash,
                     "mlpipe.git_commit": git_commit(paths.root)}
        with registry.promotion_lock(paths.state / "promote.lock"):
            # same file on the same data (a cached re-run): the existing version, no duplicate
            versions = {r["variant"]: compress_stage.register_variant(name, r, ds.X_test[:5], base_tags) for r in rows if r["accepted"]}
            chosen, selection = measure.choose(rows, cfg.promote.objective)
            version, uri = versions[chosen["variant"]]
            acc = chosen["accuracy"]
            current = registry.champion_version(name)
            champ_v = None if current is None else str(current.version)
            champ_acc, note = None, None
            if champ_v == version:
                champ_acc, note = acc, f"v{version} is already the champion"
            elif champ_v is not None:
                try:
                    pred = registry.load(f"models:/{name}/{champ_v}").predict(ds.X_test)
                    champ_acc = float((pred["label"].to_numpy() == ds.y_test).mean())
                except Exception as e:  # noqa: BLE001 - an incompatible champion is reported, not fatal
                    note = f"champion v{champ_v} cannot score the current test set ({type(e).__name__}); treated as absent"
            decision = registry.decide(acc, champ_acc, cfg.promote.accuracy_floor, cfg.promote.tolerance)
            if note:
                decision.reasons.append(note)
            if decision.promote and champ_v != version:
                registry.set_champion(name, version)
            registry.tag_version(name, version, {
                "mlpipe.decision": "promoted" if decision.promote else "rejected",
                "mlpipe.reasons": "; ".join(decision.reasons),
                "mlpipe.champion_before": champ_v or "none",
                "mlpipe.champion_accuracy_remeasured": "n/a" if champ_acc is None else f"{champ_acc:.6f}",
                "mlpipe.objective": cfg.promote.objective, "mlpipe.selection": selection,
                "mlpipe.variant_table": measure.markdown_table(rows) if len(rows) > 1 else "fp32 only" + (f" ({table_note})" if table_note else "")})
        rejected = {r["variant"]: r["reason"] for r in rows if not r["accepted"]}
        tracking.set_tags({f"mlpipe.rejected.{v}": why for v, why in rejected.items()})
        tracking.log_dict({"objective": cfg.promote.objective, "selection": selection, "rows": rows,
                           "versions": {v: ver for v, (ver, _) in versions.items()}}, "register/variants.json")
        out = {"variant": chosen["variant"], "selection": selection, "rejected": rejected,
               "variants": {v: ver for v, (ver, _) in versions.items()}, "model_name": name, "version": version, "model_uri": uri, "promoted": decision.promote,
               "reasons": decision.reasons, "champion_before": champ_v, "champion_accuracy": champ_acc,
               "test_accuracy": acc, "data_hash": ds.meta.content_hash}
        tracking.set_tags({"mlpipe.registered_version": version, "mlpipe.promoted": decision.promote})
        write_json(paths.promotion, out)
        tracking.log_artifact(paths.promotion, "register")
        return out


def run_tune(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    from flows.tuning import run_tune as run

    return run(cfg, paths, parent)


def run_cv(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    from flows.tuning import run_cv as run

    return run(cfg, paths, parent)


def run_compress(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    from flows.compress_stage import run_compress as run

    return run(cfg, paths, parent)


RUNNERS = {"ingest": run_ingest, "validate": run_validate, "augment": run_augment, "tune": run_tune, "cv": run_cv, "compress": run_compress,
           "train": run_train, "evaluate": run_evaluate, "register": run_register}


def run_tags(cfg: Config, paths: Paths) -> dict:
    return {"mlpipe.git_commit": git_commit(paths.root), "mlpipe.source": cfg.data.source,
            "mlpipe.python": platform.python_version()}
