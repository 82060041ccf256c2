"""Training-engine benchmarks (issue 4). CPU only; prints one JSON line per measurement.

    python -m benchmarks.train overhead [--repeats 3] [--epochs 5] [--val-every 1] [--set KEY=VALUE]
        [--variant KEY=VALUE] [--pairs-only]
    python -m benchmarks.train memmap [--gb 4]
    python -m benchmarks.train ddp [--epochs 20] [--seeds 0 1 2]
    python -m benchmarks.train omp-wait [--repeats 2] [--epochs 15] [--rows 1300]
    python -m benchmarks.train checkpoint-cost [--repeats 40] [--threads 1] [--normal-priority]
    python -m benchmarks.train checkpoint-parts [--repeats 200] [--scratch DIR]
    python -m benchmarks.train [WHAT] --smoke     (tiny; no WHAT: all but ddp, ~30 s)

overhead: the train stage's compute (flows.stages.train_worker.train_model: memmap streaming, validation
  every --val-every epochs, atomic checkpoints, model + history files) against benchmarks/bare_loop.py
  running the same recipe over in-memory tensors (fused AdamW, one-cycle schedule, the same
  validation passes), same model, data, batch size, epochs, threads; runs interleaved; throughput =
  training samples/s. Also reported against the bare training steps alone (no validation, no
  schedule: the stage then pays for its validation passes too), and that loop's fused-AdamW gain
  over torch's default AdamW. --variant KEY=VALUE also runs the stage so changed in every repeat
  (e.g. train.checkpoint_every=0: what the checkpoints cost) and reports it over the stage. Each
  ratio comes with a 95% bootstrap interval of its median; --pairs-only skips the steps-only and
  default-AdamW loops, for more pairs in the same time.
memmap: one epoch over a synthetic float32 dataset of --gb GB written to a scratch folder (deleted
  after), in a fresh process; reports its peak RSS.
ddp: the train stage on digits with 1 rank x 2 threads and 2 ranks x 1 thread (gloo, elastic
  launcher): test accuracy and training throughput of each.
omp-wait: the bare loop (default CNN, 2 torch threads, random 8x8 data) alone and as two processes
  at once, with OMP_WAIT_POLICY ACTIVE (spinning) and PASSIVE (sleeping): why `make test`, whose two
  workers train at the same time, sets PASSIVE.
checkpoint-cost: what a per-epoch checkpoint costs the training thread, in one process: engine
  epochs on digits (default CNN) alone and right after queueing a checkpoint on the background
  writer (packed and serialized on the training thread; hashed, written and fsynced on the writer
  while the epoch trains), interleaved; the paired ratio of the two epoch times. --normal-priority: the writer
  thread at the process's priority instead of the engine's background priority.
checkpoint-parts: the CPU time (this thread's) of each part of one checkpoint of the default CNN
  after 20 epochs (model + AdamW moments + scheduler + RNG + history), as the engine builds it:
  on the training thread, packing and serializing (pack + torch.save); on the writer, storing
  (sha256, write, fsync, rename, directory fsync, prune); and torch.save of the same state with one
  record per tensor (checkpoint format 1), in the same run. Medians over --repeats. The files are
  stored under --scratch (default: the repo folder, the disk models/ lives on; with --smoke or $MLPIPE_BENCH_DIR set,
  the scratch folder)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bare_loop import bare_train
from benchmarks.common import REPO, SMOKE_HELP, loadavg, median_ci, mlpipe_env, run_mlpipe, scratch
from flows.paths import Paths

WHAT = ("overhead", "memmap", "ddp", "omp-wait", "checkpoint-cost", "checkpoint-parts")
CHILDREN = ("memmap-child", "omp-child")  # run in a fresh process by memmap / omp-wait
# ddp's smoke is two `mlpipe stage train` processes (one with two ranks), ~25 s of CPU on its own:
# run it by name (`ddp --smoke`); the default smoke, which tests/code/test_benchmarks.py runs, leaves it out
SMOKE_DEFAULT = tuple(w for w in WHAT if w != "ddp")


def _prepared_digits(paths: Paths) -> None:
    from components import data
    from components.config import load_config

    cfg = load_config(None)
    data.save_prepared(data.ingest(cfg.data, cfg.seed), paths.prepared)


def overhead(
    repeats: int,
    epochs: int,
    threads: int,
    val_every: int,
    sets: list[str],
    variant: str | None,
    pairs_only: bool = False,
) -> None:
    import torch

    from components import data, distributed, models, train
    from components.config import load_config
    from flows.stages import train_worker

    with scratch("train") as root:
        paths = Paths(root)
        _prepared_digits(paths)
        base = [
            f"train.epochs={epochs}",
            "augment.enabled=false",
            "train.patience=1000",
            f"train.num_threads={threads}",
            f"train.val_every={val_every}",
            *sets,
        ]
        cfg = load_config(None, base)
        cfg_variant = load_config(None, [*base, variant]) if variant else None
        torch.set_num_threads(threads)
        ds = data.load_prepared(paths.prepared)
        recipe = train.Recipe(cfg, ds.X_train, ds.y_train, ds.meta.kind, ds.meta.value_range)  # the stage's split
        tr, va = recipe.fit_rows, recipe.stop_rows
        spec = models.spec_for(cfg.model, ds.meta)
        stage, bare, stage_cpu, bare_cpu, steps_only, steps_loop, unfused, other = [], [], [], [], [], [], [], []
        samples = len(tr) * epochs
        X, y = ds.X_train[tr], ds.y_train[tr]
        val = (ds.X_train[va], ds.y_train[va])

        def run_stage(c=cfg):
            import shutil

            shutil.rmtree(paths.model_dir, ignore_errors=True)
            w, t = time.perf_counter(), time.process_time()
            hist, _, _ = train_worker.train_model(c, paths, distributed.single(), progress=False)
            if c is cfg:
                steps_only.append(samples / sum(hist.train_seconds))
            return samples / (time.perf_counter() - w), samples / (time.process_time() - t)

        def run_bare(fused=True, recipe=True):
            train.seed_everything(cfg.seed)
            c = time.process_time()
            b = bare_train(
                models.build(spec),
                X,
                y,
                epochs,
                cfg.train.batch_size,
                cfg.train.lr,
                cfg.seed,
                fused,
                val=val if recipe else None,
                val_every=val_every,
                schedule=recipe,
            )
            return b, samples / (time.process_time() - c)

        run_stage(), run_bare(), run_bare(recipe=False), run_bare(False, False)  # warm-up: imports, allocator, dispatch
        steps_only.clear()
        for i in range(repeats):  # interleaved, alternating order, so drifting load hits both alike
            if i % 2 == 0:
                (sw, sc), (bw, bc) = run_stage(), run_bare()
            else:
                (bw, bc), (sw, sc) = run_bare(), run_stage()
            if cfg_variant is not None:  # after the pair: right after the stage on odd repeats, the bare loop on even
                other.append(run_stage(cfg_variant)[0])
            stage.append(sw), stage_cpu.append(sc), bare.append(bw), bare_cpu.append(bc)
            if not pairs_only:
                steps_loop.append(run_bare(recipe=False)[0])
                unfused.append(run_bare(False, False)[0])

    def spread(ratios):
        return {
            "median": statistics.median(ratios),
            "ci95_of_median": median_ci(ratios),
            "min_max": [min(ratios), max(ratios)],
            "all": ratios,
        }

    print(
        json.dumps(
            {
                "bench": "overhead",
                "epochs": epochs,
                "repeats": repeats,
                "threads": threads,
                "n_train": int(len(tr)),
                "n_val": int(len(va)),
                "val_every": val_every,
                "set": sets,
                "note": "stage = the whole train_model call (memmap streaming, validation every val_every epochs "
                "and the last, checkpoints, model file); bare = the same recipe in a bare loop "
                "(fused AdamW, one-cycle schedule, the same validation passes); steps loop = bare "
                "training steps only, no validation or schedule",
                "stage_samples_s_wall": stage,
                "bare_samples_s_wall": bare,
                "ratio_wall": spread([a / b for a, b in zip(stage, bare)]),
                "ratio_cpu_time": spread([a / b for a, b in zip(stage_cpu, bare_cpu)]),
                **(
                    {}
                    if pairs_only
                    else {
                        "ratio_wall_vs_steps_loop": spread([a / b for a, b in zip(stage, steps_loop)]),
                        "ratio_train_steps_only_vs_steps_loop": spread([a / b for a, b in zip(steps_only, steps_loop)]),
                        "bare_default_adamw_samples_s_wall": unfused,
                        "fused_over_default_adamw_median": statistics.median(
                            a / b for a, b in zip(steps_loop, unfused)
                        ),
                    }
                ),
                **(
                    {
                        "variant": variant,
                        "variant_samples_s_wall": other,
                        "ratio_variant_over_stage_wall": spread([a / b for a, b in zip(other, stage)]),
                    }
                    if variant
                    else {}
                ),
                "loadavg": loadavg(),
            }
        )
    )


def _write_synthetic(paths: Paths, gb: float, shape=(1, 32, 32), classes: int = 10) -> int:
    """A prepared dataset of about `gb` GB (X_train float32), written in chunks: never in RAM."""
    from numpy.lib.format import open_memmap

    from components import data

    prep = paths.prepared
    prep.mkdir(parents=True)
    row = int(np.prod(shape)) * 4
    n = int(gb * 1e9) // row
    X = open_memmap(prep / "X_train.npy", mode="w+", dtype=np.float32, shape=(n, *shape))
    rng = np.random.default_rng(0)
    y = (np.arange(n) % classes).astype(np.int64)
    step = 32_768
    for i in range(0, n, step):
        k = min(step, n - i)
        X[i : i + k] = rng.standard_normal((k, *shape), dtype=np.float32) * 0.5 + y[i : i + k, None, None, None] * 0.1
    X.flush()
    del X
    np.save(prep / "y_train.npy", y)
    np.save(prep / "X_test.npy", np.zeros((classes, *shape), np.float32))
    np.save(prep / "y_test.npy", np.arange(classes, dtype=np.int64))
    meta = data.Meta(
        source="synthetic",
        kind="image",
        feature_shape=list(shape),
        classes=[str(c) for c in range(classes)],
        n_train=n,
        n_test=classes,
        class_counts={},
        value_range=None,
        content_hash="synthetic",
        seed=0,
        test_size=0.0,
    )
    (prep / "meta.json").write_text(json.dumps(dataclasses.asdict(meta)))
    return n


def memmap_child(root: str) -> None:
    """One epoch of the train stage's compute over the memmap; prints peak RSS."""
    from components import distributed, train
    from components.config import load_config
    from flows.stages import train_worker

    cfg = load_config(
        None,
        [
            "train.epochs=1",
            "train.batch_size=512",
            "augment.enabled=false",
            "model.kind=mlp",
            "model.hidden=[64]",
            "data.val_size=0.01",
        ],
    )
    train.set_threads(2)
    t0 = time.perf_counter()
    hist, _, _ = train_worker.train_model(cfg, Paths(root), distributed.single(), progress=False)
    # VmHWM: this process's own peak RSS. (getrusage's ru_maxrss is not: Linux carries the
    # parent's peak over fork + exec, and the parent just wrote the 4 GB file through a mapping.)
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    print(
        json.dumps(
            {
                "peak_rss_gb": peak_kb * 1024 / 1e9,
                "seconds": time.perf_counter() - t0,
                "train_seconds": hist.train_seconds,
                "val_accuracy": hist.epochs[-1]["val_accuracy"],
            }
        )
    )


