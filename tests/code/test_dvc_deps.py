"""dvc.yaml lists, as deps of each stage, every project file whose code the stage runs, so that
`dvc repro` re-runs a stage after a change to that code instead of keeping stale outputs.

The code a stage runs is found from the source: its `run_<stage>` function in flows/stages.py
(the names it uses, the helpers it calls, the modules it imports), then every project module
those modules import, at any level of the file. flows/stages.py itself is followed per function,
not per module: its top-level imports serve all stages at once."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.conftest import REPO

# files a stage runs whose changes cannot change its outputs: parameters are deps through `params:`
# (and params.yaml must equal the config defaults, tests/code/test_config.py); the rest is error
# types, atomic file writing, MLflow logging and the command line.
NEUTRAL = {"components/config.py", "components/errors.py", "components/fileio.py", "components/tracking.py",
           "components/__init__.py", "flows/__init__.py", "flows/cli.py"}
STAGES_PY = "flows/stages.py"


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
        if f == STAGES_PY:
            continue  # analysed per function (stage_code), not as a whole module
        tree = ast.parse((REPO / f).read_text())
        todo += [p for m in _imports(tree).values() if (p := _file(m)) is not None]
    return seen


def stage_code(stage: str) -> set[str]:
    tree = ast.parse((REPO / STAGES_PY).read_text())
    top = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    module_names = _imports(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                                       type_ignores=[]))
    files, seen, todo = {STAGES_PY}, set(), [f"run_{stage}"]
    while todo:
        fn = top[todo.pop()]
        seen.add(fn.name)
        local = _imports(fn)
        for n in ast.walk(fn):
            if isinstance(n, ast.Name):
                if n.id in top and n.id not in seen:
                    todo.append(n.id)
                elif n.id in module_names and (p := _file(module_names[n.id])):
                    files.add(p)
        files |= {p for m in local.values() if (p := _file(m))}
    return _module_closure(files)


def test_every_stage_lists_the_code_it_runs_as_deps():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for stage, spec in dvc.items():
        deps = set(spec.get("deps", []))
        need = stage_code(stage) - NEUTRAL
        if need - deps:
            missing[stage] = sorted(need - deps)
    assert not missing, f"dvc.yaml: stages that do not list code they run as deps: {missing}"


def test_the_dependency_finder_follows_helpers_local_imports_and_module_imports():
    """The finder itself, on stages whose code paths are known."""
    train = stage_code("train")
    assert {"flows/train_worker.py", "components/engine.py", "components/checkpoint.py", "components/tune.py"} <= train
    assert "components/compress.py" not in train and "components/validate.py" not in train
    augment = stage_code("augment")  # _preview is a helper in flows/stages.py
    assert {"components/augment.py", "components/data.py"} <= augment and "components/engine.py" not in augment
