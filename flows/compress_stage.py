"""The compress stage and the registry side of variants.

run_compress reads models/model.pt and the prepared data, writes models/compressed/ (one file per
variant) and reports/compress/ (table.json, metrics.json, table.md, pareto.png). Each variant,
and the fp32 baseline, is an MLflow child run of the compress run. run_register (flows/stages.py)
reads the table back through candidates() and registers the accepted variants."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components import augment, compress, data, measure, models, registry, tracking, train
from components.config import Config
from components.fileio import atomic_dir, write_json

FIGURES = ("accuracy", "accuracy_drop", "f1_macro", "size_bytes", "gzip_bytes", "params", "nonzeros", "sparsity",
           "macs", "latency_b1_ms", "latency_b256_ms", "peak_rss_mb")


def variant_dir(paths) -> Path:
    return paths.model_dir / "compressed"


def report_dir(paths) -> Path:
    return paths.root / "reports" / "compress"


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _fit_fn(cfg: Config, ds: data.Prepared):
    """Fine-tuning on the same train/validation rows and augmentation as the train stage."""
    tr, va = train.val_split(ds.y_train, cfg.data.val_size, cfg.seed)
    aug = augment.build_augment(cfg.augment, ds.meta.kind, ds.X_train[tr], ds.meta.value_range)
    fit = compress.fine_tuner(ds.X_train[tr], ds.y_train[tr], ds.X_train[va], ds.y_train[va], cfg.seed, aug, cfg.compress)
    # fine-tunes keep their best validation epoch (as measured for BENCHMARKS.md, issue 5)
    tcfg = cfg.train.model_copy(update={"lr": cfg.compress.finetune_lr, "scheduler": "cosine", "patience": 10**6, "keep": "best"})
    return fit, tcfg, tr


def _measure_all(cfg: Config, ds, fp32_model, made: list[dict], model_file: Path) -> list[measure.Row]:
    c = cfg.compress
    in_shape = ds.meta.feature_shape
    todo = [{"variant": "fp32", "file": model_file, "method": "trained model", "model": fp32_model,
             "macs": measure.count_macs(fp32_model, in_shape)}, *made]
    rows = []
    for v in todo:
        stats = measure.onnx_stats(v["file"]) if v["model"] is None else measure.weight_stats(v["model"])
        rows.append(measure.measure(v["variant"], v["file"], lambda t, f=v["file"]: compress.load_model_file(f, t)[0],
                                    v["method"], ds.X_test, ds.y_test, v["macs"], stats, c.threads, c.repeats))
    return measure.apply_budget(rows, c.max_accuracy_drop)


def _write_reports(rows: list[dict], out: Path, model_hash: str, data_hash: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "table.json", {"model_hash": model_hash, "data_hash": data_hash, "rows": rows})
    metrics = {f"{r['variant']}_{k}": r[k] for r in rows for k in FIGURES}
    metrics.update({f"{r['variant']}_accepted": int(r["accepted"]) for r in rows})
    write_json(out / "metrics.json", metrics)
    (out / "table.md").write_text(measure.markdown_table(rows) + "\n")
    measure.plot_pareto(rows, out / "pareto.png")
    return metrics


def _log_children(rows: list[dict], parent: str) -> None:
    for r in rows:
        with tracking.stage_run(f"compress/{r['variant']}", parent, tags={"variant": r["variant"],
                                "mlpipe.accepted": r["accepted"], "mlpipe.reason": r["reason"]}):
            tracking.log_params({"variant": r["variant"], "method": r["method"]})
            tracking.log_metrics({k: r[k] for k in FIGURES})
            tracking.log_artifact(r["file"], "variant")


def run_compress(cfg: Config, paths, parent: str | None = None) -> dict:
    with tracking.stage_run("compress", parent) as run_id:
        ds = data.load_prepared(paths.prepared)
        model, spec, classes = models.load(paths.model_file)
        fit, tcfg, tr = _fit_fn(cfg, ds)
        train.seed_everything(cfg.seed)
        calib = ds.X_train[tr][: cfg.compress.calibration_samples]
        variants = tuple(cfg.compress.variants) if cfg.compress.enabled else ()
        with atomic_dir(variant_dir(paths)) as tmp:
            made = compress.build_variants(model, spec, classes, calib, cfg.compress.model_copy(update={"variants": variants}),
                                           fit, tcfg, tmp)
        for v in made:  # the folder was renamed into place
            v["file"] = variant_dir(paths) / Path(v["file"]).name
        rows = [r.to_dict() for r in _measure_all(cfg, ds, model, made, paths.model_file)]
        metrics = _write_reports(rows, report_dir(paths), file_hash(paths.model_file), ds.meta.content_hash)
        tracking.log_params({"compress": cfg.section("compress")})
        tracking.log_metrics(metrics)
        for f in ("table.json", "table.md", "metrics.json", "pareto.png"):
            tracking.log_artifact(report_dir(paths) / f, "compress")
        _log_children(rows, run_id)
        return {r["variant"]: {"accuracy": r["accuracy"], "accepted": r["accepted"], "size_bytes": r["size_bytes"],
                               "latency_b1_ms": r["latency_b1_ms"]} for r in rows}


# ---------------------------------------------------------------- registry side


def candidates(paths, model_hash: str, fp32_accuracy: float) -> tuple[list[dict], str | None]:
    """The variant table for this model.pt, or only the fp32 row (with a note) when the compress
    stage has not run for it."""
    table = report_dir(paths) / "table.json"
    note = None
    if table.exists():
        t = json.loads(table.read_text())
        if t.get("model_hash") == model_hash:
            return t["rows"], None
        note = "variant table is for another model.pt; only fp32 considered"
    size = paths.model_file.stat().st_size
    fp32 = {"variant": "fp32", "file": str(paths.model_file), "accuracy": fp32_accuracy, "accepted": True,
            "size_bytes": size, "latency_b1_ms": float("inf"), "latency_b256_ms": float("inf"), "reason": "no variant table"}
    return [fp32], note


def version_tags(row: dict) -> dict:
    tags = {"variant": row["variant"], "test_accuracy": f"{row['accuracy']:.6f}"}
    tags.update({f"mlpipe.{k}": (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in FIGURES[1:] if k in row})
    if "method" in row:
        tags["mlpipe.method"] = row["method"]
    return tags


def register_variant(name: str, row: dict, example, base_tags: dict) -> tuple[str, str]:
    """Register one accepted variant (or find the version already holding this exact file on
    this data) -> (version, model URI)."""
    h = file_hash(Path(row["file"]))
    existing = registry.find_version(name, {"mlpipe.model_hash": h, "mlpipe.data_hash": base_tags["mlpipe.data_hash"]})
    if existing is not None:
        return str(existing.version), f"models:/{name}/{existing.version}"
    uri = registry.log_model(Path(row["file"]), example)
    version = registry.register(uri, name, {**base_tags, "mlpipe.model_hash": h, **version_tags(row)})
    return version, uri
