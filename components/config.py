"""One typed config tree, loaded from params.yaml (shared with DVC) and validated at load."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: str = "sklearn:digits"  # sklearn:NAME | npz:PATH | imagefolder:PATH | csv:PATH | parquet:PATH
    label_column: str = "label"  # csv/parquet only
    classes: tuple[str, ...] | None = None  # the allowed labels; None: whatever labels the data has
    image_size: tuple[int, int] = (8, 8)  # (H, W) pixels, imagefolder only
    grayscale: bool = True  # imagefolder: 1 channel, else 3
    # imagefolder and image predict: largest image accepted, width x height pixels, read from the file's
    # header before decoding (a 380 kB PNG can declare 20000 x 20000). Pillow warns above 89.5 M
    max_pixels: int = Field(40_000_000, ge=16, le=89_000_000)
    test_size: float = Field(0.2, gt=0.0, lt=1.0)  # fraction held out for the final test
    val_size: float = Field(0.1, gt=0.0, lt=1.0)  # fraction of train held out for early stopping
    # text (components/textdata.py): csv/parquet with a text column, or textfolder:PATH (a folder of .txt per class)
    text_column: str | None = None  # csv/parquet: the column of raw texts; None = a table of numeric features
    tokenizer: Literal["bpe", "wordpiece"] = "bpe"  # Hugging Face tokenizers model, fitted on the training rows
    vocab_size: int = Field(8000, ge=16, le=1_000_000)  # tokens incl. 5 special ones; the texts must fill it
    max_length: int = Field(128, ge=2, le=8192)  # tokens per text incl. [CLS]; longer texts are truncated
    lowercase: bool = True  # lower-case after NFKC normalisation

    @model_validator(mode="after")
    def _sizes(self):
        if min(self.image_size) < 4 or max(self.image_size) > 512:
            raise ValueError(f"image_size must be between 4 and 512 pixels per side, got {list(self.image_size)}")
        return self


class ValidateConfig(_Section):
    min_rows_per_class: int = Field(10, ge=1)  # in the train split
    max_duplicate_fraction: float = Field(0.02, ge=0.0, le=1.0)  # identical feature rows
    max_leak_fraction: float = Field(0.0, ge=0.0, le=1.0)  # test rows also present in train
    value_range: tuple[float, float] | None = None  # None: the source's known range, else finite only
    max_truncated_fraction: float = Field(0.2, ge=0.0, le=1.0)  # text: share of texts cut at data.max_length


class AugmentConfig(_Section):
    enabled: bool = True
    shift: int = Field(1, ge=0, le=8)  # image: random translation, +- pixels
    rotation: float = Field(10.0, ge=0.0, le=45.0)  # image: random rotation, +- degrees
    flip: bool = False  # image: random horizontal flip (off for digits: a flipped 2 is not a 2)
    noise_std: float = Field(0.0, ge=0.0, le=1.0)  # image: gaussian noise, fraction of value range
    cutout: int = Field(0, ge=0, le=32)  # image: side of a zeroed square, pixels; 0 = off
    tabular_noise_std: float = Field(0.05, ge=0.0, le=1.0)  # tabular: noise, times feature std
    # text: per-token probabilities; [CLS] and padding are never touched
    token_dropout: float = Field(0.05, ge=0.0, le=0.5)  # text: drop a token (the rest shift left)
    token_mask: float = Field(0.1, ge=0.0, le=0.5)  # text: replace a token with [MASK]
    span_delete: float = Field(0.1, ge=0.0, le=0.5)  # text: delete one span of up to this share of the tokens


class ModelConfig(_Section):
    # auto: cnn for images, mlp for tabular, transformer for text; vit: the transformer encoder over image patches
    kind: Literal["auto", "cnn", "mlp", "transformer", "vit"] = "auto"
    channels: tuple[int, ...] = (32, 64)  # cnn: conv widths, one 2x pooling per block
    hidden: tuple[int, ...] = (128,)  # mlp hidden widths; cnn head width
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # transformer / vit (components/transformer.py): pre-norm encoder blocks
    d_model: int = Field(128, ge=8, le=4096)  # embedding width; a multiple of heads
    heads: int = Field(4, ge=1, le=64)  # attention heads per block
    layers: int = Field(2, ge=1, le=48)  # encoder blocks
    ff: int = Field(256, ge=8, le=65_536)  # FFN hidden width
    # the [CLS] position, or the mean over non-padding positions (mean: ViT +1-2 points on digits at 10 epochs,
    # text the same; benchmarks/vit.py, BENCHMARKS.md issue 19)
    pooling: Literal["cls", "mean"] = "mean"
    patch_size: int = Field(4, ge=1, le=64)  # vit: square patch side, pixels (images are zero-padded to a multiple)
    # vit: patch = each patch linearly embedded (the original ViT); conv = two 3x3 conv layers (BatchNorm, GELU)
    # before it, a convolutional stem (digits 0.77 -> 0.98, 32x32 shapes 0.67 -> 0.78 at 10 epochs; benchmarks/vit.py)
    stem: Literal["patch", "conv"] = "conv"

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


class DistributedConfig(_Section):
    """DDP through torch's elastic launcher: one process per GPU, or N CPU processes (gloo)."""

    nproc_per_node: int | Literal["auto"] = "auto"  # auto: number of GPUs, else 1; N >= 2: DDP
    max_restarts: int = Field(2, ge=0, le=100)  # elastic restarts after a rank dies (resume from checkpoint)
    timeout: float = Field(300.0, ge=1.0, le=86_400.0)  # seconds a collective waits for a silent rank

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _nproc(cls, v):
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024):
            raise ValueError("must be 'auto' or a whole number of processes between 1 and 1024")
        return v


