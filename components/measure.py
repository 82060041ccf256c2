"""Measuring model variants on the same test set, the budget check, and choosing a variant.

Every figure is measured from the artifact itself: accuracy from its predictions, size from the
file, sparsity from the weights, latency from timed calls, memory from the process RSS."""

from __future__ import annotations

import gzip
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.evaluate import classification_metrics, softmax

OBJECTIVES = ("accuracy", "smallest_within_budget", "fastest_within_budget")


@dataclass
class Row:
    variant: str  # fp32 | int8 | pruned | structured | distilled
    file: str  # the artifact, as written
    method: str  # how it was made, e.g. "onnxruntime static int8 (QDQ, per-channel)"
    accuracy: float
    f1_macro: float
    accuracy_drop: float  # fp32 accuracy - this accuracy (fraction; 0.01 = 1 point)
    size_bytes: int  # on disk
    gzip_bytes: int  # the file gzip-compressed (zeros in pruned weights compress)
    params: int
    nonzeros: int
    sparsity: float  # zero fraction of the conv/linear weights
    macs: int  # multiply-accumulates per example
    latency_b1_ms: float  # median of timed calls
    latency_b1_iqr_ms: float  # spread: interquartile range
    latency_b256_ms: float
    latency_b256_iqr_ms: float
    peak_rss_mb: float  # process RSS growth while loading + one batch-256 call
    accepted: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- counting


def weight_stats(model: nn.Module) -> dict:
    """params, nonzeros (all parameters) and sparsity of the conv/linear weights."""
    params = list(model.parameters())
    w = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    n_w = sum(t.numel() for t in w)
    zeros = sum(int((t == 0).sum()) for t in w)
    return {
        "params": sum(p.numel() for p in params),
        "nonzeros": sum(int((p != 0).sum()) for p in params),
        "sparsity": zeros / n_w if n_w else 0.0,
    }


def onnx_stats(path: str | Path) -> dict:
    """The same counts from an ONNX file's stored tensors (int8 weights count as parameters;
    quantization scales and zero points do not)."""
    import onnx
    from onnx import numpy_helper

    params = nonzeros = w_total = w_zeros = 0
    for t in onnx.load(str(path)).graph.initializer:
        if t.name.endswith(("_scale", "_zero_point")) or t.name.startswith("norm."):
            continue
        a = numpy_helper.to_array(t)
        params += a.size
        nonzeros += int(np.count_nonzero(a))
        if a.ndim >= 2:  # conv / linear weights
            w_total += a.size
            w_zeros += a.size - int(np.count_nonzero(a))
    return {"params": params, "nonzeros": nonzeros, "sparsity": w_zeros / w_total if w_total else 0.0}


def count_macs(model: nn.Module, in_shape) -> int:
    """Multiply-accumulates of conv and linear layers for one example (forward hooks). A linear layer counts
    once per position it runs on (a transformer's per token: its example_input, half of max_length real
    tokens, at full length); attention's own products (QK^T, AV) are not counted."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out[0].numel() * m.in_features  # (positions x out_features) x in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            x = model.example_input(1) if hasattr(model, "example_input") else torch.zeros((1, *in_shape))
            model.eval()(x)
    finally:
        for h in hs:
            h.remove()
    return int(total)


def file_sizes(path: str | Path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))


# ---------------------------------------------------------------- timing and memory


@torch.inference_mode()  # what serving uses: no autograd bookkeeping in any variant's per-call cost
def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int = 5) -> tuple[float, float]:
    """-> (median, interquartile range) of wall time per call, ms, after warm-up calls."""
    model.eval()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def latency_rounds(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved timing: in each of `rounds` rounds every model gets a median of `repeats` calls
    on x, one model after the other -> {name: [median ms per round]}. A change in machine load then
    hits all models alike, and a ratio taken round by round compares them under the same load."""
    out: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            out[k].append(latency_ms(m, x, repeats, warmup=2)[0])
    return out


def peak_rss_mb(load, x: torch.Tensor, interval_s: float = 0.0005) -> float:
    """RSS growth of this process, sampled while `load()` builds a model and it runs once on x.
    Approximate: allocator caches from earlier work can hide part of it."""
    import psutil

    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        with torch.no_grad():
            model = load()
            model(x)
    finally:
        stop.set()
        t.join()
    peak = max(peak, proc.memory_info().rss)
    return (peak - base) / 2**20


