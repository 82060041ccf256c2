"""compress: variants of models/model.pt (pruned, structured, distilled, int8), each measured for
accuracy, size and CPU latency -> models/compressed/ (one file per variant) and reports/compress/
(table.json, metrics.json, table.md, pareto.png). Each variant, and the fp32 baseline, is an MLflow
child run of the compress run; the register stage reads table.json back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from components import compress, data, measure, models, stream, tracking, train
from components.config import Config
from components.fileio import atomic_dir, write_json
from flows.paths import Paths

FIGURES = (
    "accuracy",
    "accuracy_drop",
    "f1_macro",
    "size_bytes",
    "gzip_bytes",
    "params",
    "nonzeros",
    "sparsity",
    "macs",
    "latency_b1_ms",
    "latency_b256_ms",
    "peak_rss_mb",
)


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _measure_all(cfg: Config, ds, fp32_model, made: list[dict], model_file: Path) -> list[measure.Row]:
    c = cfg.compress
    in_shape = ds.meta.feature_shape
    todo = [
        {
            "variant": "fp32",
            "file": model_file,
            "method": "trained model",
            "model": fp32_model,
            "macs": measure.count_macs(fp32_model, in_shape),
        },
        *made,
    ]
    rows = []
    for v in todo:
        stats = measure.onnx_stats(v["file"]) if v["model"] is None else measure.weight_stats(v["model"])
        rows.append(
            measure.measure(
                v["variant"],
                v["file"],
                lambda t, f=v["file"]: compress.load_model_file(f, t)[0],
                v["method"],
                ds.X_test,
                ds.y_test,
                v["macs"],
                stats,
                c.threads,
                c.repeats,
            )
        )
    return measure.apply_budget(rows, c.max_accuracy_drop)


def _write_reports(rows: list[dict], paths: Paths, model_hash: str, data_hash: str) -> dict:
    paths.compress_dir.mkdir(parents=True, exist_ok=True)
    write_json(paths.compress_table, {"model_hash": model_hash, "data_hash": data_hash, "rows": rows})
    metrics = {f"{r['variant']}_{k}": r[k] for r in rows for k in FIGURES}
    metrics.update({f"{r['variant']}_accepted": int(r["accepted"]) for r in rows})
    write_json(paths.compress_metrics, metrics)
    paths.compress_table_md.write_text(measure.markdown_table(rows) + "\n")
    measure.plot_pareto(rows, paths.compress_pareto)
    return metrics


def _log_children(rows: list[dict], parent: str) -> None:
    for r in rows:
        with tracking.stage_run(
            f"compress/{r['variant']}",
            parent,
            tags={"variant": r["variant"], "mlpipe.accepted": r["accepted"], "mlpipe.reason": r["reason"]},
        ):
            tracking.log_params({"variant": r["variant"], "method": r["method"]})
            tracking.log_metrics({k: r[k] for k in FIGURES})
            tracking.log_artifact(r["file"], "variant")


def disabled(paths: Paths) -> dict:
    """compress.enabled false: no data, no model, no measurement. The declared outputs (dvc.yaml) say
    so; the table names this model.pt and data with no rows, and register considers fp32 alone."""
    meta = data.load_meta(paths.prepared)
    with atomic_dir(paths.compressed):  # no variant files of an earlier run stay behind
        pass
    paths.compress_dir.mkdir(parents=True, exist_ok=True)
    table = {"model_hash": file_hash(paths.model_file), "data_hash": meta.content_hash, "enabled": False, "rows": []}
    write_json(paths.compress_table, table)
    write_json(paths.compress_metrics, {"enabled": 0})
    paths.compress_table_md.write_text("compress.enabled: false\n")
    from PIL import Image  # a blank plot (dvc.yaml plots): matplotlib is not worth importing for it

    Image.new("RGB", (1, 1), "white").save(paths.compress_pareto)
    tracking.set_tags({"mlpipe.compress": "disabled"})
    return {"enabled": False}


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("compress", parent) as run_id:
        if not cfg.compress.enabled:
            return disabled(paths)
        ds = data.load_prepared(paths.prepared, mmap=True)  # training rows are streamed, never copied
        model, spec, classes = models.load(paths.model_file)
        recipe = train.Recipe(
            cfg, ds.X_train, ds.y_train, ds.meta.kind, ds.meta.value_range
        )  # train's rows and augmentation
        fit = compress.fine_tuner(
            stream.Rows(ds.X_train, recipe.fit_rows),
            ds.y_train[recipe.fit_rows],
            stream.Rows(ds.X_train, recipe.stop_rows),
            ds.y_train[recipe.stop_rows],
            cfg.seed,
            recipe.augmentation(),
            cfg.compress,
        )
        # fine-tunes keep their best validation epoch (as measured for benchmarks/results/HISTORY.md, issue 5)
        tcfg = cfg.train.model_copy(
            update={"lr": cfg.compress.finetune_lr, "scheduler": "cosine", "patience": 10**6, "keep": "best"}
        )
        train.seed_everything(cfg.seed)
        calib = np.asarray(ds.X_train[recipe.fit_rows[: cfg.compress.calibration_samples]])
        with atomic_dir(paths.compressed) as tmp:
            made = compress.build_variants(model, spec, classes, calib, cfg.compress, fit, tcfg, tmp)
        for v in made:  # the folder was renamed into place
            v["file"] = paths.compressed / Path(v["file"]).name
        rows = [r.to_dict() for r in _measure_all(cfg, ds, model, made, paths.model_file)]
        metrics = _write_reports(rows, paths, file_hash(paths.model_file), ds.meta.content_hash)
        tracking.log_params({"compress": cfg.section("compress")})
        tracking.log_metrics(metrics)
        for f in (paths.compress_table, paths.compress_table_md, paths.compress_metrics, paths.compress_pareto):
            tracking.log_artifact(f, "compress")
        _log_children(rows, run_id)
        return {
            r["variant"]: {
                "accuracy": r["accuracy"],
                "accepted": r["accepted"],
                "size_bytes": r["size_bytes"],
                "latency_b1_ms": r["latency_b1_ms"],
            }
            for r in rows
        }