class TrainConfig(_Section):
    epochs: int = Field(40, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(3e-3, gt=0.0, le=1.0)  # AdamW peak learning rate
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    # fraction of all steps the lr rises linearly to train.lr; None: the scheduler's own (onecycle 0.15, else none)
    warmup: float | None = Field(None, ge=0.0, lt=1.0)
    # token-id (text) data: each epoch sorts the shuffled rows by length within chunks of this many batches and
    # cuts every batch to its longest row (less padding work); 0 = off. Padding is masked: results stay the same
    bucket_batches: int = Field(50, ge=0, le=100_000)
    # which weights a run ends with: last = the final epoch's (the lr schedule runs to its end, no early
    # stopping); best = the validated epoch with the lowest validation loss (early stopping after `patience`
    # validations without improvement). last scored ~0.3 points higher in 5-fold CV on digits
    # (benchmarks/results/HISTORY.md, issue 3)
    keep: Literal["last", "best"] = "last"
    patience: int = Field(10, ge=1)  # keep: best: validations without val-loss improvement before stopping
    val_every: int = Field(1, ge=1, le=10_000)  # epochs between validation passes; the last epoch always validates
    num_threads: int = Field(0, ge=0)  # torch CPU threads per rank; 0 = all cores / ranks on this node
    precision: Literal["fp32", "bf16", "fp16"] = (
        "fp32"  # bf16: autocast (CPU, GPU); fp16: autocast + grad scaler, CUDA only
    )
    compile: bool = False  # torch.compile the model (first epoch pays the compile: ~10+ s on CPU)
    channels_last: bool = False  # NHWC memory layout for CNNs (faster on GPU, with bf16 on CPU)
    checkpoint_every: int = Field(1, ge=0, le=10_000)  # epochs between checkpoints; 0 = off (no resume)
    # least wall time between two checkpoints (the last epoch always gets one): short epochs are not each
    # worth a durable copy (one per 0.23 s epoch cost the stage 3-5% at 2 threads on 2 cores, ~1% at 1 s;
    # benchmarks/results/HISTORY.md, issue 4); a kill loses at most ~1 s plus one epoch.
    # 0 = every checkpoint_every epochs
    checkpoint_min_seconds: float = Field(1.0, ge=0, le=86_400)
    max_epochs: int | None = Field(None, ge=1, le=10_000)  # caps epochs, the tuned count too (a time budget sets it)
    keep_checkpoints: int = Field(2, ge=1, le=100)  # newest K checkpoint files kept
    loader_workers: int = Field(0, ge=0, le=64)  # DataLoader worker processes per rank; 0 = read in the trainer
    # CUDA: cuDNN's deterministic convolution algorithms, so the same seed gives the same weights on a GPU
    # as it does on the CPU; false lets cuDNN pick the fastest (benchmark mode), which may differ run to run
    deterministic: bool = True
    # GPUs one run trains on; > 0 with a Prefect server: the train stage holds that many slots of the node's limit
    # gpu:<hostname> (one slot per GPU) while it trains, so runs on one machine queue instead of sharing a device
    gpus_per_run: int = Field(0, ge=0, le=64)
    distributed: DistributedConfig = DistributedConfig()


class PromoteConfig(_Section):
    model_name: str | None = None  # None: "mlpipe-<dataset name>"
    accuracy_floor: float = Field(0.9, ge=0.0, le=1.0)  # challenger's test accuracy must reach it
    tolerance: float = Field(0.002, ge=0.0, le=1.0)  # may trail the champion by this much
    # which registered variant the gate considers for @champion (compress stage): the most accurate,
    # or the smallest / fastest (batch-1 latency) among those within compress.max_accuracy_drop
    objective: Literal["accuracy", "smallest_within_budget", "fastest_within_budget"] = "accuracy"
    # the best baseline (baseline stage) must be beaten by this much accuracy, else the challenger is registered
    # but not promoted: on the cv folds where CV ran (significantly, paired t-test), else on the test split.
    # None: rule off (the comparison is still reported)
    beat_baseline_by: float | None = Field(None, ge=0.0, le=1.0)
    # true: the best baseline is registered too (an MLflow sklearn model, skops) and the gate considers it when the
    # network does not beat it (by beat_baseline_by, else 0): the champion is the better model of either kind
    allow_baseline: bool = False
    # confidence of the paired t-test over the cv folds (one-sided) in the fold rules against the champion and the
    # baseline; where both sides have fold scores on the same folds, those rules replace the test-split ones
    fold_confidence: float = Field(0.95, ge=0.5, lt=1.0)


class CompressConfig(_Section):
    """The compress stage: variants of the trained model, each measured on the test set."""

    enabled: bool = True
    variants: tuple[Literal["int8", "pruned", "structured", "distilled"], ...] = (
        "int8",
        "pruned",
        "structured",
        "distilled",
    )
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0)  # test accuracy below fp32, fraction (0.01 = 1 point)
    sparsity: float = Field(0.9, gt=0.0, lt=1.0)  # pruned: fraction of conv/linear weights set to zero
    prune_steps: int = Field(3, ge=1, le=50)  # pruned: prune -> fine-tune rounds to reach the sparsity
    step_epochs: int = Field(2, ge=0, le=1000)  # pruned: fine-tune epochs after each round
    keep: float = Field(0.5, gt=0.0, le=1.0)  # structured: fraction of channels / hidden neurons kept per layer
    structured_epochs: int = Field(10, ge=0, le=1000)  # structured: fine-tune epochs
    structured_teacher: bool = (
        True  # structured: fine-tune on the fp32 model's soft targets too (distill_*); false = labels only
    )
    distill_alpha: float = Field(
        0.5, ge=0.0, le=1.0
    )  # distilled (and structured_teacher): weight of the soft targets in the loss; 0 = labels only
    distill_temperature: float = Field(
        4.0, gt=0.0, le=100.0
    )  # distilled (and structured_teacher): softmax temperature of the soft targets
    student_drop_blocks: int = Field(
        1, ge=0, le=16
    )  # distilled: conv blocks (cnn) / hidden layers (mlp) fewer than fp32; widths x keep
    student_epochs: int = Field(20, ge=1, le=1000)  # distilled: training epochs
    student_lr: float = Field(
        3e-3, gt=0.0, le=1.0
    )  # distilled: AdamW peak lr, cosine-decayed (its head starts untrained)
    finetune_lr: float = Field(1e-3, gt=0.0, le=1.0)  # AdamW, cosine-decayed, for both pruning variants
    int8_mode: Literal["auto", "static", "dynamic"] = "auto"  # auto: static (calibrated) for cnn, dynamic for mlp
    calibration_samples: int = Field(256, ge=1, le=100_000)  # static int8: training rows used to calibrate
    threads: int = Field(1, ge=1, le=256)  # torch / ONNX Runtime threads while timing
    repeats: int = Field(30, ge=3, le=10_000)  # timed calls at batch 1 (batch 256: a fifth, at least 3), after warm-up


