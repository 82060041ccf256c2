"""The model card (components/card.py) and the pure parts of `mlpipe lineage` (flows/lineage.py) on
literal facts: what a card says, that it fits the registry's description, why a version is not the
champion, DVC's record of the data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components import card
from flows import lineage


def facts(**over) -> dict:
    f = {
        "name": "mlpipe-toy",
        "version": "3",
        "variant": "fp32",
        "aliases": ["champion"],
        "champion": "3",
        "data": {
            "source": "csv:toy.csv",
            "kind": "tabular",
            "classes": ["a", "b", "rare"],
            "feature_shape": [4],
            "n_train": 230,
            "n_test": 58,
            "train_counts": {"a": 100, "b": 110, "rare": 20},
            "test_counts": {"a": 25, "b": 28, "rare": 5},
            "data_hash": "abc123",
            "value_range": None,
        },
        "metrics": {"test_accuracy": 0.91379, "test_f1_macro": 0.8, "test_roc_auc_ovr": 0.97},
        "metrics_source": "the evaluate stage",
        "cv": {"folds": 5, "accuracy_mean": 0.905, "accuracy_std": 0.012, "f1_macro_mean": 0.79, "f1_macro_std": 0.03},
        "per_class": card.per_class(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "rare"]),
        "decision": {"decision": "promoted", "reasons": ["accuracy 0.9138 >= floor 0.9000", "no current champion"]},
        "attributions": {
            "method": "permutation_importance",
            "samples": 58,
            "baseline_accuracy": 0.91,
            "top_features": [{"feature": "f2", "mean": 0.3, "std": 0.05}],
            "images": [
                {"title": "importance", "src": "get-artifact?path=explain/importance.png&run_uuid=r1", "href": "#/x"}
            ],
        },
        "provenance": {"pipeline_run_id": "p1", "register_run_id": "r1", "card_artifact": "runs:/r1/card/x.md"},
    }
    f.update(over)
    return f


def test_per_class_figures_by_hand():
    rows = card.per_class(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert [(r["class"], r["precision"], r["recall"], r["support"]) for r in rows] == [
        ("a", 0.5, 0.5, 2),
        ("b", pytest.approx(2 / 3), 1.0, 2),
        ("c", 0.0, 0.0, 1),
    ]


def test_card_says_data_metrics_with_spread_classes_decision_attributions_and_limits():
    text = card.render(facts())
    assert text.startswith("# Model card: mlpipe-toy v3 (fp32) `@champion`")  # not a bare @name: the UI links it
    assert "`csv:toy.csv` (tabular, feature shape [4])" in text and "`abc123`" in text
    assert "| accuracy | 0.9138 | 0.9050 +- 0.0120 |" in text
    assert "| macro F1 | 0.8000 | 0.7900 +- 0.0300 |" in text
    assert "| ROC AUC (one-vs-rest, macro) | 0.9700 | n/a |" in text  # no CV figure for it
    assert "| b | 0.667 | 1.000 | 0.800 | 2 |" in text
    assert "**promoted**" in text and "- no current champion" in text and "it is the champion now" in text
    assert "| f2 | 0.3000 | 0.0500 |" in text and "![importance](get-artifact?path=explain/importance.png" in text
    # known limits: the class with 5 test rows, the small class (20 < 0.5 x median 100), text
    assert "fewer than 10 test rows (their per-class figures rest on few rows): rare (5)" in text
    assert "training rows: rare (20)" in text and "raw text is not accepted" in text
    assert "`mlpipe lineage models:/mlpipe-toy/3`" in text


def test_card_of_a_rejected_version_and_of_one_without_cv():
    text = card.render(
        facts(
            aliases=[],
            champion="2",
            cv=None,
            decision={"decision": "rejected", "reasons": ["accuracy 0.8 < champion 0.9 - tolerance 0.002"]},
        )
    )
    assert "**rejected**" in text and "the champion now is v2" in text and "< champion 0.9" in text
    assert "CV did not run for this model" in text and "| accuracy | 0.9138 | n/a |" in text


def test_the_description_fits_the_registry_limit():
    many = [f"class-{i}" for i in range(120)]
    y = np.arange(120).repeat(3)
    big = facts(
        data={**facts()["data"], "classes": many, "test_counts": dict.fromkeys(many, 3)},
        per_class=card.per_class(y, np.roll(y, 1), many),
        compression={"table": "| variant |\n|---|\n" + "| x |\n" * 300, "row": {"accuracy": 0.9}},
    )
    full = card.render(big)
    assert len(full) > card.DESCRIPTION_LIMIT
    desc = card.description(big)
    assert len(desc) <= card.DESCRIPTION_LIMIT and desc.startswith("# Model card")
    small = card.description(facts())
    assert small == card.render(facts())  # the whole card when it fits


def test_why_a_version_is_not_the_champion():
    tags = {"mlpipe.decision": "rejected", "mlpipe.reasons": "accuracy 0.7000 < floor 0.9000"}
    assert (
        lineage.verdict(tags, "4", "2")
        == "not the champion (the champion is v2): rejected: accuracy 0.7000 < floor 0.9000"
    )
    assert lineage.verdict(tags, "4", None).startswith("not the champion (there is no champion): rejected")
    promoted = {"mlpipe.decision": "promoted", "mlpipe.reasons": "no current champion"}
    assert lineage.verdict(promoted, "2", "2") == "the champion: promoted: no current champion"


def test_dvc_record_of_the_prepared_data(tmp_path):
    lock = tmp_path / "dvc.lock"
    assert lineage.dvc_record(lock) is None
    lock.write_text(
        "schema: '2.0'\nstages:\n  ingest:\n    cmd: mlpipe stage ingest\n    outs:\n"
        "    - path: data/prepared\n      hash: md5\n      md5: 0f1e.dir\n      size: 1234\n      nfiles: 5\n"
    )
    assert lineage.dvc_record(lock) == {
        "file": str(lock),
        "stage": "ingest",
        "path": "data/prepared",
        "md5": "0f1e.dir",
        "size": 1234,
        "nfiles": 5,
    }


def test_the_experiment_link_opens_its_runs_as_model_training():
    from components import tracking

    assert tracking.experiment_url("http://h:5000/", "7") == (
        "http://h:5000/#/experiments/7/runs?viewStateShareKey=mlpipe-runs&workflowType=machine_learning"
    )
    assert tracking.experiment_url("sqlite:///x/mlflow.db", "7").startswith(
        "http://127.0.0.1:5000/#/experiments/7/runs?"
    )
    assert tracking.experiment_url("databricks", "7") is None
    view = json.loads(tracking.EXPERIMENT_TAGS[f"mlflow.sharedViewState.{tracking.RUNS_VIEW}"])
    assert {"metrics.`test_accuracy`", "metrics.`cv_accuracy_std`", "tags.`mlpipe.promoted`"} <= set(
        view["selectedColumns"]
    )


def test_card_of_a_text_model_names_its_tokenizer_limit():
    f = facts()
    f["data"] = {**f["data"], "kind": "text"}
    text = card.render(f)
    assert "tokenized by the tokenizer fitted on the training rows" in text and "raw text is not accepted" not in text
