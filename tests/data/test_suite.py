"""The GX suite that gates the pipeline, run on real prepared data and on broken copies."""
import numpy as np
import pytest

from components.config import load_config
from components.data import ingest
from components.errors import ValidationFailed
from components.validate import require_valid, validate


@pytest.fixture(scope="module")
def digits():
    return ingest(load_config(None).data, seed=0)


def run(ds, *sets):
    return validate(ds, load_config(None, list(sets)).validate_)


def copy(ds):
    from dataclasses import replace

    return replace(ds, X_train=ds.X_train.copy(), y_train=ds.y_train.copy(), X_test=ds.X_test.copy(), y_test=ds.y_test.copy())


def test_digits_passes(digits, tmp_path):
    report = validate(digits, load_config(None).validate_, docs_dir=tmp_path / "docs")
    assert report.success and report.failures == [] and report.n_expectations >= 20
    assert (tmp_path / "docs" / "index.html").exists()
    assert list((tmp_path / "docs").rglob("validations/**/*.html")), "a validation page is rendered"


def test_nan_and_inf_fail(digits):
    ds = copy(digits)
    ds.X_train[3, 0, 0, 0] = np.nan
    ds.X_test[1, 0, 2, 2] = np.inf
    report = run(ds)
    assert not report.success
    assert any(f.startswith("train.n_nonfinite") for f in report.failures)
    assert any(f.startswith("test.n_nonfinite") for f in report.failures)


def test_label_outside_class_set_is_named(digits):
    ds = copy(digits)
    ds.y_train[7] = 42
    with pytest.raises(ValidationFailed) as e:
        require_valid(run(ds), "prepared")
    assert "train.label" in str(e.value) and "[42]" in str(e.value)


def test_train_test_leakage(digits):
    ds = copy(digits)
    ds.X_test[:5] = ds.X_train[:5]
    report = run(ds)
    assert [f for f in report.failures if f.startswith("test.leak")]
    assert run(ds, "validate.max_leak_fraction=0.05").success


def test_duplicates_over_budget(digits):
    ds = copy(digits)
    ds.X_train[:60] = ds.X_train[0]
    assert any(f.startswith("train.duplicate") for f in run(ds).failures)


def test_value_range(digits):
    ds = copy(digits)
    ds.X_train[0, 0, 0, 0] = 17.0
    assert any(f.startswith("train.x_max") for f in run(ds).failures)
    assert not any(f.startswith("train.x_max") for f in run(ds, "validate.value_range=[0, 20]").failures)


def test_min_rows_per_class(digits):
    report = run(digits, "validate.min_rows_per_class=200")
    assert any(f.startswith("classes.n_train") for f in report.failures)


def test_wrong_dtype(digits):
    ds = copy(digits)
    ds.X_train = ds.X_train.astype(np.float64)
    assert any(f.startswith("train.x_dtype") for f in run(ds).failures)