# search-space bounds a tune section may use: (lowest, highest, low end open)
_TUNE_LIMITS = {
    "lr": (0.0, 1.0, True),
    "weight_decay": (0.0, 1.0, True),
    "dropout": (0.0, 0.95, False),
    "aug_strength": (0.0, 10.0, False),
    "epochs": (1, 10_000, False),
    "depth": (1, 8, False),
    "layers": (1, 48, False),
    "warmup": (0.0, 0.99, False),
}


class TuneConfig(_Section):
    """The tune stage: an Optuna study over the search space below (components/tune.py)."""

    enabled: bool = True  # false: train uses the config as written
    n_trials: int = Field(
        30, ge=1, le=100_000
    )  # total budget of finished (complete + pruned) trials, earlier runs included
    n_workers: int = Field(2, ge=1, le=256)  # processes sharing the study; CPU threads are split between them
    objective: Literal["holdout", "cv"] = "holdout"  # holdout: data.val_size split; cv: mean over cv.folds folds
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"  # what trials report each epoch and the study optimizes
    pruner: Literal["none", "median", "halving", "hyperband"] = "hyperband"
    min_resource: int = Field(3, ge=1, le=10_000)  # epochs a trial runs before a pruner may stop it
    reduction_factor: int = Field(3, ge=2, le=10)  # halving/hyperband: 1 in this many trials goes on at each rung
    storage: str | None = (
        None  # None: $OPTUNA_STORAGE, else Optuna journal file .mlpipe/optuna/journal.log; or a database URL (postgresql://...)
    )
    heartbeat_s: int = Field(30, ge=1, le=3600)  # database storage: seconds between trial heartbeats; stale after 4x
    # search space: [low, high] ranges are sampled (lr, weight_decay on a log scale); lists are choices
    lr: tuple[float, float] = (5e-4, 1e-2)  # AdamW peak learning rate
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    batch_size: tuple[int, ...] = (32, 64, 128)
    width: tuple[int, ...] = (16, 32, 48)  # cnn: first conv width (doubles per block); mlp: hidden width
    depth: tuple[int, int] = (1, 3)  # cnn: conv blocks; mlp: hidden layers
    # transformer / vit (replacing width and depth): every d_model choice must be a multiple of every heads choice
    d_model: tuple[int, ...] = (64, 128)
    heads: tuple[int, ...] = (2, 4)
    # 1-2 blocks: on thousands of rows more gained nothing (stdlib docstrings, dev accuracy: 1 block of d_model 64
    # 0.828, 2 of 128 0.825; ViT on digits, d_model 64: 1 block 0.969, 2 blocks 0.944), each block costs time
    layers: tuple[int, int] = (1, 2)
    ff_mult: tuple[int, ...] = (2, 4)  # FFN width = d_model x this
    warmup: tuple[float, float] = (0.0, 0.2)  # fraction of steps (train.warmup)
    dropout: tuple[float, float] = (0.0, 0.5)
    aug_strength: tuple[float, float] = (
        0.0,
        2.0,
    )  # multiplies the augment section's magnitudes (shift, rotation, noise)
    # wall seconds this tune stage may run trials (a time budget sets it); None: n_trials alone; 0: no new
    # trials, the study's best so far (none: the config as written)
    timeout_s: float | None = Field(None, ge=0.0, le=10**7)
    # longer schedules cross-validate better on digits: a 1-block CNN 0.9926 / 0.9944 / 0.9950 at 30 / 40 / 50 epochs;
    # the default run's champion 0.9916 with [15, 50], 0.9937 in three runs with [30, 60]
    # (benchmarks/results/HISTORY.md, issue 3)
    epochs: tuple[int, int] = (30, 60)

    @field_validator("lr", "weight_decay", "dropout", "aug_strength", "epochs", "depth", "layers", "warmup")
    @classmethod
    def _range(cls, v, info):
        lo, hi, open_low = _TUNE_LIMITS[info.field_name]
        if v[0] > v[1]:
            raise ValueError(f"bounds out of order: low {v[0]} > high {v[1]}")
        if v[0] < lo or (open_low and v[0] <= lo) or v[1] > hi:
            raise ValueError(f"bounds must lie in {'(' if open_low else '['}{lo}, {hi}]")
        return v

    @field_validator("batch_size", "width", "d_model", "heads", "ff_mult")
    @classmethod
    def _choices(cls, v):
        if not v or min(v) < 1 or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct whole numbers >= 1")
        return v

    @model_validator(mode="after")
    def _heads(self):
        bad = [(d, h) for d in self.d_model for h in self.heads if d % h]
        if bad:
            raise ValueError(f"tune.d_model {bad[0][0]} is not a multiple of tune.heads {bad[0][1]}")
        return self


