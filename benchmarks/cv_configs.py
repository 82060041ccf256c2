"""5-fold CV accuracy of candidate training configs on digits over several seeds (issue 3: where
the tuned champion's CV comes from). Each job is one config x one seed: the cv stage's
components.cv.cross_validate on the seed-0 80/20 training split, one CPU thread, CUDA hidden.

    python -m benchmarks.cv_configs --seeds 0 1 2 3 4 [--configs default c48_b32 ...] [--jobs N] [--set KEY=VALUE]
    python -m benchmarks.cv_configs --smoke

Prints one JSON line per job, then `name  mean  per-seed` lines. Figures in BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

from benchmarks.common import SMOKE_HELP

ONE_BLOCK = ["model.channels=[48]", "train.batch_size=32"]
CONFIGS = {  # name -> config overrides on top of params.yaml's defaults (2 conv blocks 32/64, batch 64, 40 epochs)
    "default": [],
    "ep60": ["train.epochs=60"],
    "ep80": ["train.epochs=80"],
    "b32": ["train.batch_size=32"],
    "w48_96": ["model.channels=[48,96]"],
    "w64_128": ["model.channels=[64,128]", "model.hidden=[256]"],
    "aug15": ["augment.shift=2", "augment.rotation=15"],
    "drop0": ["model.dropout=0.0"],
    "drop4": ["model.dropout=0.4"],
    "wd1e-3": ["train.weight_decay=0.001"],
    "champ48": ONE_BLOCK + ["train.lr=0.0037", "train.epochs=22"],
    "c48_b32": ONE_BLOCK,
    "c48_b32_ep30": ONE_BLOCK + ["train.epochs=30"],
    "c48_b32_ep50": ONE_BLOCK + ["train.epochs=50"],
    "c48_b32_lr2": ONE_BLOCK + ["train.lr=0.002"],
    "c48_b32_lr6": ONE_BLOCK + ["train.lr=0.006"],
    "c32_b32": ["model.channels=[32]", "train.batch_size=32"],
    "c64_b32": ["model.channels=[64]", "train.batch_size=32"],
    "c48_b64": ["model.channels=[48]"],
    "c48_96_b32": ["model.channels=[48,96]", "train.batch_size=32"],
    "c48_b32_d1": ONE_BLOCK + ["model.dropout=0.1"],
    "c48_b32_d3": ONE_BLOCK + ["model.dropout=0.3"],
    "c48_b32_h256": ONE_BLOCK + ["model.hidden=[256]"],
    "c48_b32_noaug": ONE_BLOCK + ["augment.enabled=false"],
}
SMOKE = ["cv.folds=2", "train.epochs=1"]


def job(name: str, seed: int, extra: list[str]) -> tuple[str, int, float, float]:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from components import cv, data, models
    from components.config import load_config

    torch.set_num_threads(1)
    ds = data.ingest(load_config(None).data, 0)  # the seed-0 80/20 split, as the pipeline's
    cfg = load_config(None, CONFIGS[name] + extra + [f"seed={seed}"])  # seed: fold shuffle, weight init, augmentation
    spec = models.spec_for(cfg.model, ds.meta)
    t0 = time.perf_counter()
    folds = cv.cross_validate(ds.X_train, ds.y_train, spec, cfg, ds.meta.kind, ds.meta.value_range, ds.meta.classes)
    return name, seed, cv.summarize(folds)["accuracy_mean"], time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cv_configs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE for every job")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}; the default config, seed 0, {' '.join(SMOKE)}")
    a = p.parse_args()
    if a.smoke:
        a.seeds, a.configs, a.jobs, a.sets = [0], ["default"], 1, SMOKE + a.sets
    jobs = [(n, s, a.sets) for n in a.configs for s in a.seeds]
    res: dict[str, dict[int, float]] = {}
    with ProcessPoolExecutor(a.jobs) as ex:
        for name, seed, acc, sec in ex.map(job, *zip(*jobs)):
            res.setdefault(name, {})[seed] = acc
            print(json.dumps({"config": name, "seed": seed, "cv_accuracy": acc, "seconds": round(sec)}), flush=True)
    if a.sets:
        print(f"overrides for every config: {a.sets}")
    for name, r in res.items():
        v = [r[s] for s in a.seeds]
        print(f"{name:14s} mean {sum(v) / len(v):.4f}  " + " ".join(f"{x:.4f}" for x in v))


if __name__ == "__main__":
    main()
