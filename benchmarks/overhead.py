"""The pipeline against a plain PyTorch script (issue 25): the same generated data, the same split, the
same model class and training settings, 3 epochs, both in the same run.

    python -m benchmarks.overhead --rows 50000 200000 --images 5000 20000 [--repeats 1] [--validate-rows 50000 ...]
    python -m benchmarks.overhead --rows 50000 800000 --images 40000      # the issue's sizes
    python -m benchmarks.overhead --smoke
    python -m benchmarks.overhead --rows 800000 --images --validate-rows >> R.jsonl   # one size at a time, then
    python -m benchmarks.overhead --growth-from R.jsonl                          # the growth tables of them all

Pipeline: `mlpipe run` in a fresh project with tune, cv, compress, baseline and explain off and
augmentation off (the plain script does none of them), so both train the same model on the same rows;
ingest, validate, augment (policy only), train, evaluate and register run, Prefect's temporary API server
included. Plain: benchmarks/plain_script.py in its own process. Each prints one JSON line per size: whole
wall seconds of each, their ratio, the peak RSS of each whole process tree (sampled every 50 ms, children
included), the prepared data's bytes and the bound 2 x prepared + 1 GB; then, per stage, its seconds (from
the stage runs' start and end times in the project's MLflow store) and the tree's peak RSS while it ran
(the samples inside those times) at each size, and their ratio between sizes against the ratio of rows
(a table each, and one "overhead-growth" JSON line per kind). First, validation's per-row facts
(duplicates, leakage) against the per-row SHA-1 loop they replaced, at --validate-rows sizes (both must flag
the same rows). Data: CSV with 40 features and 5 classes (Gaussian blobs); 32 x 32 RGB PNGs of 4 classes
(a class-coloured square on noise).
Scratch folders under $MLPIPE_BENCH_DIR, removed after."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, SMOKE_HELP, loadavg, mlpipe_env, scratch, sets, utc_now

FEATURES, TABLE_CLASSES, IMAGE_CLASSES, SIZE = 40, 5, 4, 32
OFF = ["tune", "cv", "compress", "baseline", "explain", "augment"]
STAGES = ("ingest", "validate", "baseline", "augment", "tune", "cv", "train", "evaluate", "explain", "compress")
STAGES += ("register",)


def make_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """Gaussian blobs: 5 classes, 40 features, labels as text."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, TABLE_CLASSES, rows)
    centers = rng.normal(size=(TABLE_CLASSES, FEATURES)).astype(np.float32)
    X = centers[y] + rng.normal(scale=2.0, size=(rows, FEATURES)).astype(np.float32)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(FEATURES)])
    df["label"] = np.array([f"c{k}" for k in range(TABLE_CLASSES)])[y]
    df.to_csv(path, index=False, float_format="%.5f")
    return path


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """n 32x32 RGB PNGs, a folder per class: a square of the class's colour at a random place, on noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220], [200, 200, 40]], np.uint8)
    for c in range(IMAGE_CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % IMAGE_CLASSES
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        r, q = rng.integers(0, SIZE - 12, 2)
        img[r : r + 12, q : q + 12] = colours[c]
        Image.fromarray(img).save(root / f"class{c}" / f"{i:06d}.png", compress_level=1)
    return root


class TreePeak:
    """Peak RSS (bytes) of a process and all its descendants, summed, sampled every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.05):
        import psutil

        self.proc, self.peak, self.every = psutil.Process(pid), 0, every
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, tree RSS bytes): per-stage peaks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.proc, *self.proc.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            self.samples.append((time.time(), total))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, TreePeak, str, float]:
    """-> (wall seconds, the tree's RSS sampler (stopped), stdout, epoch start); exits with the output tail
    on failure."""
    start = time.time()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = TreePeak(p.pid)
    out, _ = p.communicate()
    wall = time.perf_counter() - t0
    peak.stop()
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed (exit {p.returncode}):\n{out[-4000:]}")
    return wall, peak, out, start