_BASELINES = Literal["hgb", "logreg", "svc"]


class BaselineConfig(_Section):
    """The baseline stage: classical scikit-learn models on the same split and metrics (components/baseline.py)."""

    enabled: bool = True
    # tabular data: hgb = HistGradientBoosting (defaults), logreg = standardized logistic regression, svc = standardized
    # RBF SVC; the grid models search C over the cv folds
    tabular: tuple[_BASELINES, ...] = ("hgb", "logreg", "svc")
    image: tuple[_BASELINES, ...] = ("logreg",)  # images: on the flattened pixels
    C: tuple[float, ...] = (0.1, 1.0, 10.0)  # logreg, svc: inverse regularization strengths searched
    svc_max_rows: int = Field(5000, ge=0, le=10_000_000)  # svc is left out above this many training rows (fit ~ rows^2)
    threads: int = Field(0, ge=0, le=1024)  # CPU threads (OpenMP, BLAS) while fitting; 0 = all cores

    @field_validator("tabular", "image")
    @classmethod
    def _models(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct models (hgb, logreg, svc)")
        return v

    @field_validator("C")
    @classmethod
    def _c(cls, v):
        if not v or min(v) <= 0 or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct values > 0")
        return v


class BudgetConfig(_Section):
    """A wall-time budget for `mlpipe run` (components/budget.py plans the stages inside it) and the
    data-size-aware epoch counts, which apply with or without a budget."""

    minutes: float | None = Field(None, gt=0.0, le=10_080.0)  # None: no budget, every stage runs as configured
    # epochs stop growing once an epoch count would show the model this many training samples: a large
    # training split gets fewer passes (train.epochs and tune.epochs shrink together); None: off
    samples_seen: int | None = Field(200_000, ge=1_000, le=10**12)
    min_epochs: int = Field(3, ge=1, le=1000)  # ... but never fewer than this many (nor more than train.epochs)


class CVConfig(_Section):
    """The cv stage: stratified k-fold over the training split with the tuned config."""

    enabled: bool = True
    folds: int = Field(5, ge=2, le=100)  # every class needs at least this many training rows


class ExplainConfig(_Section):
    """The explain stage: attributions of the trained fp32 model on test rows (components/explain.py)."""

    enabled: bool = True
    # test rows explained, drawn class by class: the bound on the stage's time. Images: integrated gradients
    # costs samples x steps gradient passes; tables: permutation importance samples x features x repeats rows
    samples: int = Field(200, ge=1, le=100_000)
    seed: int = Field(0, ge=0)  # which rows are drawn, and the permutations
    steps: int = Field(32, ge=2, le=1024)  # integrated gradients: points on the path from the all-zero baseline
    repeats: int = Field(5, ge=1, le=1000)  # permutation importance: shuffles of each feature column


class TrackingConfig(_Section):
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite file in the project
    experiment: str = "mlpipe"


class ScheduleConfig(_Section):
    """`mlpipe deploy`: the Prefect deployment of the pipeline and when it runs."""

    name: str = Field("nightly", min_length=1, max_length=100)  # deployment name: mlpipe/<name>
    cron: str | None = "0 2 * * *"  # 5-field cron (minute hour day month weekday); None: manual runs only
    timezone: str = "UTC"  # IANA zone the cron is read in, e.g. Europe/Berlin
    work_pool: str | None = None  # None: served in-process by `mlpipe deploy`; else a Prefect work pool

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None):
        fields = (v or "").split()
        if v is not None and (len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*,/?-]+", f) for f in fields)):
            raise ValueError("must have 5 fields (minute hour day month weekday), e.g. '0 2 * * *'")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA zone such as UTC or Europe/Berlin") from None
        return v


