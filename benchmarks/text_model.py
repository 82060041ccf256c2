"""Text Transformer benchmarks (issue 19) on SYNTHETIC token ids (components/text.py layout: [CLS] first,
right-padded with 0): speed figures only need the shapes. CPU; one JSON line per measurement, then a summary.

    python -m benchmarks.text_model overhead [--repeats 3] [--epochs 2] [--rows 2000] [--threads 1]
    python -m benchmarks.text_model int8 [--rounds 5] [--repeats 20] [--threads 1]
    python -m benchmarks.text_model [WHAT] --smoke      (tiny; both, seconds)

overhead: the training recipe (train.Recipe.fit: the engine with its validation pass every epoch, one-cycle
  schedule, per-epoch checkpoints, RNG capture) against a bare PyTorch loop of the same Transformer (the same
  rows, batch size, epochs, threads, fused AdamW, one-cycle schedule and per-epoch validation, over padded int64
  id tensors). Interleaved repeats, alternating order. Throughput = real (non-padding) training tokens per second.
  The recipe runs twice per repeat: with length-bucketed batches (train.bucket_batches 50, its default) and
  without (0), so the report has the overhead (no buckets / bare) and what buckets win (buckets / no buckets).
  Row lengths are long-tailed (log-normal, median ~1/4 of max_length), as real texts are.
int8: a text Transformer (the default model section: d_model 128, 4 heads, 2 layers, FFN 256; vocab 8000,
  max_length 128) trained briefly on a learnable synthetic task, then the fp32 torch model, its fp32 ONNX and
  the compress stage's int8 ONNX (dynamic, Linear layers + embedding) timed at batch 1 and 32 on full-length
  padded rows (what serving feeds), interleaved rounds (components/measure.latency_rounds); test accuracy of
  each and file sizes (.pt / .onnx)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SMOKE_HELP, loadavg, median_ci, scratch, utc_now

WHAT = ("overhead", "int8")


def token_rows(n: int, length: int, vocab: int, classes: int, seed: int, signal: float = 0.3, keywords: int = 0):
    """(n, length) int32 ids and labels: a row's tokens are its class's own ids with probability `signal`, else
    uniform noise over the vocabulary; the class's own ids are a band of (vocab - 5) / classes ids, or its first
    `keywords` ids when keywords > 0 (a few telling words per class, as in real texts). Lengths log-normal
    (median length/4, clipped to [4, length])."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    lengths = np.clip(rng.lognormal(np.log(length / 4), 0.7, n).astype(int), 4, length)
    X = np.zeros((n, length), np.int32)
    band = (vocab - 5) // classes
    for i, k in enumerate(lengths):
        own = 5 + y[i] * band + rng.integers(0, keywords or band, k - 1)
        X[i, 0] = 2  # [CLS]
        X[i, 1:k] = np.where(rng.random(k - 1) < signal, own, rng.integers(5, vocab, k - 1))
    return X, y.astype(np.int64)


def _cfg(sets: list[str]):
    from components.config import load_config

    return load_config(None, ["model.kind=transformer", "augment.enabled=false", *sets])


class _Meta:
    def __init__(self, X, classes, vocab):
        self.feature_shape, self.n_classes, self.kind = [X.shape[1]], classes, "text"
        self.text = {"vocab_size": vocab, "max_length": X.shape[1]}


