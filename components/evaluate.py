"""Metrics on held-out data: accuracy, macro precision/recall/F1, one-vs-rest ROC AUC, confusion."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict:
    """proba: (N, K) class probabilities. ROC AUC is one-vs-rest, macro-averaged."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    k = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(k), average="macro", zero_division=0)
    present = np.unique(y_true)
    if len(present) < 2:
        auc = float("nan")
    elif k == 2:
        auc = roc_auc_score(y_true, proba[:, 1])
    else:
        auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=np.arange(k))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f1),
        "roc_auc_ovr": float(auc),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts; rows are true classes, columns predicted."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def plot_confusion(matrix: np.ndarray, classes: list[str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(classes), 1 + 0.5 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix (test)",
    )
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_history(epochs: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(1, len(epochs) + 1)
    xv = [i for i, e in zip(x, epochs) if "val_loss" in e]  # validated epochs (train.val_every)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(x, [e["train_loss"] for e in epochs], label="train")
    a.plot(xv, [epochs[i - 1]["val_loss"] for i in xv], marker=".", label="validation")
    a.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    a.legend()
    b.plot(xv, [epochs[i - 1]["val_accuracy"] for i in xv], marker=".")
    b.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
