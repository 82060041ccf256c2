"""infra/ checked by parsing: no Docker engine or Kubernetes cluster on these machines.

Compose: the services, credentials only from the environment with `${VAR:?}` (compose refuses
to start while one is unset), every variable named in .env.example, ports on loopback.
Kubernetes: credentials only through secretKeyRef; every manifest valid against the Kubernetes API schemas
(kubernetes-validate, strict, as `make lint` runs it). No literal secret anywhere in infra/."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
VAR = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?])?([^}]*)\}")  # $${X} is escaped: for the container shell
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ROOT_USER|POSTGRES_USER|ADMIN_USER|TOKEN|ACCESS_KEY")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _compose_text() -> str:
    """The compose file without its comment lines."""
    return "\n".join(
        line for line in (INFRA / "docker-compose.yml").read_text().splitlines() if not line.lstrip().startswith("#")
    )


def test_compose_has_the_shared_services(compose):
    s = compose["services"]
    assert {"postgres", "minio", "create-buckets", "mlflow", "prefect-server", "worker"} <= set(s)
    mlflow_env = s["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_DB_URI"].startswith("postgresql+psycopg2://") and mlflow_env[
        "MLFLOW_ARTIFACTS"
    ].startswith("s3://")
    assert "minio:9000" in s["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"]
    assert "--app-name basic-auth" in (INFRA / "docker" / "mlflow-server.sh").read_text()
    assert s["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )
    assert "mc mb" in " ".join(s["create-buckets"]["entrypoint"])
    assert s["worker"]["image"] == s["mlflow"]["image"] and s["worker"]["build"]["dockerfile"] == "infra/Dockerfile"
    assert "prefect worker start" in " ".join(s["worker"]["command"])
    assert s["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_compose_credentials_come_only_from_required_env(compose):
    refs = VAR.findall(_compose_text())
    secret_refs = [(name, op) for name, op, _ in refs if SECRET_NAME.search(name)]
    assert {n for n, _ in secret_refs} >= {
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_SECRET_KEY",
        "PREFECT_AUTH_STRING",
    }
    assert all(op == ":?" for _, op in secret_refs), [r for r in secret_refs if r[1] != ":?"]
    # an environment value that is a secret is a ${VAR:?} reference, never a literal
    for svc in compose["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert VAR.fullmatch(str(value)), f"{key}={value!r} is not a ${{VAR:?}} reference"


def test_env_example_names_every_variable_without_values(compose):
    lines = (INFRA / ".env.example").read_text().splitlines()
    required = {line.split("=")[0] for line in lines if re.fullmatch(r"[A-Z0-9_]+=", line.strip())}
    optional = {m.group(1) for line in lines if (m := re.match(r"#\s*([A-Z0-9_]+)=", line.strip()))}
    used = {name for name, _, _ in VAR.findall(_compose_text())}
    assert used <= required | optional, used - required - optional
    assert {n for n, op, _ in VAR.findall(_compose_text()) if op == ":?"} <= required
    assert all(line.strip().endswith("=") for line in lines if re.match(r"[A-Z0-9_]+=", line)), (
        "a value in .env.example"
    )


def test_compose_ports_bind_to_loopback_by_default(compose):
    ports = [p for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert len(ports) >= 5
    for p in ports:
        host = p.split(":")[0] if not p.startswith("${") else p[: p.index("}") + 1]
        assert host in ("127.0.0.1", "${MLPIPE_BIND:-127.0.0.1}"), p


def test_no_literal_secrets_in_infra():
    pattern = re.compile(r"(password|secret|token)\s*[:=]\s*['\"]?(?!\$|\{\{|\s*$)[A-Za-z0-9+/_-]{6,}", re.I)
    for f in [*INFRA.rglob("*"), REPO / "prefect.yaml"]:
        if f.is_file() and f.suffix in (".yml", ".yaml", ".sh", ".example", "") and f.name != "README.md":
            for line in f.read_text().splitlines():
                if not line.lstrip().startswith("#"):
                    assert not pattern.search(line), f"{f.name}: {line}"


def test_dockerfile_cpu_torch_non_root_no_secrets():
    text = (INFRA / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert not re.search(r"^(ENV|ARG) .*(PASSWORD|SECRET)", text, re.M)
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), f"Dockerfile copies missing {path}"


def _k8s_docs() -> list[dict]:
    docs = []
    for f in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_k8s_manifests_worker_job_and_secret_refs():
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "prefect-worker") in kinds and ("Job", "mlpipe-train") in kinds
    assert not any(d["kind"] == "Secret" for d in docs), "secrets are created with kubectl, not stored here"
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == job["spec"]["parallelism"] >= 2
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    args = " ".join(trainer["args"])
    assert trainer["command"] == ["torchrun"] and f"--nnodes={job['spec']['completions']}" in args
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in args and "flows.stages.train_worker" in args
    assert (REPO / "flows" / "stages" / "train_worker.py").exists()
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlpipe-train")
    assert svc["spec"]["clusterIP"] == "None" and job["spec"]["template"]["spec"]["subdomain"] == "mlpipe-train"
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]) or "STORAGE" in e["name"]:
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{e['name']} must come from a Secret"


def test_prefect_yaml_matches_params_schedule():
    from components.config import load_config

    cfg = load_config(REPO / "params.yaml")
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for dep in doc["deployments"]:
        module, fn = dep["entrypoint"].split(":")
        assert (REPO / module).exists() and f"def {fn}(" in (REPO / module).read_text()
        assert [(s["cron"], s["timezone"]) for s in dep["schedules"]] == [(cfg.schedule.cron, cfg.schedule.timezone)]


# ---- the Kubernetes manifests against the API schemas (what `make lint` runs) -------------------------


def _k8s_version() -> str:
    """The Kubernetes version `make lint` validates against (K8S_VERSION in the Makefile)."""
    m = re.search(r"^K8S_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "K8S_VERSION is not set in the Makefile"
    return m.group(1)


def _schema_errors(doc: dict) -> str | None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, _k8s_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path))}: {e.message}"
    return None


def test_k8s_manifests_pass_the_schema_check():
    docs = _k8s_docs()
    assert len(docs) >= 8
    assert [(d["kind"], _schema_errors(d)) for d in docs if _schema_errors(d)] == []
    assert "kubernetes-validate --strict" in (REPO / "Makefile").read_text()  # and `make lint` runs it


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda c, job: c.update(comand=c.pop("command")), "'comand' was unexpected"),  # a misspelled key
        (lambda c, job: job["spec"].update(completions="two"), "'two' is not of type 'integer'"),
        (lambda c, job: c.pop("image") and c.pop("name"), "'name' is a required property"),
        (lambda c, job: job["spec"]["template"]["spec"].update(volumes={"name": "work"}), "is not of type 'array'"),
    ],
)
def test_a_broken_manifest_fails_the_schema_check(breakage, expected):
    import copy

    job = copy.deepcopy(next(d for d in _k8s_docs() if d["kind"] == "Job"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    breakage(container, job)
    err = _schema_errors(job)
    assert err is not None and expected in err, err


def test_the_schema_check_cli_exits_nonzero_on_a_broken_file(tmp_path):
    import subprocess

    from tests.conftest import BIN

    bad = tmp_path / "job.yaml"
    bad.write_text((INFRA / "k8s" / "torchrun-job.yaml").read_text().replace("completionMode:", "completionMod:"))
    cmd = [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", _k8s_version()]
    good = subprocess.run([*cmd, *map(str, sorted((INFRA / "k8s").glob("*.yaml")))], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    broken = subprocess.run([*cmd, str(bad)], capture_output=True, text=True)
    assert broken.returncode != 0 and "completionMod" in broken.stdout + broken.stderr, broken
