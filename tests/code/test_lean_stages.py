"""Stages pay only for what they run (issue 25): a disabled stage opens no data file and no model, and
still writes its declared outputs; the evaluate stage reads a memory-mapped dataset without
materialising it (a child process whose data memory is capped below the training split); the
vectorised duplicate and leakage checks of validation find exactly the rows the per-row SHA-1
hashes found."""

from __future__ import annotations

import builtins
import hashlib
import json
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from components import data, validate

CLASSES = ["a", "b", "c"]


# ------------------------------------------------------------------ validation: the same rows as before


def _sha1_frame(X: np.ndarray, y: np.ndarray, other: set[str] | None) -> pd.DataFrame:
    """The per-row facts as validation computed them before issue 25 (a SHA-1 per row, np.isin over hex)."""
    flat = np.ascontiguousarray(X.reshape(len(X), -1))
    hashes = np.array([hashlib.sha1(r.tobytes()).hexdigest() for r in flat])
    finite = np.isfinite(flat)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nanmin of an all-NaN row
        masked = np.where(finite, flat, np.nan)
        x_min = np.nanmin(masked, axis=1) if flat.shape[1] else np.zeros(len(X))
        x_max = np.nanmax(masked, axis=1) if flat.shape[1] else np.zeros(len(X))
    return pd.DataFrame(
        {
            "label": y.astype(np.int64),
            "x_dtype": str(X.dtype),
            "y_dtype": str(y.dtype),
            "n_features": flat.shape[1],
            "n_nonfinite": (~finite).sum(axis=1),
            "x_min": x_min.astype(np.float64),
            "x_max": x_max.astype(np.float64),
            "duplicate": pd.Series(hashes).duplicated().to_numpy(),
            "leak": np.isin(hashes, list(other)) if other else np.zeros(len(X), bool),
        }
    )


def constructed(shape=(7,)):
    """Train with duplicates (twice and three times), test with leaks, and near-duplicates that must not
    match: one ulp apart, 0.0 vs -0.0, two values swapped, a NaN row, an all-NaN row."""
    rng = np.random.default_rng(3)
    tr = rng.normal(size=(40, *shape)).astype(np.float32)
    te = rng.normal(size=(12, *shape)).astype(np.float32)
    f = tr.reshape(len(tr), -1)
    f[5] = f[2]  # duplicate
    f[9] = f[2]  # and again
    f[11] = f[7]
    f[12] = np.nextafter(f[3], np.float32(np.inf))  # one ulp from row 3
    f[13] = f[14]
    f[13, 0] = 0.0
    f[14, 0] = -0.0  # 0.0 vs -0.0: different bytes
    f[15] = f[16][::-1]  # the same values in another order
    f[20, 1] = np.nan
    f[21] = np.nan
    f[22] = f[21]  # two all-NaN rows with the same bits
    t = te.reshape(len(te), -1)
    t[0] = f[2]  # leaks (one of them duplicated in train)
    t[3] = f[30]
    t[4] = f[30]  # a leak twice: a duplicate within test as well
    t[6] = np.nextafter(f[31], np.float32(-np.inf))  # near-leak
    t[8] = f[32] * np.float32(1.0000001)
    t[10] = f[21]  # an all-NaN leak
    return tr, rng.integers(0, 3, len(tr)), te, rng.integers(0, 3, len(te))


@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2,), (0,)], ids=["odd-width", "image", "one-word", "empty-row"])
def test_duplicate_and_leak_checks_find_the_rows_the_sha1_checks_found(shape):
    if shape == (0,):
        tr, te = np.zeros((6, 0), np.float32), np.zeros((3, 0), np.float32)
        ytr, yte = np.zeros(6, np.int64), np.zeros(3, np.int64)
    else:
        tr, ytr, te, yte = constructed(shape)
    old_train = _sha1_frame(tr, ytr, None)
    sha = {hashlib.sha1(r.tobytes()).hexdigest() for r in np.ascontiguousarray(tr.reshape(len(tr), -1))}
    old_test = _sha1_frame(te, yte, sha)
    keys = validate.row_keys(tr)
    new_train = validate.sample_frame(tr, ytr, None, keys)
    new_test = validate.sample_frame(te, yte, keys)
    pd.testing.assert_frame_equal(new_train, old_train, check_dtype=False)
    pd.testing.assert_frame_equal(new_test, old_test, check_dtype=False)
    if shape == (7,):  # the case as built: these rows and no others
        assert np.flatnonzero(new_train["duplicate"]).tolist() == [5, 9, 11, 22]
        assert np.flatnonzero(new_test["leak"]).tolist() == [0, 3, 4, 10]
        assert np.flatnonzero(new_test["duplicate"]).tolist() == [4]