def stage_times(db: Path) -> dict[str, tuple[float, float]]:
    """Epoch start and end seconds of each stage run, from the project's MLflow store."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT name, start_time, end_time FROM runs WHERE end_time IS NOT NULL").fetchall()
    return {n: (s / 1000, e / 1000) for n, s, e in rows if n in STAGES}


def stage_rss(times: dict[str, tuple[float, float]], samples: list[tuple[float, int]]) -> dict[str, float]:
    """Peak tree RSS (MB) sampled while each stage ran; before_first_stage: the peak before any did."""
    out = {}
    for n, (s, e) in sorted(times.items(), key=lambda kv: kv[1][0]):
        inside = [r for t, r in samples if s <= t <= e]
        out[n] = round(max(inside) / 2**20, 1) if inside else None
    if times:
        first = min(s for s, _ in times.values())
        before = [r for t, r in samples if t < first]
        out["before_first_stage"] = round(max(before) / 2**20, 1) if before else None
    return out


def stage_seconds(db: Path, start: float, wall: float) -> dict[str, float]:
    """Seconds of each stage run (MLflow's start and end times), and what lies outside them: before the
    first stage (imports, Prefect's server, config) and after the last (summary, shut-down)."""
    got = stage_times(db)
    out = {n: round(e - s, 3) for n, (s, e) in sorted(got.items(), key=lambda kv: kv[1][0])}
    if got:
        first, last = min(s for s, _ in got.values()), max(e for _, e in got.values())
        out["before_first_stage"] = round(first - start, 3)
        out["after_last_stage"] = round(start + wall - last, 3)
        out["between_stages"] = round((last - first) - sum(e - s for s, e in got.values()), 3)
    return out


def pipeline(source: list[str], project: Path, epochs: int) -> dict:
    import shutil

    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    overrides = [*source, f"train.epochs={epochs}", *(f"{s}.enabled=false" for s in OFF)]
    cmd = [str(Path(sys.executable).parent / "mlpipe"), "run", *sets(overrides)]
    wall, peak, out, start = timed(cmd, project, mlpipe_env(project))
    prepared = sum(f.stat().st_size for f in (project / "data" / "prepared").glob("*.npy"))
    acc = json.loads((project / "reports" / "eval" / "metrics.json").read_text())["test_accuracy"]
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak.peak / 2**20, 1),
        "prepared_mb": round(prepared / 2**20, 1),
        "test_accuracy": round(acc, 4),
        "stages_s": stage_seconds(project / "mlflow.db", start, wall),
        "stages_peak_rss_mb": stage_rss(stage_times(project / "mlflow.db"), peak.samples),
    }


def plain(source: str, project: Path, epochs: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.plain_script", source, "--out", str(project / "plain"), "--epochs"]
    wall, peak, out, _ = timed([*cmd, str(epochs)], REPO, dict(os.environ))
    res = json.loads(out.strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak.peak / 2**20, 1),
        "test_accuracy": round(res["test_accuracy"], 4),
        "parts_s": {k: round(v, 2) for k, v in res["seconds"].items()},
    }


