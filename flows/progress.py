"""What a person watching a run sees, and the time budget's state on disk.

- say / clock: a line on stderr, durations as 1m05s.
- Stages: one line per stage as it starts and ends (i of n, elapsed, ETA from the plan).
- BudgetRecord: .mlpipe/budget.json, a budgeted run's start, seconds spent and per-stage decisions,
  kept up to date while it runs; a re-run of the same command after a kill or an interrupt resumes
  it (same decisions, so cached stages, the Optuna study and the checkpoints are reused) and spends
  only the budget left.
- probe_epoch: one epoch's time of the configured model on the prepared data."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.fileio import write_json

# a killed or interrupted budgeted run is resumed by the same command started within this long (or within
# the budget, if longer) of its last sign of life; later (the next scheduled run, say), a fresh budget starts
RESUME_WITHIN_S = 3600.0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class Stages:
    """Stage lines: '[5/11] tune (planned 3m10s) | elapsed 0m42s | ETA 4m05s'."""

    names: tuple[str, ...]
    t0: float = field(default_factory=time.monotonic)
    planned: dict[str, float] = field(default_factory=dict)  # stage -> planned seconds (a budget's plan)
    used: dict[str, float] = field(default_factory=dict)
    offset: float = 0.0  # seconds spent by earlier attempts of a resumed budgeted run
    _started: float = 0.0

    def elapsed(self) -> float:
        return self.offset + time.monotonic() - self.t0

    def start(self, name: str) -> None:
        self._started = time.monotonic()
        i = self.names.index(name) + 1
        plan = f" (planned {clock(self.planned[name])})" if name in self.planned else ""
        left = sum(v for k, v in self.planned.items() if k not in self.used and k in self.names[i - 1 :])
        if "register" not in self.used:  # evaluate, explain and register: planned together as the tail
            left += self.planned.get("tail", 0.0)
        eta = f" | ETA {clock(left)}" if self.planned else ""
        say(f"[{i}/{len(self.names)}] {name}{plan} | elapsed {clock(self.elapsed())}{eta}")

    def end(self, name: str, note: str = "") -> float:
        took = time.monotonic() - self._started
        self.used[name] = took
        plan = f" of {clock(self.planned[name])} planned" if name in self.planned else ""
        say(f"      {name} done in {clock(took)}{plan}{f'; {note}' if note else ''}")
        return took


def budget_key(params: str, overrides: list[str], budget_s: float, root: Path) -> str:
    """Names a budgeted command: the same params file contents, overrides and budget in the same folder."""
    p = Path(params)
    text = p.read_text() if p.exists() else ""
    material = json.dumps([text, list(overrides), budget_s, str(root)])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


class BudgetRecord:
    """.mlpipe/budget.json of one budgeted run: {key, budget_s, spent_s, started, state, decisions,
    finished, costs}.
    A background thread writes spent_s every `every` seconds, so a kill loses at most that much."""

    def __init__(self, path: Path, key: str, budget_s: float, started: float | None = None, every: float = 2.0):
        self.path, self.key, self.budget_s, self.every = Path(path), key, budget_s, every
        old = self._read()
        fresh = old is not None and time.time() - float(old.get("updated", 0)) < max(RESUME_WITHIN_S, budget_s)
        self.resumed = bool(fresh and old.get("key") == key and old.get("state") in ("running", "interrupted"))
        self.spent_before = float(old["spent_s"]) if self.resumed else 0.0
        self.decisions: dict = dict(old.get("decisions", {})) if self.resumed else {}
        self.finished: list[str] = list(old.get("finished", [])) if self.resumed else []  # stages that ran to the end
        self.costs: dict | None = old.get("costs") if self.resumed else None  # measured seconds (budget.Costs)
        self.attempts = int(old.get("attempts", 1)) + 1 if self.resumed else 1
        self.started = old["started"] if self.resumed else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # the budget counts from the command's start (started, epoch seconds): start-up is spent too
        self._t0 = time.monotonic() - (max(0.0, time.time() - started) if started else 0.0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.state = "running"
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self._t0

    def left(self) -> float:
        return self.budget_s - self.spent()

    def save(self) -> None:
        with self._lock:
            write_json(
                self.path,
                {
                    "key": self.key,
                    "budget_s": self.budget_s,
                    "spent_s": round(self.spent(), 2),
                    "updated": round(time.time(), 1),
                    "started": self.started,
                    "attempts": self.attempts,
                    "state": self.state,
                    "decisions": self.decisions,
                    "finished": self.finished,
                    "costs": self.costs,
                },
            )

    def decide(self, stage: str, make) -> dict:
        """The plan made before a stage (a dict): on a resumed run, the recorded one if the stage had
        finished (its cached result, made with that config, is reused); else make(), recorded."""
        if stage not in self.decisions or stage not in self.finished:
            self.decisions[stage] = make()
            self.save()
        return self.decisions[stage]

    def finish(self, stage: str) -> None:
        if stage not in self.finished:
            self.finished.append(stage)
            self.save()

    def __enter__(self) -> BudgetRecord:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

        def tick():
            while not self._stop.wait(self.every):
                self.save()

        self._thread = threading.Thread(target=tick, name="mlpipe-budget", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # an interrupt (Ctrl-C, a stop signal) can be resumed; a finished or failed run starts afresh next time
        self.state = "interrupted" if kind is not None and issubclass(kind, KeyboardInterrupt) else "done"
        self.save()


def probe_epoch(cfg, ds, max_rows: int = 2048) -> float:
    """Seconds of one training epoch (validation included) of the configured model on the
    prepared data's training rows: two epochs on up to max_rows rows, the second timed (the
    first pays start-up), scaled to the full training rows."""
    import numpy as np

    from components import models, train, tune

    m = ds.meta
    n = len(ds.y_train)
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(n, size=min(n, max_rows), replace=False))
    pcfg = tune.apply_overrides(
        cfg, {"train.epochs": 2, "train.checkpoint_every": 0, "train.val_every": 1, "train.keep": "last"}
    )
    recipe = train.Recipe(pcfg, ds.X_train, ds.y_train, m.kind, m.value_range, rows=rows)
    _, hist = recipe.fit(models.spec_for(pcfg.model, m))
    # the second epoch's training steps (the first pays start-up), plus ~20% for validation and the loop
    return hist.train_seconds[-1] * 1.2 * n / len(rows)
