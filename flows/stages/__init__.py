"""The pipeline's stages, one module each (flows/stages/<name>.py, `run(cfg, paths, parent) -> summary`),
and the one table that describes them.

The table drives the Prefect tasks (flows/pipeline.py: which stages are cached, their retries and
cache keys), `mlpipe stage NAME` (dvc.yaml's commands), and tests/code/test_dvc.py, which checks
dvc.yaml's `params` against `reads` and its `outs`/`metrics`/`plots` against `writes`.
Modules are imported when a stage runs, so a worker process pays only for its own stage."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from components.config import Config
from flows.paths import Paths

TRAINING = ("seed", "data.val_size", "augment", "model", "train")  # what the training recipe reads


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # config keys (a section or section.key): dvc.yaml params and the cache key
    writes: tuple[str, ...]  # Paths attributes: dvc.yaml outs, and what a cached result must find on disk
    cached: bool = True  # Prefect reuses the result of an unchanged stage
    retries: int = 0  # Prefect retries of transient (IO) failures

    @property
    def module(self) -> str:
        return f"flows.stages.{self.name}"

    def run(self, cfg: Config, paths: Paths, parent: str | None = None) -> dict:
        return importlib.import_module(self.module).run(cfg, paths, parent)


# ingest is never cached (its source file can change under the same config; later stages key on
# its data hash); register is never cached (it changes the registry)
STAGES = (
    Stage(
        "ingest",
        (
            "seed",
            "data.source",
            "data.label_column",
            "data.classes",
            "data.image_size",
            "data.grayscale",
            "data.test_size",
            "data.max_pixels",
            "data.val_size",  # text: the tokenizer is fitted on the training rows less the early-stopping rows
            "data.text_column",
            "data.tokenizer",
            "data.vocab_size",
            "data.max_length",
            "data.lowercase",
        ),
        ("prepared",),
        cached=False,
        retries=2,
    ),
    Stage("validate", ("validate",), ("validation",)),
    # scored on the cv stage's folds (seed, cv.folds) so the gate can compare fold by fold
    Stage(
        "baseline",
        ("seed", "baseline", "cv.folds"),
        ("baseline_metrics", "baseline_folds", "baseline_table", "baseline_models"),
    ),
    Stage("augment", ("augment",), ("augmented",)),
    Stage("tune", (*TRAINING, "tune", "cv"), ("tune_dir",)),
    Stage("cv", (*TRAINING, "cv"), ("cv_folds", "cv_metrics")),
    Stage("train", TRAINING, ("model_file", "history")),
    Stage("evaluate", (), ("eval_metrics", "confusion_json", "confusion_png", "learning_curves")),
    Stage("explain", ("explain",), ("explain_dir",)),  # attributions of model.pt, for the model cards
    Stage(
        "compress",
        ("seed", "data.val_size", "augment", "train", "compress"),
        ("compressed", "compress_table", "compress_table_md", "compress_metrics", "compress_pareto"),
    ),
    Stage("register", ("promote", "tracking"), ("promotion",), cached=False, retries=2),
)
BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    if name not in BY_NAME:
        raise KeyError(f"unknown stage {name!r}; expected one of {', '.join(BY_NAME)}")
    return BY_NAME[name]