def one_size(kind: str, n: int, epochs: int, repeats: int) -> dict:
    with scratch(f"overhead-{kind}") as root:
        t = time.perf_counter()
        if kind == "table":
            src = make_csv(root / "table.csv", n)
            source = [f"data.source=csv:{src}", "data.label_column=label"]
            plain_src = f"csv:{src}"
        else:
            src = make_images(root / "images", n)
            source = [f"data.source=imagefolder:{src}", f"data.image_size=[{SIZE}, {SIZE}]", "data.grayscale=false"]
            plain_src = f"imagefolder:{src}"
        made = time.perf_counter() - t
        runs = []
        for r in range(repeats):  # the two alternate, so drifting machine load hits both alike
            project = root / f"p{r}"
            project.mkdir()
            p = pipeline(source, project, epochs)
            q = plain(plain_src, project, epochs)
            runs.append({"pipeline": p, "plain": q, "ratio_wall": round(p["wall_s"] / q["wall_s"], 3)})
            print(json.dumps({"kind": kind, "n": n, "repeat": r, **runs[-1]}), flush=True)
    ratios = [x["ratio_wall"] for x in runs]
    best = min(runs, key=lambda x: x["ratio_wall"])
    prepared = best["pipeline"]["prepared_mb"]
    return {
        "bench": "overhead",
        "kind": kind,
        "n": n,
        "epochs": epochs,
        "repeats": repeats,
        "data_gen_s": round(made, 1),
        "ratio_wall": {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)},
        "loadavg": loadavg(),
        "pipeline_wall_s": [x["pipeline"]["wall_s"] for x in runs],
        "plain_wall_s": [x["plain"]["wall_s"] for x in runs],
        "pipeline_peak_rss_mb": max(x["pipeline"]["peak_rss_mb"] for x in runs),
        "plain_peak_rss_mb": max(x["plain"]["peak_rss_mb"] for x in runs),
        "prepared_mb": prepared,
        "rss_bound_mb": round(2 * prepared + 1024, 1),
        "stages_s": best["pipeline"]["stages_s"],
        "stages_peak_rss_mb": best["pipeline"]["stages_peak_rss_mb"],
        "plain_parts_s": best["plain"]["parts_s"],
        "test_accuracy": {"pipeline": best["pipeline"]["test_accuracy"], "plain": best["plain"]["test_accuracy"]},
    }


