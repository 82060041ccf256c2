"""`mlpipe`: the command-line surface. Heavy imports happen inside commands, so --help is quick."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="mlpipe: a dataset to a validated, tracked, registered and promoted model.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
err = Console(stderr=True)
out = Console()

PARAMS = typer.Option("params.yaml", "--params", "-p", help="Config file (shared with DVC).")
SETS = typer.Option(None, "--set", "-s", help="Override a config key, e.g. --set train.epochs=3 (repeatable).")


def _env() -> None:
    """Quiet, offline-friendly defaults for the tools; set before they are imported."""
    for k, v in {"DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "GIT_PYTHON_REFRESH": "quiet"}.items():
        os.environ.setdefault(k, v)


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _config(params: Path, sets: list[str] | None):
    from components.config import load_config
    from components.errors import MlpipeError

    try:
        return load_config(params, sets or [])
    except MlpipeError as e:
        _fail(e)


@app.command()
def run(params: Path = PARAMS, sets: Optional[list[str]] = SETS,
        refresh: bool = typer.Option(False, "--refresh", help="Ignore cached stage results and run every stage.")):
    """Run the whole pipeline as a Prefect flow and print a summary."""
    _env()
    _config(params, sets)  # fail fast, before Prefect starts
    from components.errors import MlpipeError
    from flows.pipeline import pipeline

    try:
        result = pipeline(params=str(params), overrides=list(sets or []), root=str(Path.cwd()), refresh=refresh)
    except MlpipeError as e:
        _fail(e)
    table = Table(title="mlpipe run", show_header=False)
    for k, v in result["summary"]:
        table.add_row(k, str(v))
    out.print(table)


@app.command()
def stage(name: str = typer.Argument(..., help="ingest | validate | augment | train | evaluate | register"),
          params: Path = PARAMS, sets: Optional[list[str]] = SETS):
    """Run one stage on its own (each dvc.yaml stage calls this)."""
    _env()
    from flows.stages import RUNNERS

    if name not in RUNNERS:
        _fail(ValueError(f"unknown stage {name!r}; expected one of {', '.join(RUNNERS)}"))
    cfg = _config(params, sets)
    from components import tracking
    from components.errors import MlpipeError
    from flows.stages import Paths

    paths = Paths(Path.cwd())
    try:
        tracking.setup(cfg.tracking, paths.root)
        result = RUNNERS[name](cfg, paths, os.environ.get("MLPIPE_PARENT_RUN_ID"))
    except MlpipeError as e:
        _fail(e)
    out.print(f"[green]{name}[/] done: {result}", highlight=False)


@app.command()
def predict(input: Path = typer.Argument(..., help="An .npz (array X), a CSV of feature columns, or a folder of images."),
            model: str = typer.Option(..., "--model", "-m", help="Model URI: models:/NAME@champion, models:/NAME/VERSION, runs:/ID/model."),
            params: Path = PARAMS):
    """Print one prediction per input row or image."""
    _env()
    cfg = _config(params, None) if params.exists() else None
    from components import registry, tracking
    from components.config import TrackingConfig
    from components.errors import MlpipeError
    from flows.inputs import read_inputs

    try:
        tracking.setup(cfg.tracking if cfg else TrackingConfig(), Path.cwd())
        clf = registry.load(model)
        shape = registry.input_shape(clf)
        names, X = read_inputs(input, shape, cfg.data.label_column if cfg else "label")
        pred = clf.predict(X)
    except MlpipeError as e:
        _fail(e)
    out.print("input,class,confidence", highlight=False)
    for n, c, p in zip(names, pred["class"], pred["confidence"]):
        out.print(f"{n},{c},{p:.4f}", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
