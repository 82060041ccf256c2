"""`mlpipe serve-model` (issue 21): the real server, started by the test as a user starts it, over real
HTTP: predictions equal `mlpipe predict`, bad payloads get 400, the alias is followed with no failed
request, a tampered new version is refused while the old one keeps serving, and an alias that does
not exist stops the start with a clear error."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from components import registry, tracking
from components.config import TrackingConfig
from flows import servers
from flows.cli import app
from tests.code.test_serving_package import make_store, rows, version_dir
from tests.conftest import BIN

POLL_S = 30.0  # the watcher does not look during the test: requests (serve.consistent) follow the alias


def http(url: str, body=None, ctype: str = "application/json", timeout: float = 30) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, headers, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    return (
        status,
        headers,
        json.loads(raw) if headers.get("Content-Type") == "application/json" and raw.strip() else raw,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    return root, make_store(root, seeds=(0, 1, 2))  # v1 @champion, v2, v3


@pytest.fixture(scope="module")
def server(project):
    root, _ = project
    port = servers.free_port()
    log = root / "serve-model.log"
    cmd = [str(BIN / "mlpipe"), "serve-model", "--port", str(port), "--model", "models:/mlpipe-t@champion"]
    pid = servers.launch("serve-model", cmd + ["--set", f"serve.poll_s={POLL_S}"], log, cwd=root)
    srv = servers.Server("serve-model", f"http://127.0.0.1:{port}", pid, log)
    try:
        servers.wait_healthy(srv, "/ping", timeout=120)
        yield srv
    finally:
        servers.stop(pid)


def move_champion(root, version: str) -> None:
    tracking.setup(TrackingConfig(), root)
    registry.set_champion("mlpipe-t", version)


def wait_version(srv, want: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = http(srv.url + "/version")
        if body["version"] == want:
            return body
        time.sleep(0.05)
    raise AssertionError(f"server still on {body} after {timeout} s; log:\n{servers.tail(srv.log, 30)}")


def test_predictions_equal_mlpipe_predict_in_every_json_format(project, server, monkeypatch):
    root, _ = project
    X = rows(6, seed=5)
    np.savez(root / "six.npz", X=X)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = CliRunner().invoke(app, ["predict", "--model", "models:/mlpipe-t@champion", "six.npz"])
    assert r.exit_code == 0, r.output
    want = [ln.split(",")[1:] for ln in r.stdout.strip().splitlines()[1:]]
    assert len(want) == 6
    for body in ({"inputs": X.tolist()}, {"instances": X.tolist()}):
        status, headers, out = http(server.url + "/invocations", body)
        assert status == 200, out
        got = [[p["class"], f"{p['confidence']:.4f}"] for p in out["predictions"]]
        assert got == want
        assert headers["X-Mlpipe-Model-Version"] == "1" and headers["X-Mlpipe-Variant"] == "fp32"
    status, _, info = http(server.url + "/version")
    assert status == 200 and info["model"] == "mlpipe-t" and info["version"] == "1" and info["variant"] == "fp32"


@pytest.mark.parametrize(
    "body,ctype,status",
    [
        ({"inputs": [[1.0, 2.0, 3.0]]}, "application/json", 400),  # wrong shape
        (b"{not json", "application/json", 400),
        ({"rows": [[1.0]]}, "application/json", 400),  # not one of MLflow's keys
        ({"inputs": [["a"] * 8] * 8}, "application/json", 400),  # wrong type
        (b"x", "text/plain", 415),
    ],
)
def test_bad_payloads_are_refused_and_the_server_keeps_answering(server, body, ctype, status):
    got, _, out = http(server.url + "/invocations", body, ctype)
    assert got == status, out
    assert http(server.url + "/ping")[0] == 200


def test_the_alias_is_followed_without_a_failed_request_and_a_tampered_version_is_not_served(project, server):
    root, versions = project
    X = {"inputs": rows(1).tolist()}
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load():  # requests in flight while the alias moves
        while not stop.is_set():
            t0 = time.monotonic()
            status, headers, _ = http(server.url + "/invocations", X)
            seen.append((t0, status, headers.get("X-Mlpipe-Model-Version")))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.3)
        move_champion(root, versions["seed1"])
        moved = time.monotonic()
        info = wait_version(server, versions["seed1"])
        assert info["swaps"] >= 1
        time.sleep(0.3)
        # v3's weights are changed in the store after registration; the alias moves to it
        weights = version_dir(root, versions["seed2"]) / "artifacts" / "model-2.pt"
        weights.write_bytes(weights.read_bytes() + b"\0")
        move_champion(root, versions["seed2"])
        deadline = time.monotonic() + 30
        while versions["seed2"] not in info["not_served"] and time.monotonic() < deadline:
            info = http(server.url + "/version")[2]
            time.sleep(0.05)
        time.sleep(0.6)  # later looks at the alias (each request makes one) keep the old version too
    finally:
        stop.set()
        worker.join()
    assert "changed after the model was registered" in info["not_served"][versions["seed2"]], info
    assert http(server.url + "/version")[2]["version"] == versions["seed1"]
    assert "not serving mlpipe-t v3" in server.log.read_text()
    assert len(seen) > 10 and all(s == 200 for _, s, _ in seen), [s for _, s, _ in seen if s != 200][:5]
    order = [v for _, _, v in seen]
    assert set(order) == {versions["seed0"], versions["seed1"]}
    flips = [i for i in range(1, len(order)) if order[i] != order[i - 1]]
    assert len(flips) == 1, "responses went back to the old version after the swap"
    # serve.consistent: a request sent after the alias moved is answered by the new champion, never the old
    late = [v for t0, _, v in seen if t0 > moved]
    assert late and set(late) == {versions["seed1"]}, late[:5]
    move_champion(root, versions["seed0"])  # and at once, with no wait and no poll
    status, headers, _ = http(server.url + "/invocations", X)
    assert status == 200 and headers["X-Mlpipe-Model-Version"] == versions["seed0"]


def test_an_alias_or_model_that_does_not_exist_stops_the_start(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for uri, says in [
        ("models:/mlpipe-t@nope", "registered model 'mlpipe-t' has no alias @nope (its aliases: @champion)"),
        ("models:/nothing@champion", "no registered model 'nothing'"),
        ("models:/mlpipe-t/99", "registered model 'mlpipe-t' has no version 99"),
    ]:
        r = CliRunner().invoke(app, ["serve-model", "--model", uri, "--port", str(servers.free_port())])
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error: ") and says in r.stderr, r.stderr
