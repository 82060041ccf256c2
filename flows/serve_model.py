"""`mlpipe serve-model`: an HTTP scoring server that follows a registry alias (models:/NAME@champion).

The endpoints are MLflow's scoring server's: POST /invocations (JSON `dataframe_split`,
`dataframe_records`, `instances`, `inputs`; CSV; parquet; parsed and answered by MLflow's own
`scoring_server.invocations`, through components/registry.py), GET /ping and /health, and GET
/version, which here names the model version and variant serving (MLflow's says its own version).

With `serve.consistent` (the default) every request looks the alias up before it is answered: one
registry read that began after the request arrived, shared by the requests that arrive while it
runs. When the alias names another version, that version is loaded (once, whichever request or the
watcher gets there first) and answers; so every response comes from the version that was champion
while it was being answered. Without it, only the watcher looks, and the server lags the alias by up
to one `serve.poll_s` plus a load, at no per-request cost.

Either way, every `serve.poll_s` seconds a thread looks the alias up and loads a new version (and runs
it once on a zero batch) while the old one keeps answering; then one reference is replaced. A request
reads that reference once, so it finishes on the version it started with, and its response names it
(headers X-Mlpipe-Model-Name / -Version / -Variant). A version that fails to load (a tampered or
unreadable artefact) is logged and skipped until the alias moves again; the old one keeps serving.
If the registry cannot be read, requests are answered by the version serving (logged once)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from components import registry
from components.config import ServeConfig
from components.errors import MlpipeError

log = logging.getLogger("mlpipe.serve_model")


@dataclass(frozen=True)
class Served:
    """One loaded version; replaced as a whole, never changed."""

    uri: str  # what was loaded: models:/NAME/VERSION, or the URI given
    name: str | None
    version: str | None
    variant: str | None
    model: object  # mlflow PyFuncModel

    def describe(self) -> dict:
        return {"model": self.name, "version": self.version, "variant": self.variant, "uri": self.uri}


def load_version(ref: registry.ModelRef) -> Served:
    """Load a resolved version fully (files, weights hash, one prediction on zeros) -> Served."""
    uri = f"models:/{ref.name}/{ref.version}" if ref.version else ref.uri
    model = registry.load(uri)
    if registry.takes_text(model):  # a text model: one raw string
        import pandas as pd

        model.predict(pd.DataFrame({"text": ["warm-up"]}))
    else:
        model.predict(np.zeros((1, *registry.input_shape(model)), np.float32))  # warm-up; fails here, not on a request
    variant = registry.version_tags(ref.name, ref.version).get("variant") if ref.version else None
    return Served(uri, ref.name, ref.version, variant, model)


class FreshRead:
    """fn() as of now: each call returns the result of a call of fn that began after it did. Calls run
    one at a time, and the callers that arrive while one runs share the next one, so a burst of
    requests costs two reads, not one per request. fn's exception is raised to those callers."""

    def __init__(self, fn):
        self.fn = fn
        self._cond = threading.Condition()
        self._started = self._done = 0  # reads begun / finished, numbered from 1
        self._result: tuple[object, BaseException | None] = (None, None)

    def __call__(self):
        with self._cond:
            need = self._started + 1  # the first read that begins after this call
            while self._done < need:
                if self._started == self._done:  # none running: begin read `need` here
                    self._started += 1
                    self._cond.release()
                    try:
                        try:
                            result = (self.fn(), None)
                        except Exception as e:  # noqa: BLE001 - handed to every caller of this read
                            result = (None, e)
                    finally:
                        self._cond.acquire()
                    self._result, self._done = result, self._started
                    self._cond.notify_all()
                else:
                    self._cond.wait()
            value, error = self._result
        if error is not None:
            raise error
        return value


