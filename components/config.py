"""One typed config tree, loaded from params.yaml (shared with DVC) and validated at load."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: str = "sklearn:digits"  # sklearn:NAME | npz:PATH | imagefolder:PATH | csv:PATH | parquet:PATH
    label_column: str = "label"  # csv/parquet only
    classes: tuple[str, ...] | None = None  # the allowed labels; None: whatever labels the data has
    image_size: tuple[int, int] = (8, 8)  # (H, W) pixels, imagefolder only
    grayscale: bool = True  # imagefolder: 1 channel, else 3
    test_size: float = Field(0.2, gt=0.0, lt=1.0)  # fraction held out for the final test
    val_size: float = Field(0.1, gt=0.0, lt=1.0)  # fraction of train held out for early stopping

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


class AugmentConfig(_Section):
    enabled: bool = True
    shift: int = Field(1, ge=0, le=8)  # image: random translation, +- pixels
    rotation: float = Field(10.0, ge=0.0, le=45.0)  # image: random rotation, +- degrees
    flip: bool = False  # image: random horizontal flip (off for digits: a flipped 2 is not a 2)
    noise_std: float = Field(0.0, ge=0.0, le=1.0)  # image: gaussian noise, fraction of value range
    cutout: int = Field(0, ge=0, le=32)  # image: side of a zeroed square, pixels; 0 = off
    tabular_noise_std: float = Field(0.05, ge=0.0, le=1.0)  # tabular: noise, times feature std


class ModelConfig(_Section):
    kind: Literal["auto", "cnn", "mlp"] = "auto"  # auto: cnn for images, mlp for tabular
    channels: tuple[int, ...] = (32, 64)  # cnn: conv widths, one 2x pooling per block
    hidden: tuple[int, ...] = (128,)  # mlp hidden widths; cnn head width
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class TrainConfig(_Section):
    epochs: int = Field(40, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(3e-3, gt=0.0, le=1.0)  # AdamW peak learning rate
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    patience: int = Field(10, ge=1)  # epochs without val-loss improvement before stopping
    num_threads: int = Field(0, ge=0)  # torch CPU threads; 0 = all cores


class PromoteConfig(_Section):
    model_name: str | None = None  # None: "mlpipe-<dataset name>"
    accuracy_floor: float = Field(0.9, ge=0.0, le=1.0)  # challenger's test accuracy must reach it
    tolerance: float = Field(0.002, ge=0.0, le=1.0)  # may trail the champion by this much


class TrackingConfig(_Section):
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite file in the project
    experiment: str = "mlpipe"


class Config(_Section):
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    promote: PromoteConfig = PromoteConfig()
    tracking: TrackingConfig = TrackingConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, protected_namespaces=())

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
        got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e.get('input')!r})"
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
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, origin)) from None
