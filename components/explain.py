"""What a trained model looks at: attributions on a bounded, seeded sample of test rows.

Images: integrated gradients (Captum) from an all-zero baseline to each row, toward the row's true
class; the mean map of each class and a few examples. Tables: permutation importance
(scikit-learn): the drop in accuracy when one feature column is shuffled, mean and spread over
`repeats` shuffles. Text has no attribution method yet (there is no text modality).

The work is bounded by explain.samples rows, drawn class by class: integrated gradients runs the
model on samples x (steps + 3) rows (plus the examples' paths), permutation importance on
samples x (2 + features x repeats) rows. The same model, rows, config and seed give the same numbers."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from components.config import ExplainConfig

EXAMPLES = 4  # images: example rows shown with their attribution map
TOP_FEATURES = 20  # tables: features plotted


@dataclass
class Attributions:
    method: str  # integrated_gradients | permutation_importance
    rows: np.ndarray  # (n,) indices of the test rows explained, ascending
    seconds: float
    evaluations: int  # rows the model was run on (the work the sample bound limits)
    classes: list[str]
    # images
    class_maps: np.ndarray | None = None  # (K, H, W) mean attribution per true class, summed over channels
    class_rows: list[int] = field(default_factory=list)  # (K,) rows behind each class map
    example_rows: list[int] = field(default_factory=list)  # test row indices of the examples
    example_maps: np.ndarray | None = None  # (E, H, W) attribution toward the predicted class
    example_pred: list[int] = field(default_factory=list)
    delta: float | None = None  # mean |sum(attr) - (f(x) - f(0))| / mean |f(x) - f(0)|: the integral's error
    # tables
    feature_names: list[str] = field(default_factory=list)
    importance_mean: np.ndarray | None = None  # (F,) accuracy drop when the column is shuffled
    importance_std: np.ndarray | None = None  # (F,) its standard deviation over the repeats
    baseline_accuracy: float | None = None  # on the sampled rows, unshuffled

    def top_features(self, k: int = TOP_FEATURES) -> list[dict]:
        """The k most important features, most important first (ties: column order)."""
        if self.importance_mean is None:
            return []
        order = sorted(range(len(self.importance_mean)), key=lambda j: (-self.importance_mean[j], j))[:k]
        return [
            {
                "feature": self.feature_names[j],
                "mean": float(self.importance_mean[j]),
                "std": float(self.importance_std[j]),
            }
            for j in order
        ]

    def summary(self) -> dict:
        """The JSON-able record (reports/explain/attributions.json, the model card, lineage)."""
        out = {
            "method": self.method,
            "samples": len(self.rows),
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 3),
        }
        if self.class_maps is not None:
            out["baseline"] = "all-zero input"
            out["target"] = "true class (examples: predicted class)"
            out["rows_per_class"] = dict(zip(self.classes, self.class_rows))
            out["convergence_delta"] = self.delta
            out["examples"] = [
                {"row": int(r), "pred": self.classes[p]} for r, p in zip(self.example_rows, self.example_pred)
            ]
        if self.importance_mean is not None:
            out["baseline_accuracy"] = self.baseline_accuracy
            out["top_features"] = self.top_features()
        return out


def sample_rows(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to n row indices drawn class by class (round robin over the classes, each class in a
    seeded random order), so every class is represented as evenly as the data allows -> ascending."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    picked: list[int] = []
    for depth in range(max((len(p) for p in per_class), default=0)):
        picked += [int(p[depth]) for p in per_class if depth < len(p)]
        if len(picked) >= n:
            break
    return np.sort(np.asarray(picked[:n], dtype=np.int64))


def explain(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    kind: str,
    classes: list[str],
    cfg: ExplainConfig,
    feature_names: list[str] | None = None,
) -> Attributions:
    """Attributions of model on test rows (X, y): images by integrated gradients, tables by
    permutation importance. The model is not changed (a copy is put in eval mode)."""
    if kind == "image":
        return integrated_gradients(model, X, y, classes, cfg.samples, cfg.steps, cfg.seed)
    if kind == "tabular":
        return permutation_importance(model, X, y, classes, cfg.samples, cfg.repeats, cfg.seed, feature_names)
    raise ValueError(f"explain: no attribution method for {kind!r} data")


def _frozen(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval().requires_grad_(False)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).argmax(1)


def integrated_gradients(
    model: nn.Module, X: np.ndarray, y: np.ndarray, classes: list[str], samples: int, steps: int, seed: int
) -> Attributions:
    """Captum's integrated gradients (Gauss-Legendre, `steps` points) of each sampled row toward its
    true class, from an all-zero input. Class maps: the mean over a class's rows, summed over channels."""
    from captum.attr import IntegratedGradients

    t0 = time.perf_counter()
    net = _frozen(model)
    rows = sample_rows(y, samples, seed)
    x = torch.as_tensor(np.asarray(X[rows], dtype=np.float32))  # (n, C, H, W)
    target = torch.as_tensor(np.asarray(y[rows], dtype=np.int64))
    attr, delta = IntegratedGradients(net).attribute(
        x,
        baselines=torch.zeros_like(x),
        target=target,
        n_steps=steps,
        internal_batch_size=2048,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        logits, zero = net(x), net(torch.zeros_like(x[:1]))
    gap = (logits.gather(1, target[:, None])[:, 0] - zero[0, target]).abs().mean()
    pred = logits.argmax(1)
    maps = attr.sum(1).numpy()  # (n, H, W)
    k = len(classes)
    yr = target.numpy()
    class_rows = [int((yr == c).sum()) for c in range(k)]
    class_maps = np.stack(
        [maps[yr == c].mean(0) if class_rows[c] else np.zeros(maps.shape[1:], np.float32) for c in range(k)]
    )
    # examples: the first sampled row of each of the first EXAMPLES classes present, attributed to its prediction
    firsts = [int(np.flatnonzero(yr == c)[0]) for c in range(k) if class_rows[c]][:EXAMPLES]
    ex = IntegratedGradients(net).attribute(
        x[firsts], baselines=torch.zeros_like(x[firsts]), target=pred[firsts], n_steps=steps
    )
    return Attributions(
        method="integrated_gradients",
        rows=rows,
        seconds=time.perf_counter() - t0,
        # the path (samples x steps), the convergence check (f(x), f(0) per row), the logits, f(0), the examples
        evaluations=len(rows) * (steps + 3) + 1 + len(firsts) * steps,
        classes=list(classes),
        class_maps=class_maps.astype(np.float32),
        class_rows=class_rows,
        example_rows=[int(rows[i]) for i in firsts],
        example_maps=ex.sum(1).numpy().astype(np.float32),
        example_pred=[int(pred[i]) for i in firsts],
        delta=float(delta.abs().mean() / gap) if gap > 0 else None,
    )


class _Estimator:
    """A trained torch classifier as scikit-learn's permutation_importance scores it: predict on
    flat feature rows, classes_ for the classifier checks; fit does nothing (it is trained)."""

    _estimator_type = "classifier"

    def __init__(self, model: nn.Module, shape: tuple[int, ...], n_classes: int):
        self.model, self.shape, self.classes_ = model, shape, np.arange(n_classes)

    def fit(self, X, y):
        return self

    def predict(self, X) -> np.ndarray:
        x = torch.as_tensor(np.asarray(X, dtype=np.float32).reshape(len(X), *self.shape))
        return _predict(self.model, x).numpy()

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())