def _child(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    """This module in a fresh interpreter (run from the repo root, as `python -m benchmarks.train`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _last_json(p: subprocess.Popen) -> dict:
    out, err = p.communicate()
    if p.returncode:
        raise SystemExit(f"{' '.join(p.args)} failed (exit {p.returncode}):\n{out}{err}")
    return json.loads(out.strip().splitlines()[-1])


def memmap(gb: float) -> None:
    with scratch("memmap") as root:
        paths = Paths(root)
        t0 = time.perf_counter()
        n = _write_synthetic(paths, gb)
        size = (paths.prepared / "X_train.npy").stat().st_size
        write_s = time.perf_counter() - t0
        child = _last_json(_child(["memmap-child", str(root)]))
    print(
        json.dumps(
            {"bench": "memmap", "rows": n, "file_gb": size / 1e9, "write_s": write_s, **child, "loadavg": loadavg()}
        )
    )


def ddp(epochs: int, seed: int = 0) -> None:
    import shutil

    import yaml

    results = {}
    with scratch("ddp") as root:
        first = Paths(root / "first")
        _prepared_digits(first)  # the seed-0 80/20 split; `seed` seeds training (init, batches, val split)
        for name, ranks, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
            paths = Paths(root / name)
            shutil.copytree(first.prepared, paths.prepared)
            params = yaml.safe_load((REPO / "params.yaml").read_text())
            params["seed"] = seed
            params["train"].update(epochs=epochs, patience=1000, num_threads=threads)
            params["train"]["distributed"]["nproc_per_node"] = ranks
            (paths.root / "params.yaml").write_text(yaml.safe_dump(params))
            # one MLflow store for both runs (tracking is not what is measured): one database set-up
            env = mlpipe_env(paths.root, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
            run_mlpipe(["stage", "train"], paths.root, env)
            results[name] = _score(paths)
    print(
        json.dumps(
            {
                "bench": "ddp",
                "epochs": epochs,
                "seed": seed,
                **results,
                "accuracy_gap_pt": 100 * (results["2x1"]["test_accuracy"] - results["1x2"]["test_accuracy"]),
                "throughput_2x1_over_1x2": results["2x1"]["samples_s"] / results["1x2"]["samples_s"],
                "loadavg": loadavg(),
            }
        )
    )


def _score(paths: Paths) -> dict:
    from components import data, models, train
    from components.config import load_config

    hist = json.loads(paths.history.read_text())
    ds = data.load_prepared(paths.prepared)
    model, _, _ = models.load(paths.model_file)
    acc = float((train.predict_logits(model, ds.X_test).argmax(1).numpy() == ds.y_test).mean())
    cfg = load_config(paths.root / "params.yaml")
    n_fit = len(train.Recipe(cfg, ds.X_train, ds.y_train, ds.meta.kind, ds.meta.value_range).fit_rows)
    return {
        "test_accuracy": acc,
        "samples_s": n_fit * len(hist["epochs"]) / sum(hist["train_seconds"]),
        "epochs_run": len(hist["epochs"]),
    }


def omp_child(epochs: int, rows: int) -> None:
    import torch

    from components import models

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    X, y = rng.random((rows, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, rows)
    spec = {
        "arch": "cnn",
        "args": {"in_shape": [1, 8, 8], "n_classes": 10, "hidden": [128], "dropout": 0.2, "channels": [32, 64]},
    }
    w, c = time.perf_counter(), time.process_time()
    bare_train(models.build(spec), X, y, epochs, 64, 1e-3, 0)
    print(json.dumps({"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c}))


def omp_wait(repeats: int, epochs: int, rows: int = 1300, processes: tuple[int, ...] = (1, 2)) -> None:
    for rep in range(repeats):
        for policy in ("ACTIVE", "PASSIVE"):
            for procs in processes:
                env = {**os.environ, "OMP_WAIT_POLICY": policy}
                res = [
                    _last_json(p)
                    for p in [
                        _child(["omp-child", "--epochs", str(epochs), "--rows", str(rows)], env) for _ in range(procs)
                    ]
                ]
                print(
                    json.dumps(
                        {
                            "bench": "omp-wait",
                            "repeat": rep,
                            "policy": policy,
                            "processes": procs,
                            "wall_s": [r["wall_s"] for r in res],
                            "cpu_s": [r["cpu_s"] for r in res],
                            "loadavg": loadavg(),
                        }
                    ),
                    flush=True,
                )


def checkpoint_cost(repeats: int, threads: int, background: bool) -> None:
    import torch

    from components import checkpoint, data, distributed, engine, models, stream, train
    from components.config import load_config

    torch.set_num_threads(threads)
    cfg = load_config(None, ["augment.enabled=false"])
    ds = data.ingest(cfg.data, cfg.seed)
    tr = train.Recipe(cfg, ds.X_train, ds.y_train, ds.meta.kind, ds.meta.value_range).fit_rows
    train.seed_everything(cfg.seed)
    model = models.build(models.spec_for(cfg.model, ds.meta))
    X, y, d = stream.Rows(ds.X_train, tr), np.asarray(ds.y_train[tr], dtype=np.int64), distributed.single()
    stream.fit_norm(model, X)
    opt = engine.adamw(model.parameters(), cfg.train, d.device)
    g = torch.Generator().manual_seed(cfg.seed)
    st = engine.LoopState(history=engine.History(), epoch=20)
    st.history.epochs = [{"train_loss": 0.1, "lr": 1e-3, "val_loss": 0.1, "val_accuracy": 0.9}] * 20
    alone, with_ckpt, submit, behind = [], [], [], []
    with scratch("ckpt") as folder, checkpoint.Writer(background) as writer:

        def epoch():
            engine.train_epoch(model, X, y, 1, cfg.train, cfg.seed, d, opt, None, None, None, g, engine.cross_entropy)

        def checkpointed():
            t = time.perf_counter()
            engine.save_checkpoint(writer, folder, "bench", 2, st, model, opt, None, None, engine.gather_rng(g, d))
            submit.append(time.perf_counter() - t)
            epoch()

        for f in (epoch, checkpointed):  # warm-up
            f()
            writer.wait()
        for i in range(repeats):
            for f, times in ((epoch, alone), (checkpointed, with_ckpt))[:: 1 if i % 2 == 0 else -1]:
                t = time.perf_counter()
                f()
                times.append(time.perf_counter() - t)
                t = time.perf_counter()
                writer.wait()  # the write of this epoch's checkpoint ends before the next timing
                if f is checkpointed:
                    behind.append(time.perf_counter() - t)  # what the next submit would wait
        checkpoint_mb = max(p.stat().st_size for p in folder.iterdir()) / 1e6
    ratios = [c / a for a, c in zip(alone, with_ckpt)]
    print(
        json.dumps(
            {
                "bench": "checkpoint-cost",
                "threads": threads,
                "repeats": repeats,
                "writer_priority": "background" if background else "normal",
                "checkpoint_mb": checkpoint_mb,
                "epoch_ms_median": 1e3 * statistics.median(alone),
                "submit_ms_median": 1e3 * statistics.median(submit),
                "writer_still_busy_after_the_epoch_ms": {
                    "median": 1e3 * statistics.median(behind),
                    "max": 1e3 * max(behind),
                },
                "epoch_with_checkpoint_over_alone": {
                    "median": statistics.median(ratios),
                    "min_max": [min(ratios), max(ratios)],
                },
                "loadavg": loadavg(),
            }
        )
    )


def checkpoint_parts(repeats: int, where: Path | None) -> None:
    import hashlib
    import io

    import torch

    from components import checkpoint, distributed, engine, models, train
    from components.config import load_config

    torch.set_num_threads(1)
    cfg = load_config(None)
    train.seed_everything(cfg.seed)
    model = models.build(models.model_args(cfg.model, [1, 8, 8], 10, "image"))
    d, g = distributed.single(), torch.Generator().manual_seed(cfg.seed)
    opt = engine.adamw(model.parameters(), cfg.train, d.device)
    sched = engine.make_scheduler(opt, cfg.train, 21)
    torch.nn.functional.cross_entropy(model(torch.randn(64, 1, 8, 8)), torch.randint(0, 10, (64,))).backward()
    opt.step(), sched.step()  # AdamW moments exist after the first step
    st = engine.LoopState(history=engine.History(), epoch=20)
    st.history.epochs = [{"train_loss": 0.1, "lr": 1e-3, "val_loss": 0.1, "val_accuracy": 0.9}] * 20
    st.history.train_seconds = [0.2] * 20

    class Capture:  # stands in for checkpoint.Writer: keeps the state the engine hands it
        def submit(self, folder, epoch, state, keep):
            self.state = state

    cap = Capture()
    engine.save_checkpoint(cap, Path("."), "bench", 2, st, model, opt, sched, None, engine.gather_rng(g, d))
    state = cap.state

    def cpu_ms(f):
        times = []
        for _ in range(repeats):
            t = time.thread_time()
            f()
            times.append(1e3 * (time.thread_time() - t))
        return {"median": statistics.median(times), "min_max": [min(times), max(times)]}

    def saved(obj) -> io.BytesIO:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf

    packed = checkpoint.pack(state)
    with scratch("ckpt-parts", where) as folder:
        data = checkpoint.serialize(20, state)
        print(
            json.dumps(
                {
                    "bench": "checkpoint-parts",
                    "repeats": repeats,
                    "tensors": len(packed["tensors"]),
                    "flat_tensors": len(packed["buffers"]),
                    "file_bytes": len(data),
                    "folder": str(folder.parent),
                    "pack_ms": cpu_ms(lambda: checkpoint.pack(state)),
                    "serialize_ms_training_thread": cpu_ms(lambda: checkpoint.serialize(20, state)),
                    "torch_save_packed_ms": cpu_ms(lambda: saved(packed)),
                    "torch_save_one_record_per_tensor_ms": cpu_ms(lambda: saved(state)),
                    "sha256_ms": cpu_ms(lambda: hashlib.sha256(data)),
                    "store_ms_writer_thread": cpu_ms(lambda: checkpoint.store(folder, 20, data, 2)),
                    "loadavg": loadavg(),
                }
            )
        )


def smoke(what: str | None, a: argparse.Namespace) -> None:
    """Every measurement (or `what`), at sizes that take seconds; the figures mean nothing."""
    plan = {
        "overhead": lambda: overhead(1, 1, 1, 1, [], "train.checkpoint_every=0"),
        "memmap": lambda: memmap(0.005),
        "ddp": lambda: ddp(1, 0),
        "omp-wait": lambda: omp_wait(1, 1, 128, processes=(1,)),
        "checkpoint-cost": lambda: checkpoint_cost(2, 1, True),
        "checkpoint-parts": lambda: checkpoint_parts(3, a.scratch),
    }
    if not what:
        print("ddp: not in the default smoke (two `mlpipe stage train` runs); `python -m benchmarks.train ddp --smoke`")
    for name in [what] if what else SMOKE_DEFAULT:
        t0 = time.perf_counter()
        plan[name]()
        print(f"smoke {name}: {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", nargs="?", choices=[*WHAT, *CHILDREN], help="the measurement (required without --smoke)")
    p.add_argument("root", nargs="?", help=argparse.SUPPRESS)  # memmap-child: the project folder
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--gb", type=float, default=4.0, help="memmap: size of the synthetic X_train")
    p.add_argument("--rows", type=int, default=1300, help="omp-wait: random 8x8 images each process trains on")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="ddp: one comparison per training seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--val-every", type=int, default=1, help="overhead: train.val_every of the stage")
    p.add_argument("--set", dest="sets", action="append", default=[], help="overhead: stage config override KEY=VALUE")
    p.add_argument(
        "--variant",
        default=None,
        help="overhead: also run the stage with this KEY=VALUE in every repeat "
        "(e.g. train.checkpoint_every=0) and report it over the stage",
    )
    p.add_argument(
        "--pairs-only",
        action="store_true",
        help="overhead: only the stage / recipe-loop pairs (and the "
        "variant), not the steps-only and default-AdamW loops",
    )
    p.add_argument("--normal-priority", action="store_true", help="checkpoint-cost: writer thread at normal priority")
    p.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="checkpoint-parts: folder whose disk the checkpoint files go to (default: the repo's, as models/)",
    )
    a = p.parse_args()
    if a.smoke:
        if a.what in CHILDREN:
            p.error(f"{a.what} has no smoke mode of its own")
        return smoke(a.what, a)
    if a.what is None:
        p.error(f"name a measurement ({', '.join(WHAT)}) or pass --smoke")
    {
        "overhead": lambda: overhead(a.repeats, a.epochs, a.threads, a.val_every, a.sets, a.variant, a.pairs_only),
        "memmap": lambda: memmap(a.gb),
        "memmap-child": lambda: memmap_child(a.root),
        "ddp": lambda: [ddp(a.epochs, s) for s in a.seeds],
        "omp-wait": lambda: omp_wait(a.repeats, a.epochs, a.rows),
        "omp-child": lambda: omp_child(a.epochs, a.rows),
        "checkpoint-cost": lambda: checkpoint_cost(a.repeats, a.threads, not a.normal_priority),
        "checkpoint-parts": lambda: checkpoint_parts(
            a.repeats, a.scratch or (None if os.environ.get("MLPIPE_BENCH_DIR") else REPO)
        ),
    }[a.what]()


if __name__ == "__main__":
    main()