def _sha1_row_facts(Xtr: np.ndarray, Xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validation's duplicate and leak flags as computed before issue 25: a SHA-1 per row in a Python loop
    (train hashed twice), leakage by np.isin over hex strings."""
    import hashlib

    import pandas as pd

    def hashes(X):
        return np.array([hashlib.sha1(r.tobytes()).hexdigest() for r in np.ascontiguousarray(X.reshape(len(X), -1))])

    train = set(hashes(Xtr))
    dup = pd.Series(hashes(Xtr)).duplicated().to_numpy()
    return dup, np.isin(hashes(Xte), list(train))


def validate_rows(n: int, shape: tuple[int, ...], seed: int = 0) -> dict:
    """Seconds of validation's per-row facts (components/validate.py: keys, per-row statistics, duplicates,
    leakage) against the SHA-1 loop they replace, on an 80/20 split with 10 leaked rows; both must agree."""
    from components import validate

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 5, n)
    ntr = int(n * 0.8)
    Xtr, Xte = X[:ntr], X[ntr:]
    Xte[:10] = Xtr[:10]
    t = time.perf_counter()
    dup_old, leak_old = _sha1_row_facts(Xtr, Xte)
    old = time.perf_counter() - t
    t = time.perf_counter()
    keys = validate.row_keys(Xtr)
    a = validate.sample_frame(Xtr, y[:ntr], None, keys)
    b = validate.sample_frame(Xte, y[ntr:], keys)
    new = time.perf_counter() - t
    same = bool((a["duplicate"].to_numpy() == dup_old).all() and (b["leak"].to_numpy() == leak_old).all())
    return {
        "bench": "validate-row-facts",
        "rows": n,
        "shape": list(shape),
        "sha1_loop_s": round(old, 3),
        "vectorised_s": round(new, 3),
        "speedup": round(old / new, 2),
        "same_rows": same,
        "leaks_found": int(b["leak"].sum()),
    }


def growth(results: list[dict]) -> list[dict]:
    """Per stage, seconds and peak tree RSS at each size and the ratio to the previous size (rows ratio
    alongside): printed as tables, returned as one JSON-able record per kind."""
    out = []
    for kind in ("table", "image"):
        rs = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["n"])
        if len(rs) < 2:
            continue
        names = [k for k in rs[-1]["stages_s"] if k in STAGES or k.endswith("stage") or k.startswith("between")]
        head = " | ".join(f"{r['n']:,}" for r in rs)
        steps = [round(b["n"] / a["n"], 2) for a, b in zip(rs, rs[1:])]
        record = {"bench": "overhead-growth", "kind": kind, "n": [r["n"] for r in rs], "n_ratio": steps}
        record.update({"stages_s": {}, "stages_s_ratio": {}, "stages_peak_rss_mb": {}, "stages_rss_ratio": {}})
        for title, key in (("seconds", "stages_s"), ("peak tree RSS (MB)", "stages_peak_rss_mb")):
            print(f"\n{kind}: stage {title} by rows, and their growth")
            print(f"| stage | {head} | growth ({', '.join(f'x{x:g}' for x in steps)}) |")
            print("|---|" + "---|" * len(rs) + "---|")
            rkey = "stages_s_ratio" if key == "stages_s" else "stages_rss_ratio"
            for s in names + ([] if key == "stages_s" else ["whole run"]):
                v = [r["pipeline_peak_rss_mb"] if s == "whole run" else (r.get(key) or {}).get(s) for r in rs]
                if all(x is None for x in v):  # outside the stages (RSS has no row there), or too short to sample
                    continue
                g = [round(b / a, 2) if a and b else None for a, b in zip(v, v[1:])]
                record[key][s], record[rkey][s] = v, g
                shown = ", ".join("-" if x is None else f"{x:.2f}x" for x in g)
                print(f"| {s} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in v) + f" | {shown} |")
        record["whole_run_s"] = [float(np.median(r["pipeline_wall_s"])) for r in rs]
        record["prepared_mb"] = [r["prepared_mb"] for r in rs]
        out.append(record)
        print(json.dumps(record), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, nargs="*", default=[50_000, 200_000], help="CSV sizes (rows)")
    ap.add_argument("--images", type=int, nargs="*", default=[5_000, 20_000], help="image-folder sizes")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="pipeline/plain pairs per size")
    ap.add_argument(
        "--validate-rows",
        type=int,
        nargs="*",
        default=[50_000, 200_000, 800_000],
        help="sizes (40-feature rows) for validation's per-row facts vs the SHA-1 loop; 32x32 RGB at a twentieth",
    )
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}: 2,000 rows, 1 epoch, no images")
    ap.add_argument(
        "--growth-from",
        type=Path,
        nargs="*",
        default=None,
        help="no runs: the growth tables of the size lines in these files (earlier runs' output, a size a run)",
    )
    args = ap.parse_args()
    if args.growth_from is not None:
        found = [
            json.loads(line) for f in args.growth_from for line in f.read_text().splitlines() if line.startswith("{")
        ]
        growth([r for r in found if r.get("bench") == "overhead" and "stages_s" in r])
        return
    if args.smoke:
        args.rows, args.images, args.epochs, args.repeats, args.validate_rows = [2_000], [], 1, 1, [2_000]
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {utc_now()}, loadavg before: {loadavg()}")
    for n in args.validate_rows:
        for shape in ((FEATURES,), (3, SIZE, SIZE)):
            print(json.dumps(validate_rows(n if len(shape) == 1 else max(100, n // 20), shape)), flush=True)
    results = []
    for kind, sizes in (("table", args.rows), ("image", args.images)):
        for n in sizes:
            results.append(one_size(kind, n, args.epochs, args.repeats))
            print(json.dumps(results[-1]), flush=True)
    growth(results)
    print(f"\nloadavg after: {loadavg()}")
    for r in results:
        print(
            f"{r['kind']} {r['n']:,}: pipeline/plain wall {r['ratio_wall']['median']:.2f}x "
            f"(min {r['ratio_wall']['min']:.2f}, max {r['ratio_wall']['max']:.2f}, n={r['repeats']}); "
            f"peak RSS pipeline {r['pipeline_peak_rss_mb']:.0f} MB, plain {r['plain_peak_rss_mb']:.0f} MB, "
            f"bound {r['rss_bound_mb']:.0f} MB (prepared {r['prepared_mb']:.0f} MB)"
        )


if __name__ == "__main__":
    main()
