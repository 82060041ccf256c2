"""`mlpipe lineage MODEL_URI`: why a registered version is what it is, from what is recorded.

The chain, joined from the registry (the version's tags), the pipeline run (mlpipe.run_id) and its
stage runs, and the project folder (dvc.lock, the workspace files when they are this version's):

    source -> data (hash, DVC's record) -> validation -> [baseline] -> tuning -> cv -> training
    -> evaluation -> attributions -> compression -> promotion -> card

A stage Prefect reused from an earlier pipeline run (its cache) has no run under this pipeline run;
its run is then looked up by the data hash (attributions: by the model hash) and marked "cached".
gather() reads (registry, tracking, files); render() is the text of what it found."""

from __future__ import annotations

import json
import time
from pathlib import Path

from components import data, registry, tracking
from components.errors import MlpipeError
from flows.paths import Paths

# (link, the stage whose run records it)
LINKS = (
    ("source", "ingest"),
    ("data", "ingest"),
    ("validation", "validate"),
    ("baseline", "baseline"),
    ("tuning", "tune"),
    ("cv", "cv"),
    ("training", "train"),
    ("evaluation", "evaluate"),
    ("attributions", "explain"),
    ("compression", "compress"),
    ("promotion", "register"),
    ("card", "register"),
)
OPTIONAL = {"baseline"}  # links shown only when their stage ran


def when(ms: int | None) -> str | None:
    return None if not ms else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _f(v, digits: int = 4) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def dvc_record(lock: Path, out: str = "data/prepared") -> dict | None:
    """dvc.lock's record of the ingest stage's output (DVC's own hash of the folder), if there is one."""
    import yaml

    if not Path(lock).exists():
        return None
    stages = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages") or {}
    for o in (stages.get("ingest") or {}).get("outs") or []:
        if o.get("path") == out:
            return {
                "file": str(lock),
                "stage": "ingest",
                "path": out,
                **{k: o.get(k) for k in ("md5", "size", "nfiles")},
            }
    return None


# ---------------------------------------------------------------- gathering