def test_row_keys_are_read_a_chunk_at_a_time_from_a_memmap(tmp_path, monkeypatch):
    """A memmap gives the same keys and facts in chunks as in memory in one go."""
    monkeypatch.setattr(validate, "CHUNK_BYTES", 64)  # a few rows per chunk
    tr, ytr, _, _ = constructed()
    np.save(tmp_path / "X.npy", tr)
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    np.testing.assert_array_equal(validate.row_keys(mm), validate.row_keys(tr.copy()))
    monkeypatch.setattr(validate, "CHUNK_BYTES", 1 << 20)
    pd.testing.assert_frame_equal(validate.sample_frame(mm, ytr, None), _sha1_frame(tr, ytr, None), check_dtype=False)


def test_label_encoding_is_unchanged():
    labels = np.array(["b", "a", "c", "a", "b", "b"], dtype=object)
    y, classes = data.encode_labels(labels, None)
    assert classes == ["a", "b", "c"] and y.tolist() == [1, 0, 2, 0, 1, 1]
    y, classes = data.encode_labels(np.array([3, 1, 2, 1]), ["1", "2"])  # declared classes: unknown -> -1
    assert classes == ["1", "2"] and y.tolist() == [-1, 0, 1, 0] and y.dtype == np.int64
    y, _ = data.encode_labels(np.array([1.0, 2.0, 1.0]), ["1.0", "2.0"])
    assert y.tolist() == [0, 1, 0]


# ------------------------------------------------------------------ disabled stages


@pytest.fixture(scope="module")
def small_project(tmp_path_factory):
    """A prepared table, a model.pt that is no model, and an MLflow store (made once: ~15 s here)."""
    from components import tracking
    from components.config import load_config
    from flows.paths import Paths

    root = tmp_path_factory.mktemp("lean")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    cfg = load_config(
        None,
        ["compress.enabled=false", "tune.enabled=false", "cv.enabled=false", "baseline.enabled=false"]
        + ["explain.enabled=false"],
    )
    paths = Paths(root)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)).astype(np.float32), np.repeat(np.arange(3), 20)
    meta = data.Meta("npz:x", "tabular", [4], CLASSES, 60, 15, {}, None, "h0", 0, 0.2)
    data.save_prepared(data.Prepared(X, y, X[:15], y[:15], meta), paths.prepared)
    paths.model_file.parent.mkdir(parents=True, exist_ok=True)
    paths.model_file.write_bytes(b"not a model: a disabled stage must not load it")
    tracking.setup(cfg.tracking, root)
    yield cfg, paths
    mp.undo()


OFF = {"tune": {"tuned": False}, "baseline": {"enabled": False}, "cv": {"folds": 0}, "compress": {"enabled": False}}


def test_disabled_stages_open_no_data_and_no_model_and_write_their_outputs(small_project, monkeypatch):
    from components import models
    from flows.stages import BY_NAME

    cfg, paths = small_project
    opened: list[str] = []
    real_open = builtins.open

    def recording_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def no_model(*a, **k):
        raise AssertionError("a disabled stage loaded the model")

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail(f"a disabled stage loaded {a[0]}"))
    monkeypatch.setattr(models, "load", no_model)
    for name in ("tune", "baseline", "cv", "explain", "compress"):
        opened.clear()
        summary = BY_NAME[name].run(cfg, paths)
        read = [f for f in opened if str(paths.prepared) in f and not f.endswith("meta.json")]
        assert read == [], f"{name} opened {read}"
        for attr in BY_NAME[name].writes:
            assert getattr(paths, attr).exists(), f"{name}: declared output {attr} missing"
        assert summary == OFF[name] if name in OFF else summary["method"] is None
    table = json.loads(paths.compress_table.read_text())
    assert table["rows"] == [] and table["enabled"] is False and table["data_hash"] == "h0"
    assert not any(paths.compressed.iterdir())


def test_register_considers_fp32_alone_after_a_disabled_compress(small_project):
    from flows.stages import compress, register

    cfg, paths = small_project
    compress.run(cfg, paths)
    h = compress.file_hash(paths.model_file)
    rows, note = register.candidates(paths, h, "h0", 0.875)
    assert [r["variant"] for r in rows] == ["fp32"] and rows[0]["accuracy"] == 0.875
    assert note == "compress.enabled was false"
    rows, note = register.candidates(paths, "another model", "h0", 0.875)
    assert "another model.pt" in note


