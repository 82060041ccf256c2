"""Classical baselines: the models a practitioner tries first, fitted with scikit-learn on the
prepared arrays and scored with the pipeline's own metrics (components/evaluate.py) on the same
test split, and on the cv stage's folds (components/folds.py: the same stratified folds of the
training split), so that the gate can compare a network with them fold by fold.

    tabular  hgb     HistGradientBoostingClassifier, its defaults
             logreg  StandardScaler + LogisticRegression, C grid-searched
             svc     StandardScaler + RBF SVC, C grid-searched (left out above baseline.svc_max_rows rows)
    image    logreg  on the flattened pixels (any of the three may be named)
    text     tfidf   TF-IDF (words and word pairs, sublinear tf) + logistic regression, C grid-searched,
                     on the raw texts of the same split (data/prepared/texts_*.parquet)

A grid search runs over the cv folds themselves, so a grid model's fold scores are those of its
chosen C at no extra fit; C was chosen on those same folds, which flatters the baseline slightly
(it errs against the network). The best model is the one with the highest mean fold accuracy.

The fitted model is a BaselineClassifier (estimator, class names, input shape) saved with skops:
no pickle; loading refuses any type outside scikit-learn and this module. Its predict gives what a
registered network gives: label, class, confidence."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import DataError, MlpipeError

TRUSTED_PREFIXES = ("sklearn.", "components.baseline.")  # skops types a saved baseline may contain
MAX_ITER = 2000  # logistic regression solver iterations (lbfgs on standardized features converges well before)


class BaselineClassifier:
    """A fitted scikit-learn classifier behind the registered models' interface: raw features
    (N, *in_shape) in (flattened to (N, F)), or raw strings for a text model (in_shape []); label,
    class, confidence out."""

    def __init__(self, estimator, classes: list[str], in_shape: tuple[int, ...], name: str = "", text: bool = False):
        self.estimator = estimator
        self.classes = [str(c) for c in classes]
        self.in_shape = [int(d) for d in in_shape]
        self.name = name
        self.text = text

    def _rows(self, X):
        if getattr(self, "text", False):
            return _texts(X)
        x = np.asarray(X.to_numpy() if isinstance(X, pd.DataFrame) else X, dtype=np.float32)
        return x.reshape(len(x), -1)

    def predict_proba(self, X) -> np.ndarray:
        x = self._rows(X)
        proba = np.zeros((len(x), len(self.classes)))
        # columns by the estimator's label codes: a class absent from the training rows keeps probability 0
        proba[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = self.estimator.predict_proba(x)
        return proba

    def predict(self, X) -> pd.DataFrame:
        proba = self.predict_proba(X)
        label = proba.argmax(1)
        return pd.DataFrame(
            {
                "label": label.astype(np.int64),
                "class": [self.classes[i] for i in label],
                "confidence": proba.max(1).astype(np.float64),
            }
        )


@dataclass
class Result:
    name: str
    params: dict  # the grid's choice ({} for hgb)
    test: dict  # components/evaluate.py classification_metrics on the test split
    folds: list[float]  # accuracy on each cv fold
    seconds: float  # fit and score, folds included
    model: BaselineClassifier = field(repr=False)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "params": self.params,
            **{f"test_{k}": v for k, v in self.test.items()},
            "fold_accuracy": self.folds,
            "cv_accuracy_mean": float(np.mean(self.folds)),
            "cv_accuracy_std": float(np.std(self.folds)),
            "seconds": self.seconds,
        }


def plan(models: tuple[str, ...], svc_max_rows: int, n_train: int) -> tuple[list[str], dict[str, str]]:
    """The models to fit, and those left out with the reason."""
    skipped = {}
    if "svc" in models and n_train > svc_max_rows:
        skipped["svc"] = f"{n_train} training rows > baseline.svc_max_rows {svc_max_rows}"
    todo = [m for m in models if m not in skipped]
    if not todo:
        raise MlpipeError(
            f"baseline: every model left out ({'; '.join(f'{k}: {v}' for k, v in skipped.items())}); "
            "name hgb or logreg too, or raise baseline.svc_max_rows"
        )
    return todo, skipped


def fold_count(y: np.ndarray, folds: int) -> int:
    """cv.folds, or fewer when a class has fewer training rows (then the folds are not the cv stage's)."""
    smallest = min(int(c) for c in np.bincount(np.asarray(y)) if c > 0) if len(y) else 0
    k = min(folds, smallest)
    if k < 2:
        raise DataError(f"baseline: a class has {smallest} training row(s); the baseline's folds need at least 2")
    return k


def _estimator(name: str, seed: int):
    """-> (estimator, the grid's parameter name or None)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if name == "hgb":
        return HistGradientBoostingClassifier(random_state=seed), None
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER)), "logisticregression__C"
    if name == "svc":
        return make_pipeline(StandardScaler(), SVC(random_state=seed)), "svc__C"
    if name == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), dtype=np.float32)
        return make_pipeline(vec, LogisticRegression(max_iter=MAX_ITER)), "logisticregression__C"
    raise ValueError(f"unknown baseline {name!r}")


def fit_one(name: str, X: np.ndarray, y: np.ndarray, splits: list, C: tuple[float, ...], seed: int):
    """-> (fitted estimator, chosen params, accuracy per fold of `splits`)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV, cross_val_score

    est, grid_key = _estimator(name, seed)
    if grid_key is None:
        folds = cross_val_score(est, X, y, cv=splits, scoring="accuracy")
        return est.fit(X, y), {}, [float(a) for a in folds]
    search = GridSearchCV(est, {grid_key: list(C)}, cv=splits, scoring="accuracy", refit=False).fit(X, y)
    best = search.best_index_
    folds = [float(search.cv_results_[f"split{i}_test_score"][best]) for i in range(len(splits))]
    params = {"C": float(search.best_params_[grid_key])}
    est.set_params(**{grid_key: params["C"]})
    if name == "svc":  # probabilities for the confidence: Platt scaling fitted on the same folds, one SVC
        est = CalibratedClassifierCV(est, cv=splits, ensemble=False)
    return est.fit(X, y), params, folds


def fit_all(
    models: list[str],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    classes: list[str],
    folds: int,
    seed: int,
    C: tuple[float, ...],
    threads: int = 0,
    model_run: Callable[[str], AbstractContextManager] = lambda name: nullcontext(),
    on_model: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Fit each model on the training split, score it on the test split and on the folds
    folds.fold_indices(y_train, folds, seed). Model `name` runs inside model_run(name) (e.g. an MLflow
    child run); on_model(result) runs there after it is scored."""
    from threadpoolctl import threadpool_limits

    from components import evaluate
    from components import folds as cv_folds

    text = models == ["tfidf"]  # raw texts: object arrays of strings
    X, Xt = (_texts(X_train), _texts(X_test)) if text else (_flat(X_train), _flat(X_test))
    splits = cv_folds.fold_indices(y_train, folds, seed)
    in_shape = () if text else tuple(X_train.shape[1:])
    out = []
    with threadpool_limits(limits=threads or None):
        for name in models:
            with model_run(name):
                t0 = time.perf_counter()
                est, params, fold_acc = fit_one(name, X, y_train, splits, C, seed)
                model = BaselineClassifier(est, classes, in_shape, name, text)
                test = evaluate.classification_metrics(y_test, model.predict_proba(Xt))
                r = Result(name, params, test, fold_acc, time.perf_counter() - t0, model)
                out.append(r)
                if on_model is not None:
                    on_model(r)
    return out


def best(results: list[Result]) -> Result:
    """The highest mean fold accuracy; a tie goes to the model named first."""
    return max(results, key=lambda r: (float(np.mean(r.folds)), -results.index(r)))


def _flat(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float32).reshape(len(X), -1)


def _texts(X) -> np.ndarray:
    """Raw texts -> (N,) object array of str: a DataFrame's "text" column (or its only column), a Series,
    an array or a list."""
    if isinstance(X, pd.DataFrame):
        X = X["text"] if "text" in X.columns or X.shape[1] != 1 else X.iloc[:, 0]
    x = np.asarray(X.to_numpy() if isinstance(X, pd.Series) else X, dtype=object).reshape(-1)
    if not all(isinstance(v, str) for v in x):
        raise DataError("baseline (text): the input must be raw strings")
    return x


# ---- files: skops, never pickle


def trusted_types(blob: bytes) -> list[str]:
    """The non-default types a skops file holds; an error when any is outside scikit-learn and this module."""
    import skops.io as sio

    found = sio.get_untrusted_types(data=blob)
    foreign = [t for t in found if not t.startswith(TRUSTED_PREFIXES)]
    if foreign:
        raise MlpipeError(f"baseline model: refusing to load types outside scikit-learn: {', '.join(foreign)}")
    return found


def dumps(model: BaselineClassifier) -> bytes:
    import skops.io as sio

    return sio.dumps(model)


def save(model: BaselineClassifier, path: Path) -> None:
    Path(path).write_bytes(dumps(model))


def load(path: Path) -> BaselineClassifier:
    """A saved baseline (skops), trusting only scikit-learn types and BaselineClassifier."""
    import skops.io as sio

    blob = Path(path).read_bytes()
    model = sio.loads(blob, trusted=trusted_types(blob))
    if not isinstance(model, BaselineClassifier):
        raise MlpipeError(f"{path}: not a baseline model ({type(model).__name__})")
    return model