class ModelServer:
    """The served version and the alias watcher. `current` is None only while waiting for an alias."""

    def __init__(self, uri: str, poll_s: float, wait: bool = False, consistent: bool = True):
        self.uri, self.poll_s, self.wait, self.consistent = uri, poll_s, wait, consistent
        self.ref = registry.parse_uri(uri)
        self.current: Served | None = None
        self.failed: dict[str, str] = {}  # version the alias names -> why it is not served
        self.swaps = 0
        self._stop = threading.Event()
        self._last_warning: str | None = None  # logged once, not every poll
        self._alias = FreshRead(registry.alias_reader(uri) if self.ref.alias else lambda: registry.resolve(uri))
        self._loading = threading.Lock()  # one load at a time: a request and the watcher never load twice

    def start(self) -> None:
        """Load what the URI names now; without `wait`, an alias or model that does not exist is an error."""
        try:
            self.current = load_version(registry.resolve(self.uri))
        except MlpipeError as e:
            if not (self.wait and self.ref.alias):
                raise
            log.warning("waiting for %s: %s", self.uri, e)
        if self.current:
            log.info("serving %s", self.current.describe())

    def for_request(self) -> Served | None:
        """The version to answer a request with: with `consistent`, the one the alias names now (loaded
        first if it is new); else, or for a URI that names a version, the one serving."""
        if self.consistent and self.ref.alias:
            self.check()
        return self.current

    def check(self) -> bool:
        """One look at the alias: load and swap in the version it names if that is new -> swapped."""
        try:
            ref = self._alias()
        except MlpipeError as e:  # no alias yet, the alias was removed, or no registry: keep serving
            if str(e) != self._last_warning:
                log.warning("alias check failed, serving %s: %s", self.current and self.current.version, e)
            self._last_warning = str(e)
            return False
        self._last_warning = None
        if self.current and ref.version == self.current.version:
            return False
        with self._loading:
            return self._swap_to(ref)

    def _swap_to(self, ref: registry.ModelRef) -> bool:
        if self.current and ref.version == self.current.version:
            return False  # loaded by another request or the watcher while this one waited
        if ref.version in self.failed:
            return False  # refused once; tried again after the alias has moved elsewhere
        self.failed.clear()
        try:
            new = load_version(ref)
        except Exception as e:  # noqa: BLE001 - any failure to load keeps the old version serving
            self.failed[ref.version] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.error(
                "not serving %s v%s (%s); still serving %s",
                ref.name,
                ref.version,
                self.failed[ref.version],
                self.current and self.current.describe(),
            )
            return False
        old, self.current = self.current, new  # the swap: one reference; requests in flight keep `old`
        self.swaps += 1
        log.info("swapped %s -> %s", old and old.version, new.describe())
        return True

    def watch(self) -> None:
        """Poll until stop(); only an alias URI moves."""
        while self.ref.alias and not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must survive anything and keep the server up
                log.exception("alias check failed")

    def stop(self) -> None:
        self._stop.set()


def handler(server: ModelServer, max_body: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
        # headers and body go out in two writes; with Nagle's algorithm the second waits for the client's
        # delayed ACK, about 40 ms per response (BENCHMARKS.md, serve-model row)
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # the access log would cost more than a batch-1 prediction
            pass

        def _send(self, status: int, body: str | bytes, ctype: str = "application/json", served=None) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            if served is not None:
                self.send_header("X-Mlpipe-Model-Name", str(served.name))
                self.send_header("X-Mlpipe-Model-Version", str(served.version))
                self.send_header("X-Mlpipe-Variant", str(served.variant))
            self.end_headers()
            self.wfile.write(data)

        def _unavailable(self) -> None:
            self._send(503, json.dumps({"error_code": "UNAVAILABLE", "message": f"waiting for {server.uri}"}))

        def do_GET(self):  # noqa: N802 - http.server's naming
            served = server.current
            if self.path in ("/ping", "/health"):
                return self._send(200, "\n", served=served) if served else self._unavailable()
            if self.path == "/version":
                body = {
                    **(served.describe() if served else {"model": server.ref.name, "version": None}),
                    "following": server.uri,
                    "swaps": server.swaps,
                    "not_served": server.failed,
                }
                return self._send(200, json.dumps(body), served=served)
            self._send(404, json.dumps({"error_code": "NOT_FOUND", "message": f"no endpoint {self.path}"}))

        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            if self.path != "/invocations":
                self.rfile.read(n)
                return self._send(404, json.dumps({"error_code": "NOT_FOUND", "message": f"no endpoint {self.path}"}))
            if n > max_body:
                self.close_connection = True  # the body is not read
                return self._send(
                    413,
                    json.dumps({"error_code": "BAD_REQUEST", "message": f"body of {n} bytes, over serve.max_body_mb"}),
                )
            body = self.rfile.read(n)
            served = server.for_request()  # read once: this request finishes on this version whatever happens
            if served is None:
                return self._unavailable()
            status, ctype, out = registry.invoke(served.model, body, self.headers.get("Content-Type"))
            self._send(status, out, ctype, served)

    return Handler


class Http(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def serve(uri: str, host: str, port: int, cfg: ServeConfig, wait: bool = False, ready=None) -> None:
    """Run until interrupted (SIGINT/SIGTERM). ready(url): called once the socket listens."""
    poll_s = cfg.poll_s
    model_server = ModelServer(uri, poll_s, wait, cfg.consistent)
    model_server.start()
    httpd = Http((host, port), handler(model_server, int(cfg.max_body_mb * 2**20)))
    watcher = threading.Thread(target=model_server.watch, name="alias-watcher", daemon=True)
    watcher.start()
    url = f"http://{host}:{httpd.server_address[1]}"
    how = "on every request and " if cfg.consistent and model_server.ref.alias else ""
    log.info("listening on %s, following %s %severy %.3g s", url, uri, how, poll_s)
    if ready:
        ready(url)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        model_server.stop()
        httpd.server_close()