# ------------------------------------------------------------------ a memory-mapped dataset stays mapped


def _data_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmData:"))


def _in_capped_child(fn, cap_bytes: int):
    """fn() in a forked child whose private writable memory (RLIMIT_DATA: heap and anonymous mappings) may
    grow by at most cap_bytes -> what fn returned (JSON), or the child's error. RLIMIT_DATA, not RLIMIT_AS:
    a read-only file mapping (np.load with mmap_mode="r") is not counted, while RLIMIT_AS would refuse the
    mapping itself. A fork, not a fresh interpreter: the imports are already paid (~15 s of this test)."""
    import ctypes
    import os
    import resource
    import traceback

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(r)
        code = 1
        try:
            import torch

            torch.set_num_threads(1)  # no OpenMP pool in a forked child
            # every allocation of 128 KiB or more a fresh mapping, counted against the limit: otherwise the
            # free heap this worker's earlier tests left (already counted) serves it, and the cap does not bite
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
            libc.malloc_trim(0)  # and what can be given back of that free heap, given back
            limit = _data_kb() * 1024 + cap_bytes
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
            out = {"ok": fn()}
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent
            out = {"error": traceback.format_exc()}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out, default=str))
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        got = json.loads(f.read() or '{"error": "no answer"}')
    os.waitpid(pid, 0)
    return got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc: Linux")