def bare_text_train(model, X, y, val, epochs, batch_size, lr, seed) -> float:
    """The bare loop over padded int64 ids: shuffled batches, fused AdamW, one-cycle schedule, a validation
    pass (loss, accuracy) after every epoch. -> seconds."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    x, t = torch.as_tensor(X, dtype=torch.int64), torch.as_tensor(y)
    xv, tv = torch.as_tensor(val[0], dtype=torch.int64), torch.as_tensor(val[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    history = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(xv[i : i + 1024]) for i in range(0, len(xv), 1024)])
            history.append((nn.functional.cross_entropy(logits, tv).item(), (logits.argmax(1) == tv).float().mean()))
    return time.perf_counter() - start


def overhead(repeats: int, epochs: int, rows: int, length: int, threads: int, sets: list[str]) -> dict:
    import torch

    from components import models, train

    torch.set_num_threads(threads)
    vocab, classes = 2000, 4
    X, y = token_rows(rows, length, vocab, classes, 0)
    base = [f"train.epochs={epochs}", f"train.num_threads={threads}", "train.checkpoint_min_seconds=0", *sets]
    cfgs = {"buckets": _cfg(base), "no_buckets": _cfg([*base, "train.bucket_batches=0"])}
    spec = models.spec_for(cfgs["buckets"].model, _Meta(X, classes, vocab))
    recipe = train.Recipe(cfgs["buckets"], X, y, "text", None)
    fit, stop = recipe.fit_rows, recipe.stop_rows
    tokens = int((X[fit] != 0).sum()) * epochs
    times: dict[str, list[float]] = {"bare": [], "buckets": [], "no_buckets": []}

    def run(name: str, root: Path) -> float:
        if name == "bare":
            train.seed_everything(0)
            c = cfgs["buckets"].train
            return bare_text_train(
                models.build(spec), X[fit], y[fit], (X[stop], y[stop]), epochs, c.batch_size, c.lr, 0
            )
        t = time.perf_counter()
        ckpt = root / f"ckpt-{name}-{time.monotonic_ns()}"
        train.Recipe(cfgs[name], X, y, "text", None).fit(spec, checkpoint_dir=ckpt)
        return time.perf_counter() - t

    with scratch("text-overhead") as root:
        for name in times:  # warm-up: imports, allocator, oneDNN primitives
            run(name, root)
        for i in range(repeats):
            order = list(times) if i % 2 == 0 else list(reversed(times))
            for name in order:
                times[name].append(run(name, root))
            line = {"bench": "text-overhead", "repeat": i, **{k: round(tokens / v[-1]) for k, v in times.items()}}
            print(json.dumps({**line, "unit": "tokens_s", "loadavg": loadavg()}), flush=True)

    def ratio(a: str, b: str) -> dict:
        r = [times[b][i] / times[a][i] for i in range(repeats)]  # a's throughput over b's, pair by pair
        return {"median": round(statistics.median(r), 3), "ci95": [round(v, 3) for v in median_ci(r)], "n": repeats}

    out = {
        "bench": "text-overhead-summary",
        "date": utc_now(),
        "rows_fit": len(fit),
        "max_length": length,
        "mean_tokens_per_row": round(float((X[fit] != 0).sum(1).mean()), 1),
        "epochs": epochs,
        "threads": threads,
        "tokens_s_median": {k: round(tokens / statistics.median(v)) for k, v in times.items()},
        "recipe_no_buckets_over_bare": ratio("no_buckets", "bare"),
        "recipe_buckets_over_bare": ratio("buckets", "bare"),
        "buckets_over_no_buckets": ratio("buckets", "no_buckets"),
    }
    print(json.dumps(out), flush=True)
    return out


def int8(rounds: int, repeats: int, threads: int, rows: int, epochs: int, sets: list[str]) -> dict:
    import torch

    from components import compress, measure, models, train

    vocab, classes, length = 8000, 4, 128
    X, y = token_rows(rows, length, vocab, classes, 0, signal=0.1, keywords=40)
    Xt, yt = token_rows(max(400, rows // 2), length, vocab, classes, 1, signal=0.1, keywords=40)
    cfg = _cfg([f"train.epochs={epochs}", f"train.num_threads={max(threads, 2)}", "train.checkpoint_every=0", *sets])
    torch.set_num_threads(max(threads, 2))
    spec = models.spec_for(cfg.model, _Meta(X, classes, vocab))
    model, _ = train.Recipe(cfg, X, y, "text", None).fit(spec)
    model.eval()
    classes_ = [str(c) for c in range(classes)]
    with scratch("text-int8") as root:
        pt = root / "model.pt"
        models.save(model, spec, classes_, pt)
        f32 = compress.export_onnx(model, spec, classes_, root / "fp32.onnx")
        q = compress.quantize_int8(model, spec, classes_, Xt[:8], root / "int8.onnx", "dynamic")
        sizes = {"pt": pt.stat().st_size, "onnx_fp32": f32.stat().st_size, "onnx_int8": q.stat().st_size}
        torch.set_num_threads(threads)
        runners = {
            "torch_fp32": model,
            "onnx_fp32": compress.load_model_file(f32, threads)[0],
            "onnx_int8": compress.load_model_file(q, threads)[0],
        }
        acc = {k: float((train.predict_logits(m, Xt).argmax(1).numpy() == yt).mean()) for k, m in runners.items()}
        lat = {}
        for batch in (1, 32):
            x = torch.as_tensor(Xt[:batch], dtype=torch.int64)
            per_round = measure.latency_rounds(runners, x, rounds, repeats)
            lat[batch] = {k: round(statistics.median(v), 3) for k, v in per_round.items()}
            for base in ("torch_fp32", "onnx_fp32"):
                r = [a / b for a, b in zip(per_round[base], per_round["onnx_int8"])]
                lat[batch][f"{base}_over_int8"] = {
                    "median": round(statistics.median(r), 2),
                    "min": round(min(r), 2),
                    "max": round(max(r), 2),
                }
            print(
                json.dumps({"bench": "text-int8-latency", "batch": batch, "ms": lat[batch], "rounds": rounds}),
                flush=True,
            )
    out = {
        "bench": "text-int8-summary",
        "date": utc_now(),
        "threads": threads,
        "accuracy": acc,
        "accuracy_drop_points": round(100 * (acc["torch_fp32"] - acc["onnx_int8"]), 2),
        "bytes": sizes,
        "pt_over_int8_size": round(sizes["pt"] / sizes["onnx_int8"], 2),
        "latency_ms": lat,
        "loadavg": loadavg(),
    }
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=WHAT)
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.add_argument("--repeats", type=int, default=3, help="overhead: interleaved repeats; int8: timed calls per round")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--length", type=int, default=128, help="overhead: max_length")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="int8: interleaved timing rounds")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    a = p.parse_args()
    todo = [a.what] if a.what else list(WHAT)
    if a.smoke:
        small = ["model.d_model=32", "model.heads=2", "model.layers=1", "model.ff=64", *a.sets]
        if "overhead" in todo:
            overhead(1, 1, 160, 32, 1, small)
        if "int8" in todo:
            int8(2, 3, 1, 160, 1, small)
        return
    if "overhead" in todo:
        overhead(a.repeats, a.epochs, a.rows, a.length, a.threads, a.sets)
    if "int8" in todo:
        int8(a.rounds, max(a.repeats, 10), a.threads, a.rows, max(a.epochs, 4), a.sets)


if __name__ == "__main__":
    main()
