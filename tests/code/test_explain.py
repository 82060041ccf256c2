"""Attributions (components/explain.py) on tiny literal data: bounded by the sample count,
deterministic for a seed, and checked against what integrated gradients must give for a linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components import explain
from components.config import ExplainConfig, load_config
from components.errors import ConfigError


def _images(n_per_class=30, k=3, seed=0):
    """(N, 1, 6, 6) images: class c has a bright column c, plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 0.2, (n_per_class * k, 1, 6, 6)).astype(np.float32)
    y = np.repeat(np.arange(k), n_per_class)
    for i, c in enumerate(y):
        X[i, 0, :, c] += 1.0
    return X, y


def _linear(k=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, k))


def test_rows_are_drawn_class_by_class_within_the_bound_and_by_the_seed():
    y = np.array([0] * 50 + [1] * 5 + [2] * 20)
    rows = explain.sample_rows(y, 12, seed=0)
    assert len(rows) == 12 and np.all(np.diff(rows) > 0)
    assert np.bincount(y[rows], minlength=3).tolist() == [4, 4, 4]  # balanced while every class has rows
    assert explain.sample_rows(y, 12, seed=0).tolist() == rows.tolist()
    assert explain.sample_rows(y, 12, seed=1).tolist() != rows.tolist()
    everything = explain.sample_rows(y, 1000, seed=0)
    assert everything.tolist() == list(range(75))  # the bound above the data: each row once
    assert np.bincount(y[explain.sample_rows(y, 20, 0)], minlength=3).tolist() == [8, 5, 7]  # class 1 runs out


def test_integrated_gradients_of_a_linear_model_are_input_times_weight():
    """For f(x) = Wx + b and an all-zero baseline, IG toward class t is exactly x * W[t] (completeness)."""
    X, y = _images()
    model = _linear()
    a = explain.integrated_gradients(model, X, y, ["a", "b", "c"], samples=15, steps=8, seed=0)
    w = model[1].weight.detach().numpy().reshape(3, 1, 6, 6)
    expected = X[a.rows] * w[y[a.rows]]  # (n, 1, 6, 6)
    for c in range(3):
        np.testing.assert_allclose(a.class_maps[c], expected[y[a.rows] == c].sum(1).mean(0), rtol=1e-4, atol=1e-6)
    assert a.class_rows == [5, 5, 5] and a.delta < 1e-4


def test_integrated_gradients_are_deterministic_for_a_seed_and_bounded_by_samples():
    from components import models

    X, y = _images()
    spec = {
        "arch": "cnn",
        "args": {"in_shape": [1, 6, 6], "n_classes": 3, "hidden": [8], "dropout": 0.2, "channels": [4]},
    }
    torch.manual_seed(0)
    model = models.build(spec)
    seen: list[int] = []  # rows through the model, counted by a hook (kept by the copy explain makes)
    model.register_forward_hook(lambda m, inputs, out: seen.append(len(inputs[0])))
    cfg = ExplainConfig(samples=12, steps=6, seed=3)
    a = explain.explain(model, X, y, "image", ["a", "b", "c"], cfg)
    assert sum(seen) == a.evaluations  # what it reports is what it did
    b = explain.explain(model, X, y, "image", ["a", "b", "c"], cfg)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.class_maps, b.class_maps)
    assert np.array_equal(a.example_maps, b.example_maps) and a.example_rows == b.example_rows
    assert len(a.rows) == 12 and sum(a.class_rows) == 12
    # the work the bound allows: samples x (steps + 3) rows through the model, the examples' paths, f(0)
    assert a.evaluations == 12 * (6 + 3) + len(a.example_rows) * 6 + 1
    assert a.class_maps.shape == (3, 6, 6) and len(a.example_rows) == 3
    other = explain.explain(model, X, y, "image", ["a", "b", "c"], ExplainConfig(samples=12, steps=6, seed=4))
    assert not np.array_equal(other.rows, a.rows)
    assert model.training  # the caller's model is left as it was (IG runs on an eval copy)


def test_permutation_importance_finds_the_only_feature_used_and_repeats_for_a_seed():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 4)).astype(np.float32)
    y = (X[:, 2] > 0).astype(np.int64)
    model = nn.Linear(4, 2)
    with torch.no_grad():  # logits (0, 5 x feature 2): only feature 2 matters
        model.weight.zero_()
        model.weight[1, 2] = 5.0
        model.bias.zero_()
    cfg = ExplainConfig(samples=40, repeats=4, seed=0)
    seen: list[int] = []
    model.register_forward_hook(lambda m, inputs, out: seen.append(len(inputs[0])))
    a = explain.explain(model, X, y, "tabular", ["no", "yes"], cfg, ["f0", "f1", "f2", "f3"])
    assert sum(seen) == a.evaluations
    b = explain.explain(model, X, y, "tabular", ["no", "yes"], cfg, ["f0", "f1", "f2", "f3"])
    assert a.baseline_accuracy == 1.0 and len(a.rows) == 40
    assert a.top_features()[0]["feature"] == "f2" and a.importance_mean[2] > 0.3
    assert np.all(a.importance_mean[[0, 1, 3]] == 0) and np.all(a.importance_std[[0, 1, 3]] == 0)
    assert np.array_equal(a.importance_mean, b.importance_mean) and np.array_equal(a.importance_std, b.importance_std)
    assert a.evaluations == 40 * (2 + 4 * 4)  # unshuffled twice (scikit-learn's, the reported accuracy), 4 x 4
    assert a.summary()["top_features"][0] == {"feature": "f2", "mean": a.importance_mean[2], "std": a.importance_std[2]}


def test_plots_are_written(tmp_path):
    X, y = _images()
    a = explain.integrated_gradients(_linear(), X, y, ["a", "b", "c"], samples=9, steps=4, seed=0)
    explain.plot_class_maps(a, tmp_path / "maps.png")
    explain.plot_examples(a, X, y, tmp_path / "ex.png")
    for f in ("maps.png", "ex.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_has_no_method_yet_and_the_config_is_checked():
    X, y = _images()
    with pytest.raises(ValueError, match="no attribution method for 'text'"):
        explain.explain(_linear(), X, y, "text", ["a", "b", "c"], ExplainConfig())
    with pytest.raises(ConfigError, match=r"explain.samples"):
        load_config(None, ["explain.samples=0"])
