"""Reading `mlpipe predict` inputs into the model's input shape."""

import numpy as np
import pytest

from components.errors import DataError
from flows.inputs import read_inputs
from tests.conftest import make_images, make_table


def test_csv_drops_the_label_column_and_keeps_row_order(tmp_path):
    df = make_table(n=9)
    df.to_csv(tmp_path / "x.csv", index=False)
    names, X = read_inputs(tmp_path / "x.csv", (4,))
    assert names == [str(i) for i in range(9)] and X.dtype == np.float32
    np.testing.assert_allclose(X, df.drop(columns=["label"]).to_numpy(np.float32))


def test_npz_rows_are_reshaped_to_the_model_shape(tmp_path):
    np.savez(tmp_path / "x.npz", X=np.arange(2 * 64).reshape(2, 64))
    _, X = read_inputs(tmp_path / "x.npz", (1, 8, 8))
    assert X.shape == (2, 1, 8, 8) and X[1, 0, 0, 0] == 64


def test_width_mismatch_names_both_sizes(tmp_path):
    make_table(n=6).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match=r"rows have 4 values, model expects 30"):
        read_inputs(tmp_path / "x.csv", (30,))


def test_image_folder_needs_an_image_model_and_loads_every_image(tmp_path):
    root = make_images(tmp_path / "imgs", n_per_class=3, size=10)
    names, X = read_inputs(root, (1, 6, 6))
    assert len(names) == 6 and X.shape == (6, 1, 6, 6) and names[0] == "bar/000.jpg"
    with pytest.raises(DataError, match="needs an image model"):
        read_inputs(root, (36,))


def test_unsupported_input(tmp_path):
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="unsupported input"):
        read_inputs(tmp_path / "x.txt", (3,))
