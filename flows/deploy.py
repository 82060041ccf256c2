"""`mlpipe deploy`: a Prefect deployment `mlpipe/<schedule.name>` of the pipeline, scheduled by
params.yaml's `schedule` section (cron + timezone) with the flow parameters fixed at deploy time.

- schedule.work_pool null: served in-process (`flow.serve`), one machine, no worker needed.
- schedule.work_pool NAME: registered with a work pool; a worker (process, Docker, Kubernetes)
  runs it from the project folder (process pools) or the project image (prefect.yaml, infra/)."""

from __future__ import annotations

from pathlib import Path

from components.config import Config
from components.errors import MlpipeError
from flows.locks import prefect_server_configured

ENTRYPOINT = "flows/pipeline.py:pipeline"
REPO = Path(__file__).resolve().parents[1]


def flow_parameters(params: Path, sets: list[str] | None, root: Path) -> dict:
    """Absolute paths: a scheduled run starts in another process, maybe another folder."""
    return {
        "params": str(Path(params).resolve()),
        "overrides": list(sets or []),
        "root": str(Path(root).resolve()),
        "refresh": False,
    }


def schedules(cfg: Config) -> list:
    from prefect.schedules import Cron

    s = cfg.schedule
    return [Cron(s.cron, timezone=s.timezone)] if s.cron else []


def require_server() -> None:
    """A deployment lives in a Prefect server; the temporary per-process API would forget it."""
    if not prefect_server_configured():
        raise MlpipeError(
            "mlpipe deploy: PREFECT_API_URL is not set; start servers with `mlpipe serve` "
            "(then export PREFECT_API_URL=http://127.0.0.1:4200/api) or point it at a shared Prefect server"
        )


def serve(cfg: Config, params: Path, sets: list[str] | None, root: Path) -> None:
    """Create the deployment and run its scheduled (and triggered) runs here; blocks."""
    require_server()
    from flows.pipeline import pipeline

    pipeline.serve(
        name=cfg.schedule.name,
        schedules=schedules(cfg),
        parameters=flow_parameters(params, sets, root),
        tags=["mlpipe"],
        description=f"mlpipe pipeline on {cfg.data.source}",
        pause_on_shutdown=False,
    )


def to_pool(cfg: Config, params: Path, sets: list[str] | None, root: Path, image: str | None = None) -> str:
    """Register the deployment with cfg.schedule.work_pool -> deployment id. Process pools run
    the code from this folder; Docker/Kubernetes pools from `image` (built from infra/Dockerfile)."""
    require_server()
    from prefect import flow

    kwargs = dict(
        name=cfg.schedule.name,
        work_pool_name=cfg.schedule.work_pool,
        schedules=schedules(cfg),
        parameters=flow_parameters(params, sets, root),
        tags=["mlpipe"],
    )
    if image:
        from flows.pipeline import pipeline

        return str(pipeline.deploy(image=image, build=False, push=False, **kwargs))
    return str(flow.from_source(source=str(REPO), entrypoint=ENTRYPOINT).deploy(**kwargs))