def resolve(uri: str) -> tuple[str, str, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> (name, version, alias); anything else is an error."""
    ref = registry.parse_uri(uri)
    if ref.name is None:
        raise MlpipeError(f"{uri}: lineage needs a registered model, models:/NAME@ALIAS or models:/NAME/VERSION")
    ref = registry.resolve(uri)
    return ref.name, str(ref.version), ref.alias


def stage_runs(children: list[dict]) -> dict[str, dict]:
    """The run of each stage among a pipeline run's children: the last FINISHED one, else the last one
    (a stage Prefect retried has one run per attempt)."""
    out: dict[str, dict] = {}
    for r in children:  # oldest first
        stage = r["tags"].get("mlpipe.stage")
        if stage and (r["status"] == "FINISHED" or out.get(stage, {}).get("status") != "FINISHED"):
            out[stage] = r
    return out


def _cached_run(exp: str, stage: str, tags: dict, before_ms: int | None) -> dict | None:
    """The newest FINISHED run of a stage with these tags that started before the pipeline run."""
    for r in tracking.find_runs(exp, {"mlpipe.stage": stage, **tags}, max_results=20):
        if before_ms is None or (r["start_ms"] or 0) <= before_ms:
            return r
    return None


class _Gatherer:
    def __init__(self, uri: str, paths: Paths, tracking_uri: str):
        self.uri, self.paths, self.tracking_uri = uri, paths, tracking_uri
        self.name, self.version, self.alias = resolve(uri)
        self.info = registry.version_info(self.name, self.version)
        self.tags = self.info["tags"]
        self.data_hash = self.tags.get("mlpipe.data_hash")
        self.pipeline = tracking.run_record(self.tags.get("mlpipe.run_id", ""))
        register = tracking.run_record(self.info["run_id"] or "")
        self.exp = (self.pipeline or register or {}).get("experiment_id")
        self.runs = stage_runs(tracking.child_runs(self.pipeline["run_id"], self.exp)) if self.pipeline else {}
        self.cached: set[str] = set()

    def url(self, run_id: str | None) -> str | None:
        return tracking.run_url(self.tracking_uri, run_id) if run_id else None

    def run(self, stage: str, extra: dict | None = None) -> dict | None:
        """The stage's run under the pipeline run, else the one Prefect's cache reused."""
        if stage in self.runs:
            return self.runs[stage]
        if (
            self.exp
            and self.data_hash
            and stage in ("ingest", "validate", "tune", "cv", "train", "explain", "baseline")
        ):
            before = (self.pipeline or {}).get("start_ms")
            found = _cached_run(self.exp, stage, {"mlpipe.data_hash": self.data_hash, **(extra or {})}, before)
            if found:
                self.cached.add(stage)
                self.runs[stage] = found
                return found
        return None

    def link(self, name: str, stage: str, run: dict | None, summary: str, facts: dict, **more) -> dict:
        status = more.pop("status", None) or ("cached" if stage in self.cached else "ok" if run else "missing")
        out = {
            "link": name,
            "stage": stage,
            "status": status,
            "summary": summary,
            "run_id": run["run_id"] if run else None,
            "url": self.url(run["run_id"]) if run else None,
            "artifacts": tracking.list_artifacts(run["run_id"]) if run and more.pop("artifacts", True) else [],
            "files": more.pop("files", []),
            "facts": facts,
        }
        if stage in self.cached:
            out["note"] = f"the {stage} stage was reused from an earlier pipeline run (Prefect cache); matched by hash"
        out.update(more)
        return out


def _source(g: _Gatherer) -> dict:
    r = g.run("ingest")
    p, m = (r or {}).get("params", {}), (r or {}).get("metrics", {})
    source = p.get("source") or (g.pipeline or {}).get("tags", {}).get("mlpipe.source")
    summary = (
        f"{source}: {p.get('kind')} {p.get('feature_shape')}, {p.get('n_classes')} classes; "
        f"{int(m.get('n_train', 0))} train / {int(m.get('n_test', 0))} test rows"
        if r
        else f"{source} (no ingest run found)"
    )
    facts = {"source": source, **p, **m, "datasets": (r or {}).get("datasets", [])}
    return g.link("source", "ingest", r, summary, facts)


def _data(g: _Gatherer) -> dict:
    r = g.run("ingest")
    recorded = (r or {}).get("tags", {}).get("mlpipe.data_hash")
    dvc = dvc_record(g.paths.dvc_lock)
    files, notes = [], []
    try:
        here = data.load_meta(g.paths.prepared).content_hash
    except (OSError, ValueError, KeyError, TypeError):
        here = None
    if here == g.data_hash:
        files.append(str(g.paths.prepared / "meta.json"))
    elif here:
        notes.append(f"the workspace's data/prepared holds other data (hash {here})")
    if dvc:
        files.append(dvc["file"])
        where = f"DVC: dvc.lock records data/prepared md5 {dvc['md5']} ({dvc['nfiles']} files, {dvc['size']} bytes)"
        where += "" if here == g.data_hash else ", for the workspace's data, not necessarily this version's"
    else:
        where = f"DVC: no dvc.lock in {g.paths.root} (the pipeline ran through mlpipe run, not dvc repro)"
    agree = (
        "the ingest run recorded the same hash" if recorded == g.data_hash else f"the ingest run recorded {recorded}"
    )
    summary = f"hash {g.data_hash} ({agree}); {where}" + "".join(f"; {n}" for n in notes)
    facts = {"data_hash": g.data_hash, "ingest_data_hash": recorded, "workspace_data_hash": here, "dvc": dvc}
    return g.link("data", "ingest", r, summary, facts, files=files, artifacts=False)


def _validation(g: _Gatherer) -> dict:
    r = g.run("validate")
    t, m = (r or {}).get("tags", {}), (r or {}).get("metrics", {})
    summary = (
        f"{t.get('mlpipe.validation', 'unknown')}: {int(m.get('expectations', 0))} expectations, "
        f"{int(m.get('failed', 0))} failed"
        if r
        else "no validation run found"
    )
    return g.link("validation", "validate", r, summary, {"result": t.get("mlpipe.validation"), **m})


def _baseline(g: _Gatherer) -> dict | None:
    r = g.run("baseline")
    if r is None:
        return None
    m, best = r["metrics"], r["tags"].get("mlpipe.baseline_best")
    if not best:
        return g.link("baseline", "baseline", r, "no baseline models (baseline.enabled false)", {}, status="disabled")
    summary = (
        f"best {best}: test accuracy {_f(m.get('best_test_accuracy'))}, "
        f"CV {_f(m.get('best_cv_accuracy_mean'))} (the gate's rule: see promotion)"
    )
    return g.link("baseline", "baseline", r, summary, {"best": best, **m})


def _tuning(g: _Gatherer) -> dict:
    r = g.run("tune")
    p, m = (r or {}).get("params", {}), (r or {}).get("metrics", {})
    best = {k.removeprefix("best."): v for k, v in p.items() if k.startswith("best.")}
    if r and "study" not in p:
        return g.link("tuning", "tune", r, "not tuned (tune.enabled false)", {}, status="disabled")
    summary = (
        f"study {p['study']}: best val accuracy {_f(m.get('best_val_accuracy'))} "
        f"({int(m.get('trials_complete', 0))} complete + {int(m.get('trials_pruned', 0))} pruned trials); "
        f"best params {json.dumps(best, sort_keys=True)}"
        if r
        else "no tune run found"
    )
    return g.link("tuning", "tune", r, summary, {**p, **m})


def _cv(g: _Gatherer) -> dict:
    r = g.run("cv")
    p, m = (r or {}).get("params", {}), (r or {}).get("metrics", {})
    if r and "folds" not in p:
        return g.link("cv", "cv", r, "no cross-validation (cv.enabled false)", {}, status="disabled")
    folds = [c["run_id"] for c in tracking.child_runs(r["run_id"], g.exp)] if r else []
    summary = (
        f"accuracy {_f(m.get('cv_accuracy_mean'))} +- {_f(m.get('cv_accuracy_std'))} over {p.get('folds')} folds"
        if r
        else "no cv run found"
    )
    return g.link("cv", "cv", r, summary, {**p, **m}, fold_run_ids=folds)


def _training(g: _Gatherer) -> dict:
    r = g.run("train")
    p, m = (r or {}).get("params", {}), (r or {}).get("metrics", {})
    commit = g.tags.get("mlpipe.git_commit") or (g.pipeline or {}).get("tags", {}).get("mlpipe.git_commit")
    summary = (
        f"{p.get('arch')}, {p.get('n_params')} parameters, {p.get('train.epochs')} epochs on {p.get('world_size')} "
        f"rank(s), best val accuracy {_f(m.get('best_val_accuracy'))}; git {commit}; "
        f"config: config.json of pipeline run {(g.pipeline or {}).get('run_id')}"
        if r
        else f"no train run found; git {commit}"
    )
    facts = {"git_commit": commit, **p, **m}
    if g.pipeline:
        facts["config_artifact"] = f"runs:/{g.pipeline['run_id']}/config.json"
    return g.link("training", "train", r, summary, facts)


def _evaluation(g: _Gatherer) -> dict:
    r = g.run("evaluate")
    m = (r or g.pipeline or {}).get("metrics", {})
    m = {k: v for k, v in m.items() if k.startswith("test_")}
    summary = (
        f"test accuracy {_f(m.get('test_accuracy'))}, macro F1 {_f(m.get('test_f1_macro'))}, "
        f"ROC AUC {_f(m.get('test_roc_auc_ovr'))}"
    )
    if r is None and m:
        return g.link(
            "evaluation", "evaluate", None, summary + " (from the pipeline run; stage cached)", m, status="cached"
        )
    return g.link("evaluation", "evaluate", r, summary, m)


def _fp32_hash(g: _Gatherer) -> str | None:
    """The model hash of the fp32 model this version is (or was made from): the attributions are of it."""
    if g.tags.get("variant", "fp32") == "fp32":
        return g.tags.get("mlpipe.model_hash")
    found = registry.versions_with_tags(g.name, {"mlpipe.run_id": g.tags.get("mlpipe.run_id"), "variant": "fp32"})
    return found[0]["tags"].get("mlpipe.model_hash") if found else None


def _attributions(g: _Gatherer) -> dict:
    model_hash = _fp32_hash(g)
    r = g.run("explain", {"mlpipe.model_hash": model_hash} if model_hash else None)
    if r is not None and model_hash and r["tags"].get("mlpipe.model_hash") != model_hash:
        r = None  # the pipeline's explain run is of another model.pt (cannot happen unless files were replaced)
    p, m = (r or {}).get("params", {}), (r or {}).get("metrics", {})
    if r and p.get("enabled") == "False":
        return g.link("attributions", "explain", r, "not computed (explain.enabled false)", {}, status="disabled")
    of = "" if g.tags.get("variant", "fp32") == "fp32" else " (of the fp32 model this variant was made from)"
    files = []
    s = _json(g.paths.explain_summary)
    if s and s.get("model_hash") == model_hash and s.get("data_hash") == g.data_hash:
        files.append(str(g.paths.explain_summary))
    summary = (
        f"{int(m.get('samples', 0))} test rows, {int(m.get('evaluations', 0))} model evaluations, "
        f"{_f(m.get('seconds'), 2)} s{of}"
        if r
        else "no explain run found for this model"
    )
    return g.link("attributions", "explain", r, summary, {**p, **m, "model_hash": model_hash}, files=files)


def _compression(g: _Gatherer) -> dict:
    r = g.run("compress")
    t, variant = g.tags, g.tags.get("variant", "fp32")
    row = {k.removeprefix("mlpipe."): v for k, v in t.items() if k.startswith("mlpipe.") and k[7:] in _FIGURES}
    kids = {c["tags"].get("variant"): c for c in tracking.child_runs(r["run_id"], g.exp)} if r else {}
    variant_run = kids.get(variant)
    summary = (
        f"variant {variant} ({t.get('mlpipe.method', 'trained model')}): accuracy {_f(t.get('test_accuracy'))}, "
        f"{row.get('size_bytes', 'n/a')} bytes, {_f(row.get('latency_b1_ms'), 3)} ms at batch 1; "
        + (f"{len(kids)} variants measured" if kids else "no compression variants (compress.enabled false)")
    )
    facts = {"variant": variant, "row": row, "variants": sorted(k for k in kids if k)}
    if variant_run:
        facts["variant_run_id"] = variant_run["run_id"]
        facts["variant_accepted"] = variant_run["tags"].get("mlpipe.accepted")
        facts["variant_reason"] = variant_run["tags"].get("mlpipe.reason")
    return g.link("compression", "compress", r, summary, facts)


_FIGURES = {"accuracy_drop", "f1_macro", "size_bytes", "gzip_bytes", "params", "nonzeros", "sparsity", "macs"}
_FIGURES |= {"latency_b1_ms", "latency_b256_ms", "peak_rss_mb"}


def _register_run(g: _Gatherer) -> dict | None:
    rid = g.tags.get("mlpipe.register_run_id") or g.info["run_id"]
    return tracking.run_record(rid) if rid else None


def _promotion(g: _Gatherer, champion: str | None) -> dict:
    t, r = g.tags, _register_run(g)
    decided = t.get("mlpipe.decided_at") or when((r or {}).get("end_ms"))
    reasons = [x for x in t.get("mlpipe.reasons", "").split("; ") if x]
    summary = (
        f"{t.get('mlpipe.decision', 'undecided')} at {decided} by register run {(r or {}).get('run_id')}; "
        f"champion before: {t.get('mlpipe.champion_before', 'n/a')} (re-measured "
        f"{t.get('mlpipe.champion_accuracy_remeasured', 'n/a')}); reasons: {'; '.join(reasons) or 'none recorded'}"
    )
    facts = {
        "decision": t.get("mlpipe.decision"),
        "reasons": reasons,
        "decided_at": decided,
        "register_run_id": (r or {}).get("run_id"),
        "champion_before": t.get("mlpipe.champion_before"),
        "champion_accuracy_remeasured": t.get("mlpipe.champion_accuracy_remeasured"),
        "test_accuracy_measured": t.get("mlpipe.test_accuracy_measured"),
        "objective": t.get("mlpipe.objective"),
        "selection": t.get("mlpipe.selection"),
        "champion_now": champion,
    }
    link = g.link("promotion", "register", r, summary, facts, artifacts=False)
    link["artifacts"] = [a for a in tracking.list_artifacts(r["run_id"]) if not a.startswith("card/")] if r else []
    return link


def _card(g: _Gatherer) -> dict:
    uri = g.tags.get("mlpipe.card")
    r = tracking.run_record(uri.split("/")[1]) if uri and uri.startswith("runs:/") else None
    artefact = uri.split("/", 2)[2] if r else None
    summary = (
        f"{uri} (also the version's description: {len(g.info['description'])} characters)"
        if r
        else "no model card (registered before cards existed)"
    )
    link = g.link("card", "register", r, summary, {"card": uri}, artifacts=False)
    link["artifacts"] = [artefact] if artefact else []
    return link


def _json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def verdict(tags: dict, version: str, champion: str | None) -> str:
    """Why a version is, or is not, the champion, from its decision tags."""
    reasons = tags.get("mlpipe.reasons") or "none recorded"
    if champion is not None and str(champion) == str(version):
        return f"the champion: {tags.get('mlpipe.decision', 'promoted')}: {reasons}"
    now = f"the champion is v{champion}" if champion else "there is no champion"
    return f"not the champion ({now}): {tags.get('mlpipe.decision', 'undecided')}: {reasons}"


def gather(uri: str, paths: Paths, tracking_uri: str) -> dict:
    """The whole chain of a registered version as plain values (the --json output)."""
    g = _Gatherer(uri, paths, tracking_uri)
    current = registry.champion_version(g.name)
    champion = None if current is None else str(current.version)
    t = g.tags
    chain = [
        _source(g),
        _data(g),
        _validation(g),
        _baseline(g),
        _tuning(g),
        _cv(g),
        _training(g),
        _evaluation(g),
        _attributions(g),
        _compression(g),
        _promotion(g, champion),
        _card(g),
    ]
    return {
        "model_uri": uri,
        "name": g.name,
        "version": g.version,
        "alias": g.alias,
        "aliases": g.info["aliases"],
        "variant": t.get("variant"),
        "champion": champion,
        "is_champion": champion == g.version,
        "why": verdict(t, g.version, champion),
        "registered_at": when(g.info["created_ms"]),
        "git_commit": t.get("mlpipe.git_commit"),
        "tracking_uri": tracking_uri,
        "pipeline_run": None
        if g.pipeline is None
        else {
            "run_id": g.pipeline["run_id"],
            "status": g.pipeline["status"],
            "started": when(g.pipeline["start_ms"]),
            "url": g.url(g.pipeline["run_id"]),
        },
        "experiment_url": tracking.experiment_url(tracking_uri, g.exp) if g.exp else None,
        "version_url": registry.version_url(tracking_uri, g.name, g.version),
        "chain": [link for link in chain if link is not None],
    }


# ---------------------------------------------------------------- text


def render(lin: dict) -> str:
    aliases = " ".join(f"@{a}" for a in lin["aliases"])
    head = [
        f"{lin['model_uri']} = {lin['name']} v{lin['version']} ({lin['variant']})" + (f" {aliases}" if aliases else ""),
        f"why: {lin['why']}",
    ]
    p = lin["pipeline_run"]
    if p:
        head.append(f"pipeline run {p['run_id']} ({p['status']}, started {p['started']}); git {lin['git_commit']}")
    else:
        head.append("pipeline run: not found in this store")
    for label, key in (("MLflow runs", "experiment_url"), ("MLflow version", "version_url")):
        if lin.get(key) and (lin["tracking_uri"].startswith("http") or key == "experiment_url"):
            head.append(
                f"{label}: {lin[key]}" + ("" if lin["tracking_uri"].startswith("http") else " (after `mlflow ui`)")
            )
    body = []
    for link in lin["chain"]:
        body.append(f"  {link['link']:<13}{link['summary']}")
        where = []
        if link["run_id"]:
            where.append(
                f"{link['stage']} run {link['run_id']}" + (f" [{link['status']}]" if link["status"] != "ok" else "")
            )
        if link["artifacts"]:
            shown = link["artifacts"][:6]
            where.append(
                "artefacts "
                + ", ".join(shown)
                + (f" (+{len(link['artifacts']) - 6})" if len(link["artifacts"]) > 6 else "")
            )
        if link["files"]:
            where.append("files " + ", ".join(link["files"]))
        for w in where:
            body.append(f"  {'':<13}{w}")
        if link.get("url"):
            body.append(f"  {'':<13}{link['url']}")
        if link.get("note"):
            body.append(f"  {'':<13}note: {link['note']}")
    return "\n".join(head + [""] + body) + "\n"
