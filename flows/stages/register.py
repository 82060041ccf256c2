"""register: every accepted variant of models/model.pt registered as a model version (tag `variant`),
one chosen by promote.objective, and the alias @champion moved to it when it passes the gate.

The current champion is re-measured on the current test set, under a lock: a file lock on one
machine and, when a Prefect server is configured, a cluster-wide promotion slot (flows/locks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components import data, gate, measure, registry, textdata, tracking
from components.config import Config
from components.fileio import file_lock, write_json
from flows import gate_inputs
from flows.locks import promotion_slot
from flows.paths import Paths
from flows.provenance import git_commit
from flows.stages.compress import FIGURES, file_hash


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    """Log the trained model and its accepted compressed variants as pyfuncs, register each as a
    version (tag `variant`), pick one by promote.objective, and move @champion to it if it passes
    the gate. The gate trusts no report file: the chosen version and the current champion are both
    measured on the current test set, as registered, under a lock. reports/promotion.json is
    written from the registry afterwards."""
    with promotion_slot(), tracking.stage_run("register", parent) as run_id:
        # mapped: the training split stays on disk (a sample of its rows is the drift reference); the test
        # split is read once, whole, as every version the gate weighs is scored on it
        ds = data.load_prepared(paths.prepared, mmap=True)
        ds.X_test, ds.y_test = np.array(ds.X_test), np.array(ds.y_test)
        metrics = json.loads(paths.eval_metrics.read_text())
        name = cfg.promote.model_name or f"mlpipe-{data.dataset_name(ds.meta.source)}"
        rows, table_note = candidates(
            paths, file_hash(paths.model_file), ds.meta.content_hash, metrics["test_accuracy"]
        )
        base_tags = {
            "mlpipe.run_id": parent or run_id,
            "mlpipe.data_hash": ds.meta.content_hash,
            "mlpipe.git_commit": git_commit(paths.root),
        }
        # a text model takes raw strings (its tokenizer travels inside the package): the gate measures that;
        # its drift reference is training rows of token ids, which `mlpipe score` embeds as it embeds new texts
        X_test, tokenizer, reference = ds.X_test, None, ds.X_train
        if ds.meta.kind == "text":
            X_test, tokenizer = textdata.model_input(paths.prepared), textdata.tokenizer_file(paths.prepared)
        with file_lock(paths.promote_lock):  # gate + alias move: last writer wins otherwise
            interrupted = registry.decide_interrupted(name)  # versions a killed register stage left undecided
            # same file on the same data (a cached re-run): the existing version, no duplicate
            versions = {
                r["variant"]: register_variant(name, r, X_test[:5], base_tags, reference, tokenizer)
                for r in rows
                if r["accepted"]
            }
            chosen, selection = measure.choose(rows, cfg.promote.objective)
            version, uri = versions[chosen["variant"]]
            acc = _accuracy(uri, ds, X_test)
            champ_acc, notes = None, []
            if abs(acc - chosen["accuracy"]) > 1e-9:
                notes.append(
                    f"{chosen['variant']} measured {acc:.4f} as registered; its report said {chosen['accuracy']:.4f}"
                )
            # the gate's inputs (flows/gate_inputs.py): fold scores, the best baseline; the network's fold
            # scores stay on its versions for the gates of later runs
            p = cfg.promote
            net_folds = gate_inputs.network_folds(paths, ds.meta)
            for v, _ in versions.values():
                registry.tag_version(name, v, gate_inputs.fold_tags(*net_folds))
            challenger = gate.Scores(f"v{version} ({chosen['variant']})", acc, *net_folds)
            base, base_note = gate_inputs.load_baseline(paths, ds)
            notes += [base_note] if base_note else []
            passed_over = None  # (network version, comparison) when the baseline goes to the gate instead
            if base is not None and p.allow_baseline:
                pick = gate.choose(challenger, base.scores, p.beat_baseline_by, p.fold_confidence)
                if pick.verdict != "win":
                    passed_over = (version, pick)
                    version, uri = gate_inputs.register_baseline(name, base, X_test[:5], base_tags)
                    acc = _accuracy(uri, ds, X_test)  # as registered, loaded through its pyfunc
                    challenger = gate.Scores(
                        f"v{version} (baseline {base.name})", acc, base.scores.folds, base.scores.fold_key
                    )
                    selection = f"allow_baseline: network v{passed_over[0]} does not beat baseline {base.name}"
                    notes.append(f"network v{passed_over[0]} does not beat this baseline: {pick.text}")
            current = registry.champion_version(name)
            champ_v = None if current is None else str(current.version)
            champion = None
            if champ_v == version:
                champ_acc = acc
                champion = gate.Scores(f"champion v{champ_v}", acc, challenger.folds, challenger.fold_key)
                notes.append(f"v{version} is already the champion")
            elif champ_v is not None:
                try:
                    champ_acc = _accuracy(f"models:/{name}/{champ_v}", ds, X_test)
                    champion = gate_inputs.champion_scores(current, champ_acc)
                except Exception as e:  # noqa: BLE001 - an incompatible champion is reported, not fatal
                    notes.append(
                        f"champion v{champ_v} cannot score the current test set ({type(e).__name__}); treated as absent"
                    )
            decision = gate.decide(
                challenger,
                champion,
                p.accuracy_floor,
                p.tolerance,
                baseline=None if base is None or passed_over else base.scores,
                beat_baseline_by=p.beat_baseline_by,
                confidence=p.fold_confidence,
            )
            decision.reasons += notes
            if decision.promote and champ_v != version:
                registry.set_champion(name, version)
            table = (
                measure.markdown_table(rows)
                if len(rows) > 1
                else "fp32 only" + (f" ({table_note})" if table_note else "")
            )
            registry.tag_version(
                name,
                version,
                {
                    "mlpipe.decision": "promoted" if decision.promote else "rejected",
                    "mlpipe.reasons": "; ".join(decision.reasons),
                    "mlpipe.test_accuracy_measured": f"{acc:.6f}",
                    "mlpipe.champion_before": champ_v or "none",
                    "mlpipe.champion_accuracy_remeasured": "n/a" if champ_acc is None else f"{champ_acc:.6f}",
                    "mlpipe.objective": cfg.promote.objective,
                    "mlpipe.selection": selection,
                    "mlpipe.variant_table": table,
                    "mlpipe.rule": decision.rule,
                    "mlpipe.comparisons": json.dumps({k: c.to_dict() for k, c in decision.comparisons.items()}),
                    **gate_inputs.fold_tags(challenger.folds, challenger.fold_key),
                    **gate_inputs.baseline_tags(base),
                },
            )
            if passed_over is not None:  # registered, not promoted: the baseline beat it (allow_baseline)
                registry.tag_version(
                    name,
                    passed_over[0],
                    {
                        "mlpipe.decision": "rejected",
                        "mlpipe.rule": f"baseline-{passed_over[1].rule}",
                        "mlpipe.reasons": f"does not beat the best baseline (promote.allow_baseline: the baseline "
                        f"v{version} went to the gate instead): {passed_over[1].text}",
                    },
                )
            for v, _ in versions.values():
                if v != version and (passed_over is None or v != passed_over[0]):
                    registry.tag_version(
                        name,
                        v,
                        {
                            "mlpipe.decision": "not chosen",
                            "mlpipe.reasons": f"promote.objective {cfg.promote.objective} chose "
                            f"{chosen['variant']} v{versions[chosen['variant']][0]}",
                        },
                    )
            record = registry.promotion_record(name, version)  # what the registry now says
        rejected = {r["variant"]: r["reason"] for r in rows if not r["accepted"]}
        tracking.set_tags({f"mlpipe.rejected.{v}": why for v, why in rejected.items()})
        tracking.log_dict(
            {
                "objective": cfg.promote.objective,
                "selection": selection,
                "rows": rows,
                "versions": {v: ver for v, (ver, _) in versions.items()},
            },
            "register/variants.json",
        )
        out = {
            "variant": chosen["variant"],
            "selection": selection,
            "rejected": rejected,
            "variants": {v: ver for v, (ver, _) in versions.items()},
            "model_uri": uri,
            "champion_before": champ_v,
            "champion_accuracy": champ_acc,
            "test_accuracy": acc,
            "data_hash": ds.meta.content_hash,
            "interrupted_versions": interrupted,
            **gate_inputs.outcome(decision, base, passed_over, challenger),
            **record,
        }
        tracking.set_tags({"mlpipe.registered_version": version, "mlpipe.promoted": record["promoted"]})
        write_json(paths.promotion, out)  # atomic, after the registry change
        tracking.log_artifact(paths.promotion, "register")
        from flows.stages.cards import write_cards  # each version's model card, after the decision

        write_cards(paths, ds, name, versions, rows, run_id, also=version)
        return out


def _accuracy(uri: str, ds: data.Prepared, X_test=None) -> float:
    """Test accuracy of a registered version, loaded as a user loads it (X_test: its input, when not
    ds.X_test: a text model's raw strings)."""
    pred = registry.load(uri).predict(ds.X_test if X_test is None else X_test)
    return float((pred["label"].to_numpy() == ds.y_test).mean())


def candidates(paths: Paths, model_hash: str, data_hash: str, fp32_accuracy: float) -> tuple[list[dict], str | None]:
    """The variant table for this model.pt on this data, or only the fp32 row (with a note) when
    the compress stage has not run for them."""
    table = paths.compress_table
    note = None
    if table.exists():
        t = json.loads(table.read_text())
        if t.get("model_hash") == model_hash and t.get("data_hash") == data_hash:
            if t["rows"]:
                return t["rows"], None
            note = "compress.enabled was false"  # the compress stage measured nothing (flows/stages/compress.py)
        else:
            note = "variant table is for another model.pt or data; only fp32 considered"
    size = paths.model_file.stat().st_size
    fp32 = {
        "variant": "fp32",
        "file": str(paths.model_file),
        "accuracy": fp32_accuracy,
        "accepted": True,
        "size_bytes": size,
        "latency_b1_ms": float("inf"),
        "latency_b256_ms": float("inf"),
        "reason": "no variant table",
    }
    return [fp32], note


def version_tags(row: dict) -> dict:
    tags = {"variant": row["variant"], "test_accuracy": f"{row['accuracy']:.6f}"}
    tags.update(
        {f"mlpipe.{k}": (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in FIGURES[1:] if k in row}
    )
    if "method" in row:
        tags["mlpipe.method"] = row["method"]
    return tags


def register_variant(
    name: str, row: dict, example, base_tags: dict, reference=None, tokenizer: Path | None = None
) -> tuple[str, str]:
    """Register one accepted variant (or find the version already holding this exact file on
    this data) -> (version, model URI). tokenizer: a text model's, shipped inside the package."""
    h = file_hash(Path(row["file"]))
    existing = registry.find_version(name, {"mlpipe.model_hash": h, "mlpipe.data_hash": base_tags["mlpipe.data_hash"]})
    if existing is not None:
        return str(existing.version), f"models:/{name}/{existing.version}"
    uri = registry.log_model(Path(row["file"]), example, reference, tokenizer)  # reference: rows for drift checks
    version = registry.register(uri, name, {**base_tags, "mlpipe.model_hash": h, **version_tags(row)})
    return version, uri
