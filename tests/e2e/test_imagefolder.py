"""An image-folder dataset through `mlpipe run` on Prefect's temporary server (no PREFECT_API_URL:
the default `make run` path on a laptop), then `mlpipe predict` on a folder of images."""

from __future__ import annotations

import pytest

from tests.conftest import cli, make_images
from tests.e2e.test_pipeline import FAST

pytestmark = pytest.mark.slow


def test_imagefolder_source_and_image_predict(project):
    root = make_images(project / "raw", n_per_class=20, size=12, rgb=True)
    r = cli(
        "run",
        "--set",
        f"data.source=imagefolder:{root}",
        "--set",
        "data.image_size=[12, 12]",
        "--set",
        "data.grayscale=false",
        "--set",
        "train.epochs=8",
        "--set",
        "validate.min_rows_per_class=5",
        "--set",
        "promote.accuracy_floor=0.7",
        *FAST,
        cwd=project,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mlpipe-raw v1" in r.stdout
    r = cli("predict", "--model", "models:/mlpipe-raw@champion", str(root / "dot"), cwd=project)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split(",") for line in r.stdout.strip().splitlines()[1:]]
    assert len(rows) == 20 and sum(c == "dot" for _, c, _ in rows) >= 16
