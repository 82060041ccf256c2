import numpy as np
import pytest

from components.config import load_config
from components.data import ingest, load_prepared, parse_source, save_prepared
from components.errors import DataError
from tests.conftest import make_images, make_table


def cfg(source, **extra):
    sets = [f"data.source={source}"] + [f"data.{k}={v}" for k, v in extra.items()]
    return load_config(None, sets).data


def test_digits_split_is_stratified_and_typed():
    ds = ingest(cfg("sklearn:digits"), seed=0)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.X_train.shape[1:] == (1, 8, 8) and len(ds.y_test) == 360
    assert ds.meta.classes == [str(i) for i in range(10)]
    # stratified: per-class test share within one sample of 20%
    for k in range(10):
        n = (ds.y_train == k).sum() + (ds.y_test == k).sum()
        assert abs((ds.y_test == k).sum() - 0.2 * n) <= 1
    assert ingest(cfg("sklearn:digits"), seed=0).meta.content_hash == ds.meta.content_hash
    assert ingest(cfg("sklearn:digits"), seed=1).meta.content_hash != ds.meta.content_hash


def test_breast_cancer_is_tabular():
    ds = ingest(cfg("sklearn:breast_cancer"), seed=0)
    assert ds.meta.kind == "tabular" and ds.X_train.shape[1] == 30 and ds.meta.classes == ["benign", "malignant"]


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(40, 5)), y=np.repeat([0, 1], 20))
    ds = ingest(cfg(f"npz:{tmp_path / 'd.npz'}"), seed=0)
    assert ds.meta.kind == "tabular" and ds.X_train.shape == (32, 5)


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"d.npz: missing array\(s\) \['X', 'y'\]"):
        ingest(cfg(f"npz:{tmp_path / 'd.npz'}"), seed=0)


@pytest.mark.parametrize("rgb", [False, True])
def test_imagefolder_gray_and_rgb(tmp_path, rgb):
    make_images(tmp_path / "imgs", rgb=rgb)
    ds = ingest(cfg(f"imagefolder:{tmp_path / 'imgs'}", image_size="[8, 12]", grayscale=str(not rgb).lower()), seed=0)
    assert ds.X_train.shape[1:] == ((3 if rgb else 1), 8, 12)
    assert ds.meta.classes == ["bar", "dot"] and 0.0 <= ds.X_train.min() and ds.X_train.max() <= 1.0


def test_truncated_image_names_the_file(tmp_path):
    root = make_images(tmp_path / "imgs")
    bad = root / "dot" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match=r"dot/001.png: unreadable or corrupt image"):
        ingest(cfg(f"imagefolder:{root}"), seed=0)


def test_csv_and_parquet(tmp_path):
    df = make_table()
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    a = ingest(cfg(f"csv:{tmp_path / 't.csv'}"), seed=0)
    b = ingest(cfg(f"parquet:{tmp_path / 't.parquet'}"), seed=0)
    assert a.meta.classes == ["a", "b", "c"] and a.meta.content_hash == b.meta.content_hash
    assert a.meta.feature_names == ["f0", "f1", "f2", "f3"]


def test_missing_label_column(tmp_path):
    make_table().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"label column 'target' \(data.label_column\) not found; columns are"):
        ingest(cfg(f"csv:{tmp_path / 't.csv'}", label_column="target"), seed=0)


def test_empty_dataset(tmp_path):
    make_table().iloc[:0].to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="dataset is empty"):
        ingest(cfg(f"csv:{tmp_path / 't.csv'}"), seed=0)


def test_class_too_small_for_split(tmp_path):
    df = make_table()
    df.loc[0, "label"] = "rare"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"too few samples .* \{'rare': 1\}"):
        ingest(cfg(f"csv:{tmp_path / 't.csv'}"), seed=0)


def test_unknown_scheme():
    with pytest.raises(DataError, match="unknown source 'hdf5:x.h5'"):
        parse_source("hdf5:x.h5")
    with pytest.raises(DataError, match="unknown sklearn dataset 'mnist'"):
        parse_source("sklearn:mnist")


def test_declared_classes_mark_unknown_labels(tmp_path):
    df = make_table()
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = ingest(cfg(f"csv:{tmp_path / 't.csv'}"), seed=0, classes=["a", "b"])
    assert (np.concatenate([ds.y_train, ds.y_test]) == -1).sum() == 20  # all of class "c"


def test_save_load_roundtrip_is_atomic(tmp_path):
    ds = ingest(cfg("sklearn:iris"), seed=0)
    save_prepared(ds, tmp_path / "prepared")
    back = load_prepared(tmp_path / "prepared", mmap=True)
    np.testing.assert_array_equal(back.X_test, ds.X_test)
    assert back.meta == ds.meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temp folders left
