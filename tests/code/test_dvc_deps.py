"""dvc.yaml lists, as deps of each stage, every project file whose code the stage runs, so that
`dvc repro` re-runs a stage after a change to that code instead of keeping stale outputs.

The code a stage runs is found from the source: its module flows/stages/<stage>.py, then every
project module those modules import, at any level of the file (imports inside functions too).

dvc.yaml's `params` and `outs` are checked against the stage table (flows/stages/__init__.py):
the config keys each stage reads and the catalog paths (flows/paths.py) it writes."""

from __future__ import annotations

import ast

import yaml

from tests.conftest import REPO

# files a stage runs whose changes cannot change its outputs: parameters are deps through `params:`
# (and params.yaml must equal the config defaults, tests/code/test_config.py); the rest is error
# types, atomic file writing, MLflow logging and the command line.
NEUTRAL = {
    "components/config.py",
    "components/errors.py",
    "components/fileio.py",
    "components/tracking.py",
    "components/__init__.py",
    "flows/__init__.py",
    "flows/cli.py",
    "flows/stages/__init__.py",
}


def _file(module: str) -> str | None:
    path = module.replace(".", "/") + ".py"
    return path if (REPO / path).exists() else None


def _imports(node: ast.AST) -> dict[str, str]:
    """Project modules imported anywhere under node: {local name: module}."""
    found = {}
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in ("components", "flows"):
            for a in n.names:  # `from components import data` (a module) or `from components.data import X`
                found[a.asname or a.name] = f"{n.module}.{a.name}" if _file(f"{n.module}.{a.name}") else n.module
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] in ("components", "flows"):
                    found[a.asname or a.name] = a.name
    return found


def _module_closure(files: set[str]) -> set[str]:
    todo, seen = list(files), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        tree = ast.parse((REPO / f).read_text())
        todo += [p for m in _imports(tree).values() if (p := _file(m)) is not None]
    return seen


def stage_code(stage: str) -> set[str]:
    return _module_closure({f"flows/stages/{stage}.py"})


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_lists_the_code_it_runs_as_deps():
    missing = {}
    for stage, spec in _dvc().items():
        deps = set(spec.get("deps", []))
        need = stage_code(stage) - NEUTRAL
        if need - deps:
            missing[stage] = sorted(need - deps)
    assert not missing, f"dvc.yaml: stages that do not list code they run as deps: {missing}"
    gone = {
        stage: d
        for stage, spec in _dvc().items()
        for d in spec.get("deps", [])
        if not (REPO / d).exists() and d.endswith(".py")
    }
    assert not gone, f"dvc.yaml: deps that no longer exist (dvc repro fails on them): {gone}"


def test_the_dependency_finder_follows_helpers_local_imports_and_module_imports():
    """The finder itself, on stages whose code paths are known."""
    train = stage_code("train")
    assert {
        "flows/stages/train_worker.py",
        "components/engine.py",
        "components/checkpoint.py",
        "components/tune.py",
    } <= train
    assert "components/compress.py" not in train and "components/validate.py" not in train
    augment = stage_code("augment")  # matplotlib's preview is imported inside a function
    assert {"components/augment.py", "components/data.py"} <= augment and "components/engine.py" not in augment


def _paths(entries) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


def test_dvc_stages_params_and_outs_are_the_stage_table():
    """One table: dvc.yaml names the same stages, in the same order, reading the same config keys
    and writing the same catalog paths as flows/stages/__init__.py says."""
    from flows.paths import Paths
    from flows.stages import STAGES

    paths = Paths(REPO)
    dvc = _dvc()
    assert list(dvc) == [s.name for s in STAGES]
    for s in STAGES:
        spec = dvc[s.name]
        assert spec["cmd"].split("#")[0].strip() == f"mlpipe stage {s.name}"
        assert list(spec.get("params") or []) == list(s.reads), f"{s.name}: dvc.yaml params differ from the stage table"
        written = _paths(spec.get("outs")) | _paths(spec.get("metrics")) | _paths(spec.get("plots"))
        assert written == {paths.relative(getattr(paths, w)) for w in s.writes}, f"{s.name}: dvc.yaml outs differ"


def test_every_config_key_a_stage_reads_exists():
    from components.config import load_config
    from flows.pipeline import config_slice
    from flows.stages import STAGES

    cfg = load_config(None)
    for s in STAGES:
        assert set(config_slice(cfg, s.reads)) == set(s.reads)