class ServeConfig(_Section):
    """`mlpipe serve-model`: the scoring server that follows a registry alias."""

    port: int = Field(5001, ge=1, le=65_535)  # TCP port on --host (127.0.0.1 unless told otherwise)
    # seconds between looks at the alias; a version it moved to is loaded fully, then swapped in
    poll_s: float = Field(10.0, ge=0.05, le=86_400.0)
    # every request looks the alias up first (one registry read shared by requests that arrive together), so
    # each response comes from the version that was champion while it was answered; false: poll_s only
    consistent: bool = True
    max_body_mb: float = Field(64.0, gt=0.0, le=4096.0)  # largest /invocations request body, MiB (413 above)


class ScoreConfig(_Section):
    """`mlpipe score`: batch inference over a file or folder of any size."""

    chunk_rows: int = Field(10_000, ge=1, le=10_000_000)  # rows (images) read and predicted at a time: bounds memory


class DriftConfig(_Section):
    """Drift of new data against the training rows logged with the model (Evidently), in `mlpipe score`."""

    enabled: bool = True
    # the data drifted when at least this share of its columns drift (each: K-S / chi2 test, p < 0.05)
    threshold: float = Field(0.5, gt=0.0, le=1.0)
    on_drift: Literal["warn", "fail"] = "warn"  # fail: `mlpipe score` exits 2 and writes no predictions
    sample_rows: int = Field(5_000, ge=100, le=1_000_000)  # scored rows kept (uniform sample) for the comparison
    embedding_dims: int = Field(16, ge=1, le=512)  # images: principal components of penultimate-layer embeddings


