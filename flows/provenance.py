"""Where a run came from: the git commit and the environment, as MLflow tags."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from components.config import Config


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: Config, root: Path) -> dict:
    return {
        "mlpipe.git_commit": git_commit(root),
        "mlpipe.source": cfg.data.source,
        "mlpipe.python": platform.python_version(),
    }
