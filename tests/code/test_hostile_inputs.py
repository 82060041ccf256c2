"""Hostile images and prediction inputs become data errors that name the file (and the rows), never
a decode of a huge image, a traceback or a nan confidence (issue 18)."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.config import load_config
from components.data import ingest, read_image
from components.errors import ConfigError, DataError
from flows.inputs import read_inputs
from tests.conftest import make_images


def bomb_png(path, width: int, height: int) -> None:
    """A valid 1-bit grayscale PNG of width x height black pixels, written row by row: a tiny file
    whatever it declares (20000 x 20000: 49 kB; the issue's was 380 kB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def cfg(root, **extra):
    return load_config(None, [f"data.source=imagefolder:{root}"] + [f"data.{k}={v}" for k, v in extra.items()]).data


@pytest.mark.parametrize("side", [20000, 10000])  # over Pillow's error limit; between its warning and error limits
def test_a_decompression_bomb_is_a_data_error_from_the_header(tmp_path, side):
    root = make_images(tmp_path / "imgs", n_per_class=3)
    bomb = root / "dot" / "bomb.png"
    bomb_png(bomb, side, side)
    assert bomb.stat().st_size < 1_000_000
    t = time.perf_counter()
    with pytest.raises(DataError, match=r"dot/bomb.png: image too large") as e:
        ingest(cfg(root), seed=0)
    assert time.perf_counter() - t < 5  # not decoded: 400 M pixels would take far longer
    assert "data.max_pixels" in str(e.value)


def test_an_image_over_max_pixels_is_refused_before_decoding(tmp_path):
    root = make_images(tmp_path / "imgs", n_per_class=3)
    Image.new("RGB", (300, 200), "white").save(root / "bar" / "big.jpg")
    says = r"bar/big.jpg: image too large: 300 x 200 = 60,000 pixels, over data.max_pixels 50,000"
    with pytest.raises(DataError, match=says):
        ingest(cfg(root, max_pixels=50000), seed=0)
    assert ingest(cfg(root, max_pixels=60000), seed=0).meta.n_train == 5  # at the limit it is read


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_any_undecodable_file_is_a_data_error_naming_it(tmp_path, content):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(DataError, match=r"x.png: unreadable or corrupt image \(\w+"):
        read_image(tmp_path / "x.png", (8, 8), True, 1000)


def test_max_pixels_is_bounded_at_load():
    with pytest.raises(ConfigError, match=r"data.max_pixels.*less than or equal to 89000000"):
        load_config(None, ["data.max_pixels=200000000"])


# ---------------------------------------------------------------- prediction inputs


def test_empty_header_only_and_zero_row_inputs_are_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv: empty file"):
        read_inputs(tmp_path / "empty.csv", (4,))
    (tmp_path / "header.csv").write_text("f0,f1,f2,f3\n")
    with pytest.raises(DataError, match=r"header.csv: no rows to predict \(header only"):
        read_inputs(tmp_path / "header.csv", (4,))
    np.savez(tmp_path / "none.npz", X=np.zeros((0, 4), np.float32))
    with pytest.raises(DataError, match=r"none.npz: no rows to predict \(0 rows\)"):
        read_inputs(tmp_path / "none.npz", (4,))
    (tmp_path / "text.csv").write_text("f0,f1\n1,a\n")
    with pytest.raises(DataError, match=r"text.csv: feature columns must be numeric; not numeric: \['f1'\]"):
        read_inputs(tmp_path / "text.csv", (2,))


def test_rows_with_nan_or_inf_are_named_or_skipped(tmp_path):
    X = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    X[1, 2], X[4, 0] = np.nan, np.inf
    pd.DataFrame(X, columns=[f"f{i}" for i in range(4)]).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match=r"x.csv: 2 row\(s\) with NaN or infinite values: rows 1, 4 .*--skip-invalid"):
        read_inputs(tmp_path / "x.csv", (4,))
    skipped = []
    names, got = read_inputs(tmp_path / "x.csv", (4,), skipped=skipped)
    assert skipped == ["1", "4"] and names == ["0", "2", "3", "5"]
    np.testing.assert_array_equal(got, X[[0, 2, 3, 5]])
    np.savez(tmp_path / "all.npz", X=np.full((3, 4), np.nan))
    with pytest.raises(DataError, match=r"all.npz: every row \(3\) with NaN"):
        read_inputs(tmp_path / "all.npz", (4,), skipped=[])


def test_an_image_folder_for_predict_checks_max_pixels(tmp_path):
    root = make_images(tmp_path / "imgs", n_per_class=2)
    bomb_png(root / "bomb.png", 20000, 20000)
    with pytest.raises(DataError, match=r"bomb.png: image too large"):
        read_inputs(root, (1, 8, 8))
