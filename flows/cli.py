"""`mlpipe`: the command-line surface. Heavy imports happen inside commands, so --help is quick."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="mlpipe: a dataset to a validated, tracked, registered and promoted model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

PARAMS = typer.Option("params.yaml", "--params", "-p", help="Config file (shared with DVC).")
SETS = typer.Option(None, "--set", "-s", help="Override a config key, e.g. --set train.epochs=3 (repeatable).")
BUDGET = typer.Option(
    None,
    "--budget",
    "-b",
    help="Wall-time budget of the run, e.g. 90s, 15m, 1h (overrides budget.minutes): the stages are planned "
    "inside it, start-up included; a re-run after a kill resumes it and spends only what is left.",
)
VERBOSE = typer.Option(False, "--verbose", "-v", help="On failure, print the full traceback and Prefect's logs.")
NO_WAIT = typer.Option(
    False,
    "--no-wait",
    help="Fail at once (exit 2) when another run holds this project folder, instead of waiting for it.",
)


def _env() -> None:
    """Quiet, offline-friendly defaults for the tools; set before they are imported."""
    for k, v in {
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
        # Prefect's temporary API server gets 20 s to start by default: too little on a busy 2-core machine
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }.items():
        os.environ.setdefault(k, v)


def _fail_logged(e: Exception, verbose: bool, code: int = 2) -> None:
    """One error line naming the traceback's log file (.mlpipe/logs/); --verbose prints the traceback too."""
    import traceback

    from rich.markup import escape

    log = getattr(e, "mlpipe_log", None)
    if log is None:  # failed before the flow could record it
        from flows.paths import Paths

        logs = Paths(Path.cwd()).run_logs
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"run-{os.getpid()}.log"
        log.write_text("".join(traceback.format_exception(e)))
    if verbose:
        err.print("".join(traceback.format_exception(e)), highlight=False, markup=False, soft_wrap=True)
    msg = str(e) if code == 2 else f"{type(e).__name__}: {e}"
    err.print(
        f"[bold red]error:[/] {escape(msg)} [dim](traceback: {escape(str(log))})[/]",
        highlight=False,
        markup=True,
        soft_wrap=True,
    )
    raise typer.Exit(code)


def _fail(e: Exception) -> None:
    from rich.markup import escape

    err.print(
        f"[bold red]error:[/] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True
    )  # messages may hold [brackets]
    raise typer.Exit(2)


def _quiet_prefect_failures() -> None:
    """Prefect logs a failed task and flow run at ERROR with its traceback (prefect.task_runs,
    prefect.flow_runs, through the root logger's console handler), then 'Finished in state Failed',
    before our own error line: keep those records off the console (Prefect's API handler, and so its
    UI, still gets them)."""
    import logging

    def console_filter(record: logging.LogRecord) -> bool:
        if not record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return True
        return record.levelno < logging.ERROR and not str(record.msg).startswith("Finished in state Failed")

    for h in logging.getLogger().handlers:
        if type(h).__name__ == "PrefectConsoleHandler":
            h.addFilter(console_filter)


def _budget(text: str | None) -> float | None:
    from components.budget import parse_duration
    from components.errors import MlpipeError

    try:
        return None if text is None else parse_duration(text)
    except MlpipeError as e:
        _fail(e)


def _config(params: Path, sets: list[str] | None):
    from components.config import load_config
    from components.errors import MlpipeError

    try:
        return load_config(params, sets or [])
    except MlpipeError as e:
        _fail(e)


