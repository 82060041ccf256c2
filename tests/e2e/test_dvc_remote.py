"""`dvc push` / `dvc pull` of data and a model round-trip through the project's default remote
(.dvc/config: a local folder), in a fresh DVC project that uses that config."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import BIN, REPO

pytestmark = pytest.mark.slow


def _dvc(*args, cwd):
    r = subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert r.returncode == 0, f"dvc {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def _digest(path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def test_push_pull_round_trip_through_default_remote(tmp_path):
    _dvc("init", "--no-scm", "-q", cwd=tmp_path)
    # the repository's config (default remote and all), in a project without git
    (tmp_path / ".dvc" / "config").write_text(
        (REPO / ".dvc" / "config").read_text().replace("[core]\n", "[core]\n    no_scm = True\n", 1)
    )
    data, model = tmp_path / "data" / "prepared", tmp_path / "models" / "model.pt"
    data.mkdir(parents=True)
    model.parent.mkdir()
    rng = np.random.default_rng(0)
    np.save(data / "X_train.npy", rng.normal(size=(200, 64)).astype(np.float32))
    (data / "meta.json").write_text('{"source": "test"}')
    model.write_bytes(rng.bytes(4096))
    before = {p: _digest(p) for p in (data, model)}
    _dvc("add", "-q", "data/prepared", "models/model.pt", cwd=tmp_path)
    assert "pushed" in _dvc("push", cwd=tmp_path)
    remote = tmp_path / ".dvcstore"
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*"))
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    shutil.rmtree(data)
    model.unlink()
    _dvc("pull", cwd=tmp_path)
    assert {p: _digest(p) for p in (data, model)} == before
