"""Baselines (components/baseline.py) on tiny literal data: fold scores on the cv stage's folds,
checked against scikit-learn's own cross-validation; metrics against components/evaluate.py; the
skops file loads without unpickling and refuses foreign types; the baseline stage with
baseline.enabled false does nothing but say so."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from components import baseline, cv, evaluate, folds
from components.errors import MlpipeError

_pickle_events: list[str] = []
_recording = [False]


def _audit(event, _args):
    if _recording[0] and event.startswith("pickle."):
        _pickle_events.append(event)


sys.addaudithook(_audit)  # hooks cannot be removed: it records only while _recording[0] is set


def table(n=90, seed=0):
    """Three separable blobs, 4 features."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    X = (rng.normal(size=(n, 4)) + y[:, None] * 1.5).astype(np.float32)
    return X, y


def test_folds_are_the_cv_stages_folds():
    _, y = table()
    a, b = folds.fold_indices(y, 5, 3), cv.fold_indices(y, 5, 3)
    assert all(np.array_equal(x, z) for (x, _), (z, _) in zip(a, b))
    assert folds.fold_key("h", 5, 3) != folds.fold_key("h", 5, 4)


def test_fold_scores_match_sklearn_cross_validation_on_the_same_folds():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = table()
    Xt, yt = table(30, seed=1)
    res = baseline.fit_all(["hgb", "logreg"], X, y, Xt, yt, ["a", "b", "c"], 3, 0, (0.01, 1.0), threads=1)
    splits = folds.fold_indices(y, 3, 0)
    hgb, lr = res
    want = cross_val_score(HistGradientBoostingClassifier(random_state=0), X, y, cv=splits)
    np.testing.assert_allclose(hgb.folds, want)
    C = lr.params["C"]
    want = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)), X, y, cv=splits)
    np.testing.assert_allclose(lr.folds, want)
    assert lr.test == evaluate.classification_metrics(yt, lr.model.predict_proba(Xt))
    assert baseline.best(res).name == max(res, key=lambda r: np.mean(r.folds)).name


def test_model_predicts_the_registered_columns_from_any_input_shape(tmp_path):
    X, y = table(60)
    img = X.reshape(len(X), 1, 2, 2)  # an image dataset: (N, C, H, W), flattened inside
    (r,) = baseline.fit_all(["logreg"], img, y, img[:6], y[:6], ["a", "b", "c"], 3, 0, (1.0,), threads=1)
    out = r.model.predict(img[:6])
    assert list(out.columns) == ["label", "class", "confidence"]
    assert list(out["class"]) == [["a", "b", "c"][i] for i in out["label"]]
    assert ((out["confidence"] > 0.3) & (out["confidence"] <= 1)).all()
    assert r.model.in_shape == [1, 2, 2]


def test_skops_file_loads_without_unpickling_and_refuses_foreign_types(tmp_path):
    X, y = table(60)
    (r,) = baseline.fit_all(["svc"], X, y, X[:5], y[:5], ["a", "b", "c"], 3, 0, (1.0,), threads=1)
    path = tmp_path / "model.skops"
    baseline.save(r.model, path)
    _pickle_events.clear()
    _recording[0] = True
    try:
        back = baseline.load(path)
        pred = back.predict(X[:5])
    finally:
        _recording[0] = False
    assert _pickle_events == []
    assert pred.equals(r.model.predict(X[:5]))
    _recording[0] = True  # the hook does see an unpickling
    try:
        pickle.loads(pickle.dumps(r.model))
    finally:
        _recording[0] = False
    assert "pickle.find_class" in _pickle_events
    foreign = baseline.BaselineClassifier(Unknown(), ["a"], (4,))
    path.write_bytes(baseline.dumps(foreign))
    with pytest.raises(MlpipeError, match="refusing to load types outside scikit-learn: .*Unknown"):
        baseline.load(path)


class Unknown:  # a type a saved baseline must not bring
    classes_ = np.array([0])


def test_plan_leaves_out_svc_on_large_data():
    assert baseline.plan(("hgb", "svc"), 100, 50) == (["hgb", "svc"], {})
    todo, skipped = baseline.plan(("hgb", "svc"), 100, 500)
    assert todo == ["hgb"] and "baseline.svc_max_rows 100" in skipped["svc"]
    with pytest.raises(MlpipeError, match="every model left out"):
        baseline.plan(("svc",), 100, 500)


def test_disabled_stage_writes_that_it_is_off_and_no_model(tmp_path, monkeypatch):
    import mlflow

    from components import data, tracking
    from components.config import load_config
    from flows import gate_inputs
    from flows.paths import Paths
    from flows.stages import baseline as stage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(None, ["baseline.enabled=false"])
    paths = Paths(tmp_path)
    X, y = table(60)
    meta = data.Meta("npz:x", "tabular", [4], ["a", "b", "c"], 60, 15, {}, None, "h0", 0, 0.2)
    data.save_prepared(data.Prepared(X, y, X[:15], y[:15], meta), paths.prepared)
    paths.baseline_models.mkdir(parents=True)
    paths.baseline_model.write_bytes(b"a stale model of an earlier run")
    tracking.setup(cfg.tracking, tmp_path)
    assert stage.run(cfg, paths) == {"enabled": False}
    assert paths.baseline_models.is_dir() and not any(paths.baseline_models.iterdir())
    assert paths.baseline_metrics.exists() and paths.baseline_folds.exists() and paths.baseline_table.exists()
    assert gate_inputs.load_baseline(paths, data.load_prepared(paths.prepared)) == (None, None)  # the gate sees none
    found = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_name for r in found] == ["baseline"]  # no model runs under it


def test_gate_options_need_the_baseline_stage_and_name_their_keys():
    from components.config import load_config
    from components.errors import ConfigError

    for key, value in (("allow_baseline", "true"), ("beat_baseline_by", "0.01")):
        with pytest.raises(ConfigError, match=rf"promote.{key} needs a baseline, but baseline.enabled is false$"):
            load_config(None, ["baseline.enabled=false", f"promote.{key}={value}"])
    with pytest.raises(ConfigError, match=r"baseline.C: must be a non-empty list of distinct values > 0"):
        load_config(None, ["baseline.C=[0]"])
    with pytest.raises(ConfigError, match=r"baseline.tabular.0: Input should be 'hgb', 'logreg' or 'svc'"):
        load_config(None, ["baseline.tabular=[knn]"])
    with pytest.raises(ConfigError, match=r"promote.fold_confidence: Input should be less than 1"):
        load_config(None, ["promote.fold_confidence=1.0"])