def measure(
    variant: str,
    file: str | Path,
    load,
    method: str,
    X_test: np.ndarray,
    y_test: np.ndarray,
    macs: int,
    stats: dict,
    threads: int,
    repeats: int,
) -> Row:
    """Every figure of one variant. `load(threads)` -> model; timed with `threads` threads."""
    from components.train import as_input, predict_logits

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = load(threads)
        proba = softmax(predict_logits(model, X_test).numpy())
        m = classification_metrics(y_test, proba)
        x = as_input(X_test)
        big = x[torch.arange(256) % len(x)]  # (256, *in_shape): test rows, repeated if fewer
        b1, b1_iqr = latency_ms(model, x[:1], repeats)
        b256, b256_iqr = latency_ms(model, big, max(3, repeats // 5))
        rss = peak_rss_mb(lambda: load(threads), big)
    finally:
        torch.set_num_threads(old_threads)
    size, gz = file_sizes(file)
    return Row(
        variant=variant,
        file=str(file),
        method=method,
        accuracy=m["accuracy"],
        f1_macro=m["f1_macro"],
        accuracy_drop=0.0,
        size_bytes=size,
        gzip_bytes=gz,
        params=stats["params"],
        nonzeros=stats["nonzeros"],
        sparsity=stats["sparsity"],
        macs=macs,
        latency_b1_ms=b1,
        latency_b1_iqr_ms=b1_iqr,
        latency_b256_ms=b256,
        latency_b256_iqr_ms=b256_iqr,
        peak_rss_mb=rss,
    )


# ---------------------------------------------------------------- budget and choice


def apply_budget(rows: list[Row], max_drop: float) -> list[Row]:
    """Accuracy drop of every row against the fp32 row; a variant beyond max_drop is rejected."""
    base = next(r for r in rows if r.variant == "fp32").accuracy
    for r in rows:
        r.accuracy_drop = base - r.accuracy
        r.accepted = r.variant == "fp32" or r.accuracy_drop <= max_drop + 1e-9
        verdict = "within" if r.accepted else "over"
        r.reason = f"drop {100 * r.accuracy_drop:.2f} points {verdict} budget {100 * max_drop:.2f}"
    return rows


def choose(rows: list[dict], objective: str) -> tuple[dict, str]:
    """The variant the promotion gate considers, among accepted rows (fp32 always is one).

    accuracy: the most accurate (ties: fp32, then the smaller file). smallest_within_budget:
    the smallest file. fastest_within_budget: the lowest batch-1 latency (ties: batch 256)."""
    ok = [r for r in rows if r["accepted"]]
    if not ok:
        raise ValueError("no accepted variant to choose from")
    if objective == "accuracy":
        best = min(ok, key=lambda r: (-r["accuracy"], r["variant"] != "fp32", r["size_bytes"]))
        why = f"most accurate: {best['variant']} at {best['accuracy']:.4f}"
    elif objective == "smallest_within_budget":
        best = min(ok, key=lambda r: (r["size_bytes"], -r["accuracy"]))
        why = f"smallest within budget: {best['variant']} at {best['size_bytes']} bytes"
    elif objective == "fastest_within_budget":
        best = min(ok, key=lambda r: (r["latency_b1_ms"], r["latency_b256_ms"]))
        why = f"fastest within budget: {best['variant']} at {best['latency_b1_ms']:.3f} ms (batch 1)"
    else:
        raise ValueError(f"promote.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    return best, f"{why}; among {', '.join(r['variant'] for r in ok)}"


# ---------------------------------------------------------------- report


COLUMNS = [
    ("variant", "{}"),
    ("accuracy", "{:.4f}"),
    ("accuracy_drop", "{:+.4f}"),
    ("f1_macro", "{:.4f}"),
    ("size_bytes", "{:,}"),
    ("gzip_bytes", "{:,}"),
    ("params", "{:,}"),
    ("nonzeros", "{:,}"),
    ("sparsity", "{:.3f}"),
    ("macs", "{:,}"),
    ("latency_b1_ms", "{:.3f}"),
    ("latency_b256_ms", "{:.2f}"),
    ("peak_rss_mb", "{:.1f}"),
    ("accepted", "{}"),
]


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(f.format(r[c]) for c, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def plot_pareto(rows: list[dict], path) -> None:
    """Accuracy vs batch-1 latency; marker area proportional to the file size; x = rejected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    biggest = max(r["size_bytes"] for r in rows)
    for r in rows:
        s = 40 + 600 * r["size_bytes"] / biggest
        ax.scatter(r["latency_b1_ms"], r["accuracy"], s=s, alpha=0.6, marker="o" if r["accepted"] else "X")
        ax.annotate(
            f"{r['variant']} ({r['size_bytes'] / 1024:.0f} KiB)",
            (r["latency_b1_ms"], r["accuracy"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    ax.set(
        xlabel="CPU latency, batch 1 (ms, median)",
        ylabel="test accuracy",
        title="compression variants (size = file size)",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
