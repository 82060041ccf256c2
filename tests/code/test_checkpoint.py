"""Training engine on tiny literal data: checkpoints, exact resume, NaN stop, memmap streaming,
sharding, precision checks. (DDP over real processes: tests/e2e/test_ddp.py.)"""

from __future__ import annotations

import io
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

from components import checkpoint, distributed, engine, models, stream
from components.config import ConfigError, TrainConfig, load_config


def blobs(n=240, seed=0):
    """Three separable gaussian blobs, (n, 6) float32 and int64 labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 6)).astype(np.float32) + y[:, None].astype(np.float32) * 1.5
    return X, y.astype(np.int64)


def mlp(seed=0):
    torch.manual_seed(seed)
    return models.MLP((6,), 3, hidden=(16,), dropout=0.1)


CFG = TrainConfig(epochs=5, batch_size=32, lr=1e-2, patience=50, num_threads=1, checkpoint_min_seconds=0)


def run(tmp_path=None, cfg=CFG, X=None, y=None, **kw):
    X, y = (X, y) if X is not None else blobs()
    m = mlp()
    ckpt = None if tmp_path is None else tmp_path / "ckpt"
    hist = engine.fit(
        m, X[:200], y[:200], X[200:], y[200:], cfg, 0, progress=False, checkpoint_dir=ckpt, resume_key="k", **kw
    )
    return hist, m


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class Stop(Exception):
    pass


def stop_at(n):
    """An on_epoch callback that interrupts training after epoch n (as a kill would)."""

    def stop(epoch, row):
        if epoch == n:
            raise Stop

    return stop


def test_checkpoints_are_atomic_named_by_digest_and_pruned(tmp_path):
    for epoch in range(1, 5):
        checkpoint.save(tmp_path, epoch, {"w": torch.full((3,), float(epoch))}, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [e.epoch for e in checkpoint.entries(tmp_path)] == [3, 4]
    assert len(names) == 2 and not any(n.endswith(".tmp") for n in names)
    state, path = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 4 and torch.equal(state["w"], torch.full((3,), 4.0))


def test_background_writer_saves_a_snapshot_and_reports_a_failed_write(tmp_path):
    w = torch.zeros(4)
    history = [1.0]
    with checkpoint.Writer() as writer:
        writer.submit(tmp_path, 1, {"w": w, "history": history}, keep=3)
        w += 1  # training goes on while the file is written: the checkpoint keeps the values at submit()
        history.append(2.0)
    state, path = checkpoint.load_latest(tmp_path)
    assert path.name.startswith("epoch-0001.") and torch.equal(state["w"], torch.zeros(4)) and state["history"] == [1.0]

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the checkpoint folder should be")
    writer = checkpoint.Writer()
    writer.submit(blocked, 2, {"w": w}, keep=3)
    with pytest.raises(OSError):
        writer.close()


def test_corrupt_latest_checkpoint_falls_back_to_previous_with_a_warning(tmp_path):
    checkpoint.save(tmp_path, 1, {"w": torch.ones(2)}, keep=3)
    latest = checkpoint.save(tmp_path, 2, {"w": torch.zeros(2)}, keep=3)
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # torn write
    with pytest.warns(checkpoint.CheckpointWarning, match=latest.name):
        state, path = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 1 and path.name.startswith("epoch-0001")


def test_flipped_byte_is_detected_even_when_torch_could_parse_it(tmp_path):
    p = checkpoint.save(tmp_path, 1, {"w": torch.zeros(1000)}, keep=3)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the tensor data: the zip stays readable
    p.write_bytes(bytes(raw))
    with pytest.warns(checkpoint.CheckpointWarning, match="torn or corrupt"):
        assert checkpoint.load_latest(tmp_path) is None


def test_tensors_are_packed_one_record_per_dtype_and_come_back_exactly(tmp_path):
    import zipfile

    state = {
        "w": torch.randn(3, 4),
        "b": torch.zeros(0),
        "step": torch.tensor(7.0),
        "mask": torch.tensor([True, False]),
        "ids": torch.arange(5),
        "half": torch.randn(2, 2).to(torch.bfloat16),
        "t": (1, [torch.ones(2), "x"]),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
        "none": None,
    }
    p = checkpoint.save(tmp_path, 1, state, keep=3)
    records = [n for n in zipfile.ZipFile(p).namelist() if "/data/" in n]
    assert len(records) == 4  # float32, bool, int64 and bfloat16: one flat tensor each, not one per tensor
    got, _ = checkpoint.load_latest(tmp_path)
    for k in ("w", "b", "step", "mask", "ids", "half", "strided"):
        assert got[k].dtype == state[k].dtype and got[k].shape == state[k].shape and torch.equal(got[k], state[k]), k
    assert (
        got["t"][0] == 1
        and torch.equal(got["t"][1][0], torch.ones(2))
        and got["t"][1][1] == "x"
        and got["none"] is None
    )
    assert got["w"].untyped_storage().nbytes() == got["w"].nbytes  # its own copy, not a view of the whole buffer


def test_a_packed_file_with_a_bad_index_is_skipped_as_corrupt(tmp_path):
    checkpoint.save(tmp_path, 1, {"w": torch.ones(2)}, keep=3)
    packed = checkpoint.pack({"w": torch.ones(2)})
    packed["tensors"][0][2] = 99  # more values than its buffer holds; the digest is valid
    buf = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "epoch": 2, **packed}, buf)
    bad = checkpoint.store(tmp_path, 2, buf.getbuffer(), keep=3)
    with pytest.warns(checkpoint.CheckpointWarning, match=bad.name + ".*cannot be read"):
        state, path = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(2))


def test_an_unpacked_checkpoint_of_the_earlier_format_still_resumes(tmp_path):
    _, full = run()
    folder = tmp_path / "ckpt"
    with pytest.raises(Stop):  # then rewrite the checkpoint of epoch 2 the way format 1 stored it
        run(tmp_path, on_epoch=stop_at(3))
    latest = checkpoint.entries(folder)[-1]
    state = checkpoint.read(latest)
    state["format"] = checkpoint.UNPACKED
    state["rng"][0]["python"][1] = tuple(state["rng"][0]["python"][1].tolist())  # format 1 kept python's words as ints
    buf = io.BytesIO()
    torch.save(state, buf)
    checkpoint.clear(folder)
    (folder / f"epoch-0002.{checkpoint._digest(buf.getvalue())}.pt").write_bytes(buf.getvalue())
    hist, resumed = run(tmp_path)
    assert hist.resumed_from == 2 and same_weights(resumed, full)


class Payload:
    def __reduce__(self):  # what a malicious checkpoint would carry
        return (print, ("code ran while loading",))


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path, capsys):
    checkpoint.save(tmp_path, 1, {"w": torch.ones(1)}, keep=3)
    checkpoint.save(tmp_path, 2, {"evil": Payload()}, keep=3)  # a valid digest: only the content is wrong
    with pytest.raises(checkpoint.CheckpointError, match=r"epoch-0002.*refused.*pickled object \(print\)"):
        checkpoint.load_latest(tmp_path)
    assert "code ran" not in capsys.readouterr().out


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    aug = lambda x, g: x + 0.1 * torch.randn(x.shape, generator=g)  # noqa: E731 - uses the saved generator
    full_hist, full = run(augment=aug)
    with pytest.raises(Stop):
        run(tmp_path, augment=aug, on_epoch=stop_at(3))
    assert [e.epoch for e in checkpoint.entries(tmp_path / "ckpt")] == [1, 2]
    hist, resumed = run(tmp_path, augment=aug)
    assert hist.resumed_from == 2 and len(hist.epochs) == CFG.epochs
    assert hist.epochs == full_hist.epochs
    assert same_weights(resumed, full)


def test_checkpoints_are_min_seconds_apart_and_the_last_epoch_always_gets_one(tmp_path):
    """Short epochs get a checkpoint only once checkpoint_min_seconds have passed since the last one
    (here epoch 3, after a pause); resuming from those sparser files ends as an uninterrupted run."""
    cfg = CFG.model_copy(update={"epochs": 6, "checkpoint_min_seconds": 1.0, "keep_checkpoints": 10})
    full_hist, full = run(cfg=cfg)

    def pause_at_3_stop_at_5(epoch, row):
        if epoch == 3:
            time.sleep(1.1)
        stop_at(5)(epoch, row)

    with pytest.raises(Stop):
        run(tmp_path, cfg, on_epoch=pause_at_3_stop_at_5)
    assert [e.epoch for e in checkpoint.entries(tmp_path / "ckpt")] == [3]  # epochs 1-2 and 4-5 took well under 1 s
    hist, resumed = run(tmp_path, cfg)
    assert hist.resumed_from == 3 and hist.epochs == full_hist.epochs and same_weights(resumed, full)
    assert [e.epoch for e in checkpoint.entries(tmp_path / "ckpt")] == [3, 6]


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    run(tmp_path)
    m = mlp()
    X, y = blobs()
    with pytest.warns(checkpoint.CheckpointWarning, match="another configuration"):
        hist = engine.fit(
            m,
            X[:200],
            y[:200],
            X[200:],
            y[200:],
            CFG,
            0,
            progress=False,
            checkpoint_dir=tmp_path / "ckpt",
            resume_key="other",
        )
    assert hist.resumed_from == 0 and [e.epoch for e in checkpoint.entries(tmp_path / "ckpt")][-1] == CFG.epochs


def test_nan_loss_stops_with_a_clear_error_and_keeps_good_checkpoints(tmp_path):
    calls = {"n": 0}
    steps_per_epoch = -(-200 // CFG.batch_size)

    def poison_epoch_3(x, g):
        calls["n"] += 1
        return x * float("nan") if calls["n"] > 2 * steps_per_epoch else x

    with pytest.raises(engine.TrainingDiverged, match=r"loss is nan at epoch 3, step 1; lower train.lr"):
        run(tmp_path, augment=poison_epoch_3)
    kept = checkpoint.entries(tmp_path / "ckpt")
    assert [e.epoch for e in kept] == [1, 2]
    state, _ = checkpoint.load_latest(tmp_path / "ckpt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_memmap_streaming_matches_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "KEEP_MAPPED_BYTES", 0)  # stream even this small file
    X, y = blobs()
    np.save(tmp_path / "X.npy", X)
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    view = stream.Rows(mm, np.arange(200))
    assert view.streamed and not stream.Rows(X).streamed
    mean, std = stream.channel_stats(view)
    np.testing.assert_allclose(mean, X[:200].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, X[:200].std(0, ddof=1), rtol=1e-5)
    h_mem, m_mem = run()
    m = mlp()
    h_map = engine.fit(m, view, y[:200], stream.Rows(mm, np.arange(200, 240)), y[200:], CFG, 0, progress=False)
    assert [r["val_accuracy"] for r in h_map.epochs] == [r["val_accuracy"] for r in h_mem.epochs]
    np.testing.assert_allclose(
        [r["train_loss"] for r in h_map.epochs], [r["train_loss"] for r in h_mem.epochs], rtol=1e-4
    )
    h_workers = engine.fit(
        mlp(),
        view,
        y[:200],
        stream.Rows(mm, np.arange(200, 240)),
        y[200:],
        CFG.model_copy(update={"loader_workers": 2}),
        0,
        progress=False,
    )
    assert [r["train_loss"] for r in h_workers.epochs] == [r["train_loss"] for r in h_map.epochs]


def test_shards_partition_each_epoch_and_reshuffle():
    parts = [distributed.shard(10, seed=0, epoch=1, rank=r, world=3) for r in range(3)]
    assert {len(p) for p in parts} == {4}  # padded to equal counts (12 = 10 + 2 repeats)
    assert set(np.concatenate(parts)) == set(range(10))
    assert np.array_equal(parts[0], distributed.shard(10, 0, 1, 0, 3))
    assert not np.array_equal(distributed.shard(10, 0, 1), distributed.shard(10, 0, 2))


def test_precision_and_distributed_settings_are_checked():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        engine.check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"train.distributed.nproc_per_node: must be 'auto' or a whole number"):
        load_config(None, ["train.distributed.nproc_per_node=0"])
    assert distributed.resolve_nproc(3) == 3 and distributed.threads_per_rank(0, 2) >= 1


def test_bf16_autocast_trains_on_cpu_like_fp32():
    h16, _ = run(cfg=CFG.model_copy(update={"precision": "bf16"}))
    h32, _ = run()
    assert h16.epochs[-1]["val_accuracy"] > 0.6  # chance is 1/3
    assert abs(h16.epochs[-1]["val_accuracy"] - h32.epochs[-1]["val_accuracy"]) <= 0.05


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_trains_like_fp32(precision):
    X, y = blobs()
    m, seen = mlp(), set()
    h_mixed = engine.fit(
        m,
        X[:200],
        y[:200],
        X[200:],
        y[200:],
        CFG.model_copy(update={"precision": precision}),
        0,
        progress=False,
        on_epoch=lambda e, row: seen.add(next(m.parameters()).device.type),
    )
    h32, _ = run()
    assert (
        seen == {"cuda"} and next(m.parameters()).device.type == "cpu"
    )  # trained on the GPU, handed back where it came from
    assert abs(h_mixed.epochs[-1]["val_accuracy"] - h32.epochs[-1]["val_accuracy"]) <= 0.05


@pytest.mark.gpu
@needs_cuda
def test_cuda_checkpoint_resume_is_exact(tmp_path):
    full_hist, full = run()
    with pytest.raises(Stop):
        run(tmp_path, on_epoch=stop_at(3))
    hist, resumed = run(tmp_path)
    assert hist.resumed_from == 2
    assert [r["val_accuracy"] for r in hist.epochs] == [r["val_accuracy"] for r in full_hist.epochs]


@pytest.mark.parametrize("keep", ["last", "best"])
def test_keep_decides_the_final_weights_and_early_stopping(keep):
    X, y = blobs()
    y_val = (y[200:] + 1) % 3  # validation labels that contradict the training ones: val loss rises as it learns
    m, per_epoch = mlp(), {}
    cfg = CFG.model_copy(update={"epochs": 12, "patience": 2, "keep": keep})
    hist = engine.fit(
        m,
        X[:200],
        y[:200],
        X[200:],
        y_val,
        cfg,
        0,
        progress=False,
        on_epoch=lambda e, row: per_epoch.__setitem__(e, {k: v.cpu().clone() for k, v in m.state_dict().items()}),
    )
    losses = [row["val_loss"] for row in hist.epochs]
    if keep == "last":  # the whole schedule, the final epoch's weights
        assert len(hist.epochs) == 12 and not hist.stopped_early and hist.best_epoch == 12
    else:  # stopped `patience` epochs after the lowest validation loss, that epoch's weights restored
        assert hist.stopped_early and len(hist.epochs) == hist.best_epoch + 2 < 12
        assert hist.best_epoch == 1 + int(np.argmin(losses))
    want = per_epoch[hist.best_epoch]
    assert all(torch.equal(v, want[k]) for k, v in m.state_dict().items())


def test_val_every_validates_on_its_epochs_and_the_last_and_leaves_the_weights_alone():
    """Validation is a read-only pass: skipping it changes no weight; keep: best chooses among the
    validated epochs only and counts patience in validations."""
    X, y = blobs()
    every, every_3 = (
        run(cfg=CFG.model_copy(update={"epochs": 7})),
        run(cfg=CFG.model_copy(update={"epochs": 7, "val_every": 3})),
    )
    assert [e for e, row in enumerate(every_3[0].epochs, 1) if "val_loss" in row] == [3, 6, 7]
    assert all(set(row) == {"train_loss", "lr"} for e, row in enumerate(every_3[0].epochs, 1) if e not in (3, 6, 7))
    assert same_weights(every[1], every_3[1])
    assert every_3[0].epochs[-1]["val_accuracy"] == every[0].epochs[-1]["val_accuracy"]

    y_val = (y[200:] + 1) % 3  # contradicting labels: the validation loss rises as the model learns
    m = mlp()
    cfg = CFG.model_copy(update={"epochs": 20, "patience": 2, "keep": "best", "val_every": 2})
    hist = engine.fit(m, X[:200], y[:200], X[200:], y_val, cfg, 0, progress=False)
    assert hist.best_epoch % 2 == 0 and hist.stopped_early
    assert len(hist.epochs) == hist.best_epoch + 2 * 2  # two validations without improvement, 2 epochs apart


def test_a_tuning_trial_validates_every_epoch_whatever_train_val_every_says():
    import optuna

    from components import tune

    cfg = tune.apply_overrides(load_config(None), {"train.val_every": 5, "train.epochs": 4})
    assert cfg.train.val_every == 5
    seen = []
    study = optuna.create_study()
    data = tune.TrialData(*blobs(), kind="tabular", value_range=None, classes=["a", "b", "c"], feature_shape=[6])
    cfg = tune.apply_overrides(cfg, {"tune.epochs": [2, 2], "tune.pruner": "none", "model.kind": "mlp"})
    study.optimize(lambda t: tune.objective(t, cfg, data, log=lambda row, e: seen.append(sorted(row))), n_trials=1)
    assert seen == [["lr", "train_loss", "val_accuracy", "val_loss"]] * 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_writer_thread_runs_at_background_priority_and_training_keeps_its_own():
    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    for background, expected in ((True, 19), (False, before)):
        writer = checkpoint.Writer(background)
        try:
            assert writer._pool.submit(nice).result() == expected
        finally:
            writer.close()
    assert nice() == before  # the training thread (and the process) keep theirs
