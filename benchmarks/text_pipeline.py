"""The real text benchmark through the pipeline (issue 19): the standard-library docstring dataset
(benchmarks/text_data.py: paragraphs labelled by module family) through `mlpipe run` in a fresh scratch
project per seed (ingest with the BPE tokenizer, the text GX gate, the TF-IDF baseline, tune, cv, train,
evaluate, compress, register). Per seed it reads the promoted champion's test accuracy and macro F1 (as the
register stage re-measured them on the test split) and the baseline stage's TF-IDF + logistic regression on
the same split; then mean and (sample) std over the seeds, and the per-seed difference.

    python -m benchmarks.text_pipeline [--seeds 0 1 2] [--trials 12] [--epochs 10 20] [--folds 3]
        [--results benchmarks/results/text-pipeline-MACHINE-DATE.jsonl] [--set KEY=VALUE ...]
    python -m benchmarks.text_pipeline --smoke     (a few files per family, 1 seed, tiny budgets)

The Transformer's size is searched by the tuner (tune.d_model/heads/layers); --set adds any other override.
With --trials 0 the tune stage is off and the Transformer is params.yaml's text default as written (model
section, pooling mean); --folds 0 turns cv off; --train-epochs sets train.epochs (the budget)."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import REPO, SMOKE_HELP, loadavg, mlpipe_env, run_mlpipe, scratch, sets, utc_now

SMOKE_MIN_ROWS = 30  # smoke data: families with fewer rows are left out (the gate wants 10 training rows per class)


def overrides(a, seed: int) -> list[str]:
    common = [
        f"seed={seed}",
        "data.source=csv:docs.csv",
        "data.text_column=text",
        "promote.accuracy_floor=0.0",  # the figure is the promoted model's, whatever it reaches
        "baseline.C=[1.0, 10.0, 100.0]",  # TF-IDF features want weaker regularization than pixels
    ]
    if a.smoke:
        return common + [
            "data.vocab_size=800",
            "data.max_length=128",
            "model.d_model=32",
            "model.heads=2",
            "model.layers=1",
            "model.ff=64",
            "train.epochs=1",
            "tune.n_trials=2",
            "tune.n_workers=1",
            "tune.epochs=[1, 1]",
            "tune.d_model=[32]",
            "tune.heads=[2]",
            "tune.layers=[1, 1]",
            "tune.ff_mult=[2]",
            "tune.min_resource=1",
            "tune.pruner=none",
            "cv.folds=2",
            "compress.enabled=false",
            "explain.enabled=false",
        ]
    out = common + [f"data.vocab_size={a.vocab_size}"] * bool(a.vocab_size)
    out += [f"data.max_length={a.max_length}"] * bool(a.max_length)
    out += [f"train.epochs={a.train_epochs}"] * bool(a.train_epochs)
    if a.trials:
        out += [
            f"tune.n_trials={a.trials}",
            f"tune.epochs=[{a.epochs[0]}, {a.epochs[1]}]",
            "tune.d_model=[64, 128]",
            "tune.heads=[2, 4]",
            "tune.layers=[1, 2]",
        ]
    else:  # the Transformer as params.yaml writes it: the text defaults themselves
        out.append("tune.enabled=false")
    out.append(f"cv.folds={a.folds}" if a.folds else "cv.enabled=false")
    return out + ["compress.variants=[int8]", *a.set]


def one_seed(df, a, seed: int) -> dict:
    with scratch("text-pipeline") as project:
        shutil.copy(REPO / "params.yaml", project / "params.yaml")
        df.to_csv(project / "docs.csv", index=False)
        wall = run_mlpipe(["run", *sets(overrides(a, seed))], project, mlpipe_env(project))
        promo = json.loads((project / "reports" / "promotion.json").read_text())
        base = json.loads((project / "reports" / "baseline" / "metrics.json").read_text())["models"]["tfidf"]
        tuned = json.loads((project / "reports" / "tune" / "best_params.json").read_text())
        champion = champion_tags(project, promo)
        if "mlpipe.f1_macro" not in champion:  # compress off: only fp32, whose F1 is the evaluate stage's
            champion["mlpipe.f1_macro"] = json.loads((project / "reports" / "eval" / "metrics.json").read_text())[
                "test_f1_macro"
            ]
    return {
        "seed": seed,
        "transformer": {
            "accuracy": float(champion["mlpipe.test_accuracy_measured"]),
            "f1_macro": float(champion["mlpipe.f1_macro"]),
            "variant": champion["variant"],
        },
        "tfidf": {"accuracy": base["test_accuracy"], "f1_macro": base["test_f1_macro"], "C": base["params"]["C"]},
        "tuned": tuned,
        "run_seconds": round(wall, 1),
    }


def champion_tags(project: Path, promo: dict) -> dict:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return dict(client.get_model_version_by_alias(promo["model_name"], "champion").tags)


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=12, help="tune.n_trials per seed; 0: tune off (the defaults)")
    ap.add_argument("--epochs", type=int, nargs=2, default=[10, 20], help="tune.epochs range")
    ap.add_argument("--train-epochs", type=int, help="train.epochs (default: params.yaml's)")
    ap.add_argument("--folds", type=int, default=3, help="cv.folds; 0: cv off")
    ap.add_argument("--vocab-size", type=int, default=4000, help="data.vocab_size; 0: params.yaml's")
    ap.add_argument("--max-length", type=int, default=128, help="data.max_length; 0: params.yaml's")
    ap.add_argument("--set", action="append", default=[], help="another config override KEY=VALUE (repeatable)")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    ap.add_argument("--results", type=Path, help="Append the per-seed and summary JSON lines to this file.")
    a = ap.parse_args()

    from benchmarks.text_data import build

    t0 = time.perf_counter()
    df = build(a.smoke)
    if a.smoke:
        counts = df["label"].value_counts()
        df = df[df["label"].isin(counts[counts >= SMOKE_MIN_ROWS].index)].reset_index(drop=True)
    seeds = a.seeds[:1] if a.smoke else a.seeds
    print(f"dataset: {len(df)} paragraphs, {df['label'].nunique()} families; seeds {seeds}", flush=True)
    records = []
    for seed in seeds:
        rec = {"bench": "text-pipeline-seed", **one_seed(df, a, seed)}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    tr = {k: spread([r["transformer"][k] for r in records]) for k in ("accuracy", "f1_macro")}
    tf = {k: spread([r["tfidf"][k] for r in records]) for k in ("accuracy", "f1_macro")}
    diff = {k: spread([r["transformer"][k] - r["tfidf"][k] for r in records]) for k in ("accuracy", "f1_macro")}
    summary = {
        "bench": "text-pipeline-summary",
        "rows": len(df),
        "seeds": seeds,
        "transformer": tr,
        "tfidf": tf,
        "transformer_minus_tfidf": diff,
        "overrides": overrides(a, seeds[0])[1:],
        "smoke": a.smoke,
        "python": platform.python_version(),
        "machine": platform.node(),
        "date": utc_now(),
        "loadavg": loadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"promoted Transformer over {len(seeds)} seeds: test accuracy {tr['accuracy']['mean']:.4f} +- "
        f"{tr['accuracy']['std']:.4f}, macro F1 {tr['f1_macro']['mean']:.4f} +- {tr['f1_macro']['std']:.4f}; "
        f"tfidf+logreg: accuracy {tf['accuracy']['mean']:.4f} +- {tf['accuracy']['std']:.4f}, "
        f"macro F1 {tf['f1_macro']['mean']:.4f} +- {tf['f1_macro']['std']:.4f}"
    )
    print(json.dumps(summary))
    if a.results and not a.smoke:
        with open(a.results, "a") as f:
            for rec in [*records, summary]:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
