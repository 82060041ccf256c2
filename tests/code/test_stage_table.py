"""The stage table and the training config every rank resolves, on tiny literal data."""

from __future__ import annotations

import pytest

from components import data, tune
from components.config import load_config
from flows import stages
from flows.paths import Paths
from flows.stages import train_worker


def test_every_stage_module_has_run_and_the_table_names_catalog_paths():
    paths = Paths(".")
    for s in stages.STAGES:
        module = __import__(s.module, fromlist=["run"])
        assert callable(module.run), s.name
        for w in s.writes:
            assert paths.relative(getattr(paths, w)), (s.name, w)
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        stages.get("nope")


def test_torchrun_ranks_and_the_stage_resolve_the_same_tuned_config(tmp_path):
    """A rank started by torchrun directly reads params.yaml; resolve() adds the tuned parameters
    exactly as the train stage does, and only when they were tuned on this data."""
    cfg = load_config(None, ["data.source=sklearn:iris", "data.val_size=0.25"])
    paths = Paths(tmp_path)
    ds = data.ingest(cfg.data, cfg.seed)
    data.save_prepared(ds, paths.prepared)
    payload = {**tune.untuned(ds.meta.content_hash), "tuned": True, "overrides": {"train.epochs": 7, "train.lr": 0.01}}
    tune.write_best(paths.best_params, payload)
    resolved = train_worker.resolve(cfg, paths)
    assert (resolved.train.epochs, resolved.train.lr) == (7, 0.01)
    assert train_worker.resolve(resolved, paths) == resolved  # idempotent on the launcher's resolved config
    tune.write_best(paths.best_params, {**payload, "data_hash": "another"})
    with pytest.warns(UserWarning, match="tuned params ignored"):
        assert train_worker.resolve(cfg, paths) == cfg
