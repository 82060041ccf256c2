"""A real text classification dataset from text that ships on every machine (issue 19): the docstrings
of Python's standard library, one row per paragraph, labelled by module family. Read with `ast` from
the stdlib's source files (nothing imported, nothing downloaded), deterministic: sorted files, the
same paragraphs, duplicates (after normalising case and white space) dropped everywhere.

    python -m benchmarks.text_data --out data/raw/stdlib_docs.csv [--seeds 0 1 2] [--results FILE.jsonl]
    python -m benchmarks.text_data --smoke      (a few files per family, 1 seed, 2 folds)

It then prints a TF-IDF + logistic regression figure on it (components/baseline.py "tfidf", C
grid-searched on 5 stratified folds of the training split): test accuracy and macro F1 on a
stratified 20 % test split per seed (data.split's split), mean and (sample) std over the seeds (21 min
wall at full size on the shared 2-core VM at load average ~10). Use the CSV with
`data.source=csv:PATH data.text_column=text` to train the pipeline's Transformer on the same rows."""

from __future__ import annotations

import argparse
import ast
import json
import platform
import re
import statistics
import sysconfig
import time
from pathlib import Path

from benchmarks.common import SMOKE_HELP, loadavg, scratch, utc_now

# family -> stdlib modules or packages (a package: every .py file under it)
FAMILIES = {
    "filesystem": ["os", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "stat", "posixpath", "ntpath"],
    "network": ["socket", "http", "urllib", "email", "smtplib", "ftplib", "poplib", "imaplib", "ssl", "socketserver"],
    "formats": ["json", "csv", "xml", "html", "configparser", "plistlib", "tomllib", "zipfile", "tarfile"],
    "numbers": ["_pydecimal", "fractions", "statistics", "numbers", "random"],
    "concurrency": ["threading", "asyncio", "multiprocessing", "concurrent", "queue", "sched", "subprocess"],
    "text": ["re", "string", "textwrap", "difflib", "codecs", "gettext", "locale", "unicodedata"],
    "testing": ["unittest", "doctest", "pdb", "bdb", "trace", "profile", "pstats", "timeit", "traceback"],
}
MIN_WORDS = 6  # shorter paragraphs ("Return the value.") say little about their family
MAX_CHARS = 1200
SMOKE_FILES = 1  # per family


def sources(names: list[str], limit: int | None = None) -> list[Path]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for name in names:
        pkg, mod = lib / name, lib / f"{name}.py"
        found = sorted(p for p in pkg.rglob("*.py") if "test" not in p.parts) if pkg.is_dir() else [mod]
        files += [f for f in found if f.exists()]
    return files[:limit] if limit else files


def docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file, in the order they appear."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, kinds)), key=lambda n: getattr(n, "lineno", 0))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def paragraphs(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        text = " ".join(para.split())
        if len(text.split()) >= MIN_WORDS:
            out.append(text[:MAX_CHARS])
    return out


def build(smoke: bool = False):
    """-> a DataFrame text, label, module: one row per distinct docstring paragraph."""
    import pandas as pd

    rows, seen, dup = [], {}, set()
    for family, names in FAMILIES.items():
        for f in sources(names, SMOKE_FILES if smoke else None):
            for doc in docstrings(f):
                for text in paragraphs(doc):
                    key = text.lower()
                    if key in seen and seen[key] != family:
                        dup.add(key)
                    seen.setdefault(key, family)
                    rows.append({"text": text, "label": family, "module": f.stem, "key": key})
    df = pd.DataFrame(rows).drop_duplicates("key")
    return df[~df["key"].isin(dup)].drop(columns="key").reset_index(drop=True)


def tfidf_figure(df, seeds: list[int], folds: int, C: tuple[float, ...] = (1.0, 10.0, 100.0)) -> dict:
    import numpy as np

    from components import baseline, data
    from components.config import DataConfig

    acc, f1 = [], []
    n = len(df)
    for seed in seeds:
        cfg = DataConfig(source="csv:stdlib_docs.csv", test_size=0.2)
        split = data.split(data.Raw(np.arange(n).reshape(n, 1), df["label"].to_numpy(), "text", None), cfg, seed)
        tr, te = split.X_train[:, 0], split.X_test[:, 0]
        texts = df["text"].to_numpy(dtype=object)
        [r] = baseline.fit_all(
            ["tfidf"], texts[tr], split.y_train, texts[te], split.y_test, split.meta.classes, folds, seed, C
        )
        acc.append(r.test["accuracy"])
        f1.append(r.test["f1_macro"])

    def ms(v):
        return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}

    return {"accuracy": ms(acc), "f1_macro": ms(f1), "n_test": int(len(te))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="Write the dataset here (CSV: text, label, module).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    ap.add_argument("--results", type=Path, help="Append the figure as a JSON line to this file.")
    a = ap.parse_args()
    t0 = time.perf_counter()
    df = build(a.smoke)
    with scratch("text-data") as tmp:
        out = a.out or tmp / "stdlib_docs.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        counts = df["label"].value_counts().sort_index().to_dict()
        print(f"dataset: {len(df)} paragraphs, {len(counts)} families {counts} -> {out if a.out else '(scratch)'}")
        seeds = a.seeds[:1] if a.smoke else a.seeds
        fig = tfidf_figure(df, seeds, 2, (1.0,)) if a.smoke else tfidf_figure(df, seeds, 5)
    acc, f1 = fig["accuracy"], fig["f1_macro"]
    print(
        f"tfidf+logreg over {len(seeds)} seeds: test accuracy {acc['mean']:.4f} +- {acc['std']:.4f}, "
        f"macro F1 {f1['mean']:.4f} +- {f1['std']:.4f} ({fig['n_test']} test rows)"
    )
    record = {
        "bench": "text_data",
        "rows": len(df),
        "families": counts,
        "seeds": seeds,
        **fig,
        "python": platform.python_version(),
        "machine": platform.node(),
        "date": utc_now(),
        "loadavg": loadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(record))
    if a.results and not a.smoke:
        with open(a.results, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