def permutation_importance(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    samples: int,
    repeats: int,
    seed: int,
    feature_names: list[str] | None = None,
) -> Attributions:
    """scikit-learn's permutation importance (accuracy) of each feature on the sampled rows."""
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    t0 = time.perf_counter()
    rows = sample_rows(y, samples, seed)
    flat = np.asarray(X[rows], dtype=np.float32).reshape(len(rows), -1)
    est = _Estimator(_frozen(model), tuple(X.shape[1:]), len(classes))
    r = sk_permutation_importance(est, flat, y[rows], n_repeats=repeats, random_state=seed)
    names = list(feature_names or []) or [f"x{j}" for j in range(flat.shape[1])]
    return Attributions(
        method="permutation_importance",
        rows=rows,
        seconds=time.perf_counter() - t0,
        evaluations=len(rows) * (2 + flat.shape[1] * repeats),  # scikit-learn's, then the accuracy reported
        classes=list(classes),
        feature_names=names,
        importance_mean=r.importances_mean,
        importance_std=r.importances_std,
        baseline_accuracy=est.score(flat, y[rows]),
    )


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _signed(ax, m: np.ndarray, title: str) -> None:
    """A map on a symmetric red (toward the class) / blue (against it) scale."""
    v = float(np.abs(m).max()) or 1.0
    ax.imshow(m, cmap="bwr", vmin=-v, vmax=v)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_class_maps(a: Attributions, path) -> None:
    plt = _pyplot()
    k = len(a.classes)
    cols = min(k, 5)
    nrows = -(-k // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(1.8 * cols, 1.9 * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < k:
            _signed(ax, a.class_maps[i], f"{a.classes[i]} ({a.class_rows[i]} rows)")
        else:
            ax.axis("off")
    fig.suptitle("integrated gradients: mean per true class (red: toward the class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_examples(a: Attributions, X: np.ndarray, y: np.ndarray, path) -> None:
    """Each example row: the input, and its attribution toward the predicted class."""
    plt = _pyplot()
    n = len(a.example_rows)
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.9 * max(n, 1), 4.0), squeeze=False)
    for i, (r, p) in enumerate(zip(a.example_rows, a.example_pred)):
        img = np.asarray(X[r], dtype=np.float32)
        axes[0][i].imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0).clip(0, 1), cmap="gray")
        axes[0][i].set_title(f"row {r}: {a.classes[int(y[r])]}", fontsize=8)
        axes[0][i].axis("off")
        _signed(axes[1][i], a.example_maps[i], f"toward {a.classes[p]}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_importance(a: Attributions, path) -> None:
    plt = _pyplot()
    top = a.top_features()[::-1]  # most important at the top
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(top) + 1.2))
    ax.barh([t["feature"] for t in top], [t["mean"] for t in top], xerr=[t["std"] for t in top], color="tab:blue")
    ax.set_xlabel("accuracy drop when shuffled (mean +- std over repeats)")
    ax.set_title(f"permutation importance, {len(a.rows)} test rows", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