def test_evaluate_reads_a_mapped_training_split_larger_than_its_memory_limit(tmp_path, small_project):
    """X_train.npy (sparse on disk) is twice the memory the evaluate stage may allocate: the stage maps it
    and reads only the test rows, a batch at a time. The same limit refuses reading X_train.npy whole."""
    import torch

    from components import models
    from flows.paths import Paths
    from flows.stages import evaluate

    cfg = small_project[0]
    paths = Paths(tmp_path)
    features, big = 64, 1 << 30  # a 1 GiB training split
    n_train = big // (features * 4)
    rng = np.random.default_rng(0)
    X_test, y_test = rng.normal(size=(300, features)).astype(np.float32), np.arange(300) % 3
    paths.prepared.mkdir(parents=True)
    np.lib.format.open_memmap(paths.prepared / "X_train.npy", "w+", np.float32, (n_train, features)).flush()
    np.lib.format.open_memmap(paths.prepared / "y_train.npy", "w+", np.int64, (n_train,)).flush()
    np.save(paths.prepared / "X_test.npy", X_test)
    np.save(paths.prepared / "y_test.npy", y_test)
    meta = data.Meta("npz:big", "tabular", [features], CLASSES, n_train, 300, {}, None, "h1", 0, 0.2)
    (paths.prepared / "meta.json").write_text(json.dumps(meta.__dict__))
    spec = models.spec_for(cfg.model, meta)
    torch.manual_seed(0)
    model = models.build(spec)
    paths.model_file.parent.mkdir(parents=True, exist_ok=True)
    models.save(model, spec, CLASSES, paths.model_file)
    paths.history.write_text(json.dumps({"epochs": [{"train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.3}]}))

    refused = _in_capped_child(lambda: np.load(paths.prepared / "X_train.npy").shape, big // 2)
    assert "MemoryError" in refused.get("error", ""), refused  # the limit bites
    got = _in_capped_child(lambda: evaluate.run(cfg, paths), big // 2)
    assert "ok" in got, got.get("error")
    model.eval()
    with torch.no_grad():
        want = (model(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean()
    assert got["ok"]["test_accuracy"] == pytest.approx(want)


# ------------------------------------------------------------------ ingest and start-up


def test_content_hash_is_the_digest_of_the_whole_bytes_copy():
    """Fed a chunk at a time from the arrays' buffers, the hash is what hashing tobytes() gave (cached runs
    and registered versions keep their data hash)."""
    rng = np.random.default_rng(1)
    arrays = [
        rng.normal(size=(300, 3, 4, 4)).astype(np.float32),
        np.arange(300),
        rng.normal(size=(9, 7))[:, ::2],  # not contiguous
        np.zeros((4, 0), np.float32),
    ]
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    assert data.content_hash(*arrays) == h.hexdigest()[:16]


def test_csv_features_read_as_float32_equal_the_float64_read_cast(tmp_path):
    from components.errors import DataError

    rng = np.random.default_rng(2)
    n = 500
    df = pd.DataFrame(
        {
            "x": rng.normal(size=n) * 1e3,
            "big": rng.integers(-(10**9), 10**9, n),
            "tiny": rng.normal(size=n) * 1e-30,
            "label": rng.choice(["cat", "dog"], n),
        }
    )
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False, float_format="%.17g")
    raw = data.load_table("csv", path, "label")
    want = pd.read_csv(path).drop(columns=["label"]).to_numpy(np.float32)
    np.testing.assert_array_equal(raw.X, want)
    assert raw.X.dtype == np.float32 and raw.labels.tolist() == df["label"].tolist()
    df.assign(word="w").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"not numeric: \['word'\]"):
        data.load_table("csv", path, "label")


def test_a_run_uses_the_prefect_server_of_mlpipe_serve(tmp_path, monkeypatch):
    """A live pid file of `mlpipe serve` with a healthy URL: `mlpipe run` points Prefect at it; a dead pid,
    an unhealthy server or a PREFECT_API_URL already set leave Prefect as it was."""
    import http.server
    import os
    import threading

    from flows import cli
    from flows.paths import Paths

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's name
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/api"
        paths = Paths(tmp_path)
        paths.servers.mkdir(parents=True)
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        assert cli._use_served_prefect() is None  # no `mlpipe serve` here
        paths.server_pid("prefect").write_text(f"{os.getpid()}\n{url}\n")
        assert cli._use_served_prefect() == url and os.environ["PREFECT_API_URL"] == url
        monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere/api")
        assert cli._use_served_prefect() is None and os.environ["PREFECT_API_URL"] == "http://elsewhere/api"
        monkeypatch.delenv("PREFECT_API_URL")
        paths.server_pid("prefect").write_text(f"{os.getpid()}\n{url}/nothing-here\n")  # not healthy
        assert cli._use_served_prefect() is None and "PREFECT_API_URL" not in os.environ
    finally:
        httpd.shutdown()


def _big_csv(path, rows: int, features: int, seed: int = 0) -> None:
    """rows x features of 4-decimal values plus a text label: a block of 1,000 distinct rows written again
    and again (fast to write; repeated rows are validation's concern, not ingest's)."""
    rng = np.random.default_rng(seed)
    block = rng.normal(size=(1000, features)).astype(np.float32)
    labels = np.array(["cat", "dog", "eel"])[np.arange(1000) % 3]
    lines = "".join(",".join(f"{v:.4f}" for v in row) + f",{lab}\n" for row, lab in zip(block, labels))
    with open(path, "w") as f:
        f.write(",".join(f"f{i}" for i in range(features)) + ",label\n")
        for _ in range(rows // 1000):
            f.write(lines)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc: Linux")
def test_ingest_streams_a_csv_larger_than_its_memory_limit(tmp_path, monkeypatch):
    """A CSV whose float32 features are 4/3 of the memory a child process may allocate (the CSV itself
    twice that): ingest_to reads it in chunks into the mapped prepared arrays, and writes what the
    in-memory split holds (same arrays, same meta and content hash). The same limit refuses the in-memory
    read. (The streaming read needs about 15-20 MB here, the CSV parser's transients included.)"""
    import torch  # noqa: F401 - imported once here, not in each child
    from sklearn.model_selection import train_test_split  # noqa: F401 - imported before the limit, as the stage has

    from components.config import load_config

    rows, features = 50_000, 256  # 51 MB of float32 (the CSV: 84 MB)
    path = tmp_path / "big.csv"
    _big_csv(path, rows, features)
    cfg = load_config(None, [f"data.source=csv:{path}"]).data
    cap = rows * features * 4 * 3 // 4
    monkeypatch.setattr(data, "BLOCK_BYTES", 16 << 20)  # 16 MB per chunk's parse: 1,360 rows (the default 32 MB)
    out = tmp_path / "prepared"

    refused = _in_capped_child(lambda: data.split(data.load_source(cfg), cfg, 0).meta.n_train, cap)
    error = refused.get("error", "")
    assert "MemoryError" in error or "C error: out of memory" in error, refused  # the limit bites the whole read
    got = _in_capped_child(lambda: data.ingest_to(cfg, 0, out).content_hash, cap)
    assert "ok" in got, got.get("error")
    want = data.split(data.load_source(cfg), cfg, 0)
    assert got["ok"] == want.meta.content_hash
    back = data.load_prepared(out, mmap=True)
    assert back.meta == want.meta and back.X_train.shape == (40_000, features)
    for name in ("X_train", "X_test", "y_train", "y_test"):
        np.testing.assert_array_equal(getattr(back, name), getattr(want, name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv", "prepared"]  # no temp folder left