def _use_served_prefect() -> str | None:
    """With no PREFECT_API_URL set, a run in a folder where `mlpipe serve` runs a healthy Prefect server
    uses that server instead of starting Prefect's temporary one (seconds of every run) -> its URL."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    import urllib.request

    from flows.paths import Paths
    from flows.servers import running

    server = running(Paths(Path.cwd())).get("prefect")
    if server is None:
        return None
    try:
        with urllib.request.urlopen(server.url + "/health", timeout=2) as r:
            if r.status != 200:
                return None
    except OSError:  # a stale pid file, or the server is stopping: the temporary server it is
        return None
    os.environ["PREFECT_API_URL"] = server.url
    return server.url


@app.command()
def run(
    params: Path = PARAMS,
    sets: Optional[list[str]] = SETS,
    refresh: bool = typer.Option(False, "--refresh", help="Ignore cached stage results and run every stage."),
    no_wait: bool = NO_WAIT,
    budget: Optional[str] = BUDGET,
    verbose: bool = VERBOSE,
):
    """Run the whole pipeline as a Prefect flow and print a summary. A failure ends with one error line;
    the full traceback is in .mlpipe/logs/ and on the MLflow run (--verbose prints it)."""
    import time

    started = time.time()
    _env()
    budget_s = _budget(budget)
    _config(params, sets)  # fail fast, before Prefect starts
    served = _use_served_prefect()  # before Prefect is imported: it reads the setting once
    if served:
        out.print(f"Prefect: the server of `mlpipe serve` at {served}", highlight=False)
    from components.errors import MlpipeError
    from flows.pipeline import pipeline

    if not verbose:
        _quiet_prefect_failures()
    try:
        result = pipeline(
            params=str(params),
            overrides=list(sets or []),
            root=str(Path.cwd()),
            refresh=refresh,
            wait=not no_wait,
            budget_s=budget_s,
            started=started,
        )
    except MlpipeError as e:
        _fail_logged(e, verbose)
    except Exception as e:  # noqa: BLE001 - a bug or a broken tool: still one line, the traceback in the log
        _fail_logged(e, verbose, code=1)
    table = Table(title="mlpipe run", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # long links wrap whole instead of being cut to an ellipsis
    for k, v in result["summary"]:
        table.add_row(k, str(v))
    out.print(table)


@app.command()
def stage(
    name: str = typer.Argument(
        ...,
        help="ingest | validate | baseline | augment | tune | cv | train | evaluate | explain | compress | register",
    ),
    params: Path = PARAMS,
    sets: Optional[list[str]] = SETS,
    no_wait: bool = NO_WAIT,
):
    """Run one stage on its own (each dvc.yaml stage calls this)."""
    _env()
    from flows import stages

    if name not in stages.BY_NAME:
        _fail(ValueError(f"unknown stage {name!r}; expected one of {', '.join(stages.BY_NAME)}"))
    cfg = _config(params, sets)
    from components import tracking
    from components.errors import MlpipeError
    from flows.locks import command_line, project_lock
    from flows.paths import Paths

    paths = Paths(Path.cwd())
    try:
        with project_lock(paths, command_line(), wait=not no_wait, say=lambda m: err.print(m, highlight=False)):
            tracking.setup(cfg.tracking, paths.root)
            tracking.end_orphans(cfg.tracking.experiment)
            result = stages.get(name).run(cfg, paths, os.environ.get("MLPIPE_PARENT_RUN_ID"))
    except MlpipeError as e:
        _fail(e)
    out.print(f"[green]{name}[/] done: {result}", highlight=False)


@app.command()
def predict(
    input: Path = typer.Argument(
        ...,
        help="An .npz (array X), a CSV of feature columns, or a folder of images; for a text model, "
        "a .txt file (one text per line) or a CSV/parquet with the text column (data.text_column or 'text').",
    ),
    model: str = typer.Option(
        ..., "--model", "-m", help="Model URI: models:/NAME@champion, models:/NAME/VERSION, runs:/ID/model."
    ),
    params: Path = PARAMS,
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Leave out rows with NaN or infinite values (listed on stderr) "
        "instead of stopping; the rest keep their row numbers.",
    ),
):
    """Print one prediction per input row or image (rows named by their number in the file, from 0)."""
    _env()
    cfg = _config(params, None) if params.exists() else None
    import numpy as np

    from components import registry, tracking
    from components.config import DataConfig, TrackingConfig
    from components.errors import MlpipeError
    from flows.inputs import drop_rows, read_inputs

    data = cfg.data if cfg else DataConfig()
    skipped: list[str] | None = [] if skip_invalid else None
    try:
        tracking.setup(cfg.tracking if cfg else TrackingConfig(), Path.cwd())
        clf = registry.load(model)
        shape = registry.input_shape(clf)
        names, X = read_inputs(input, shape, data.label_column, data.max_pixels, skipped, data.text_column)
        pred = clf.predict(X)
        # finite inputs far outside the training range can still overflow the logits
        conf = pred["confidence"].to_numpy()
        names, pred = drop_rows(
            names,
            pred,
            ~np.isfinite(conf),
            "where the model's output is not finite (values far outside the training data?)",
            input,
            skipped,
        )
    except MlpipeError as e:
        _fail(e)
    if skipped:
        err.print(f"skipped {len(skipped)} invalid row(s): {', '.join(skipped)}", highlight=False, soft_wrap=True)
    out.print("input,class,confidence", highlight=False)
    for n, c, p in zip(names, pred["class"], pred["confidence"]):
        out.print(f"{n},{c},{p:.4f}", highlight=False)


@app.command()
def deploy(
    params: Path = PARAMS,
    sets: Optional[list[str]] = SETS,
    image: Optional[str] = typer.Option(
        None, "--image", help="Docker/Kubernetes pools: the project image (infra/Dockerfile)."
    ),
    budget: Optional[str] = BUDGET,
):
    """Create the Prefect deployment mlpipe/<schedule.name> (cron + timezone from params.yaml). Without
    schedule.work_pool it is served here and this command keeps running; with one, it is registered and returns.
    --budget: each scheduled run gets that budget (budget.minutes among the deployment's overrides)."""
    _env()
    budget_s = _budget(budget)
    if budget_s is not None:
        sets = [*(sets or []), f"budget.minutes={budget_s / 60:g}"]
    cfg = _config(params, sets)
    from components.errors import MlpipeError
    from flows import deploy as d

    try:
        if not cfg.schedule.work_pool:
            return d.serve(cfg, params, sets, Path.cwd())
        dep = d.to_pool(cfg, params, sets, Path.cwd(), image)
    except MlpipeError as e:
        _fail(e)
    out.print(
        f"deployment mlpipe/{cfg.schedule.name} ({dep}) on work pool {cfg.schedule.work_pool}; "
        f"start a worker: prefect worker start --pool {cfg.schedule.work_pool}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def serve(
    params: Path = PARAMS,
    mlflow_port: int = typer.Option(5000, help="MLflow server port on 127.0.0.1."),
    prefect_port: int = typer.Option(4200, help="Prefect server port on 127.0.0.1."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Servers only, without the scheduled deployment."),
    model_port: Optional[int] = typer.Option(
        None, "--model-port", help="Port of the model server (`mlpipe serve-model`) on 127.0.0.1 (default: serve.port)."
    ),
    no_model: bool = typer.Option(False, "--no-model", help="Without the model server."),
):
    """Start mlflow server (SQLite, WAL), the Prefect server, the deployment's serve process and the model
    server that follows @champion (`mlpipe serve-model`) in the background on 127.0.0.1 (pid files and
    logs in .mlpipe/servers/); `mlpipe stop` stops them."""
    _env()
    cfg = _config(params, None)
    from components.errors import MlpipeError
    from flows import servers
    from flows.paths import Paths

    try:
        started = servers.serve_all(
            Paths(Path.cwd()),
            params,
            mlflow_port,
            prefect_port,
            deploy=not no_deploy,
            model_port=None if no_model else (model_port or cfg.serve.port),
        )
    except MlpipeError as e:
        _fail(e)
    for s in started:
        out.print(f"{s.name:8} pid {s.pid}  {s.url}  log {s.log}", highlight=False, soft_wrap=True)
    out.print(
        f"export MLFLOW_TRACKING_URI={started[0].url} PREFECT_API_URL={started[1].url}", highlight=False, soft_wrap=True
    )


def _champion_uri(cfg) -> str:
    """models:/NAME@champion for the config's dataset (promote.model_name, else mlpipe-<dataset>)."""
    from components.data import dataset_name

    return f"models:/{cfg.promote.model_name or 'mlpipe-' + dataset_name(cfg.data.source)}@champion"


@app.command("serve-model")
def serve_model(
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Model URI to serve; an alias is followed. Default: models:/mlpipe-<dataset>@champion.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to listen on (default: serve.port)."),
    params: Path = PARAMS,
    sets: Optional[list[str]] = SETS,
    wait: bool = typer.Option(
        False, "--wait", help="Start even if the alias does not exist yet (/ping answers 503 until it does)."
    ),
):
    """Serve a registered model over HTTP with MLflow's /invocations, /ping and /version (which names the
    version and variant serving); the alias is looked up before each request (serve.consistent) and every
    serve.poll_s seconds, and a version it moves to is loaded, then swapped in without failing a request."""
    _env()
    from components.config import load_config

    cfg = _config(params, sets) if params.exists() else load_config(None, sets or [])
    import logging

    from components import tracking
    from components.errors import MlpipeError
    from flows.serve_model import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uri = model or _champion_uri(cfg)
    try:
        tracking.setup(cfg.tracking, Path.cwd())
        serve(uri, host, cfg.serve.port if port is None else port, cfg.serve, wait)
    except MlpipeError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass


@app.command()
def score(
    input: Path = typer.Argument(
        ..., help="A CSV or parquet of feature columns, an .npz (array X) or .npy, or a folder of images."
    ),
    out_file: Path = typer.Option(..., "--out", "-o", help="The predictions, a parquet file (written atomically)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model URI (default: models:/mlpipe-<dataset>@champion)."
    ),
    params: Path = PARAMS,
    sets: Optional[list[str]] = SETS,
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Leave out rows with NaN or infinite values (listed on stderr) instead of stopping.",
    ),
):
    """Predict every row of a file or folder of any size in chunks (score.chunk_rows), into parquet: row,
    label, class, confidence, model name and version. Checks drift against the model's training sample
    (drift.*) and tracks it all as an MLflow run `score`. Usable as a DVC stage (README)."""
    _env()
    from components.config import load_config

    cfg = _config(params, sets) if params.exists() else load_config(None, sets or [])
    from components import tracking
    from components.errors import MlpipeError
    from flows.score import score as run_score

    try:
        tracking.setup(cfg.tracking, Path.cwd())
        result = run_score(
            cfg, model or _champion_uri(cfg), input, out_file, skip_invalid, say=lambda m: err.print(m, highlight=False)
        )
    except MlpipeError as e:
        _fail(e)
    if result["skipped"]:
        err.print(f"skipped {result['skipped']} invalid row(s)", highlight=False)
    out.print(
        f"scored {result['rows']} rows with {result['model']} -> {result['out']} "
        f"({result['rows_per_s']:.0f} rows/s; MLflow run {result['run_id']})",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def lineage(
    model: str = typer.Argument(
        ..., help="models:/NAME@ALIAS (e.g. models:/mlpipe-digits@champion) or models:/NAME/VERSION."
    ),
    as_json: bool = typer.Option(False, "--json", help="The same chain as JSON, for machines."),
    params: Path = PARAMS,
):
    """Why a registered version is what it is: source, data hash (and DVC's record), validation, tuning,
    CV, training, evaluation, attributions, compression and the promotion decision, with run ids and, when
    tracking goes to a server, MLflow links. Reads the store only."""
    _env()
    cfg = _config(params, None) if params.exists() else None
    import json

    from components import tracking
    from components.config import TrackingConfig
    from components.errors import MlpipeError
    from flows import lineage as lin
    from flows.paths import Paths

    try:
        uri = tracking.connect(cfg.tracking if cfg else TrackingConfig(), Path.cwd())
        chain = lin.gather(model, Paths(Path.cwd()), uri)
    except MlpipeError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps(chain, indent=2, default=str) + "\n")
    else:
        out.print(lin.render(chain), highlight=False, soft_wrap=True, markup=False)


@app.command()
def stop():
    """Stop the servers started by `mlpipe serve` in this folder."""
    from flows import servers
    from flows.paths import Paths

    names = servers.stop_all(Paths(Path.cwd()))
    out.print(f"stopped: {', '.join(names) or 'nothing was running'}", highlight=False)


@app.command()
def dashboard(
    params: Path = PARAMS,
    sets: Optional[list[str]] = SETS,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
):
    """Open optuna-dashboard on the tuning studies (the journal file, or tune.storage)."""
    _env()
    from components.config import load_config
    from components.errors import MlpipeError

    cfg = _config(params, sets) if params.exists() else load_config(None, sets or [])
    from components.tune import storage_url
    from flows.paths import Paths

    storage = storage_url(cfg, Paths(Path.cwd()).optuna_journal)
    args = [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", host, "--port", str(port)]
    if not cfg.tune.storage:
        if not Path(storage).exists():
            _fail(MlpipeError(f"{storage}: no Optuna journal yet; run `mlpipe stage tune` (or `mlpipe run`) first"))
        args += ["--storage-class", "JournalFileStorage"]
    out.print(f"optuna-dashboard on http://{host}:{port} ({storage})", highlight=False)
    os.execv(args[0], args)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