class Config(_Section):
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    baseline: BaselineConfig = BaselineConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    cv: CVConfig = CVConfig()
    compress: CompressConfig = CompressConfig()
    explain: ExplainConfig = ExplainConfig()
    promote: PromoteConfig = PromoteConfig()
    tracking: TrackingConfig = TrackingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    serve: ServeConfig = ServeConfig()
    score: ScoreConfig = ScoreConfig()
    drift: DriftConfig = DriftConfig()
    budget: BudgetConfig = BudgetConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, protected_namespaces=())

    @model_validator(mode="after")
    def _baseline_gate(self):
        p = self.promote
        for key, on in (("beat_baseline_by", p.beat_baseline_by is not None), ("allow_baseline", p.allow_baseline)):
            if on and not self.baseline.enabled:
                raise ValueError(f"promote.{key} needs a baseline, but baseline.enabled is false")
        n, gpus = self.train.distributed.nproc_per_node, self.train.gpus_per_run
        if gpus and n != "auto" and n > gpus:
            raise ValueError(
                f"train.distributed.nproc_per_node {n} is more ranks than train.gpus_per_run {gpus} (one rank per GPU)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def section(self, name: str) -> dict[str, Any]:
        return self.to_dict()[name]


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
    return key.strip().split("."), value


def _apply(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def _describe(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        # a check across sections (loc empty) names its keys itself; its input is the whole config
        got = "" if e["type"] in ("extra_forbidden", "missing") or not e["loc"] else f" (got {e.get('input')!r})"
        lines.append(f"{origin}: {key}: {msg}{got}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read params.yaml (or defaults when path is None), apply KEY=VALUE overrides, validate."""
    raw: dict = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: params file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    for item in overrides:
        _apply(raw, *parse_override(item))
    if os.environ.get("OPTUNA_STORAGE") and not (raw.get("tune") or {}).get("storage"):
        _apply(raw, ["tune", "storage"], os.environ["OPTUNA_STORAGE"])  # shared study for workers on many machines
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, origin)) from None
