"""``mmwal serve``: a read-only JSON-over-HTTP query service over one store.

Needs the ``server`` extra (``pip install 'mmwal[server]'``: FastAPI and
uvicorn); ``import mmwal`` never imports this module.

Endpoints (see docs/cli.md and docs/deployment.md):

- ``POST /search`` with ``{"vector": [...], "k": 10, "metric": "cosine",
  "where": null, "exact": null}`` -> ``{"hits": [{"id": ..., "score": ...}]}``;
  ``"vectors": [[...], ...]`` instead of ``"vector"`` -> ``{"results": [[hit,
  ...], ...]}``.
- ``GET /documents/{id}`` -> ``{"id", "content", "metadata"}``
  (``?include=embedding`` adds ``"embedding"``); 404 for an unknown id.
- ``GET /stats`` -> seq, documents, checkpoint id, refresh state, worker pid.
- ``GET /healthz`` -> 200 while the store is open (never needs the token).

Bad input gets 422 ``{"error": message}``, a body over the limit 413, a
missing or wrong bearer token 401.

Each worker process opens its own :class:`mmwal.Reader` when it starts (in the
ASGI lifespan, after the fork or spawn), never in a parent: the checkpoint is
mapped read-only by every worker and shared through the page cache, while the
descriptors and locks stay private to the process that opened them.

Examples
--------
>>> app = create_app("my.store", token="s3cret")   # the Reader opens on startup
>>> sorted(r.path for r in app.routes)              # doctest: +NORMALIZE_WHITESPACE
['/documents/{doc_id:path}', '/healthz', '/search', '/stats']
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hmac
import inspect
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

try:
    import uvicorn
    from fastapi import FastAPI, Request, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as _exc:  # pragma: no cover - exercised through a subprocess test
    raise ImportError(
        f"mmwal serve needs FastAPI and uvicorn, which are not installed ({_exc}): "
        "run pip install 'mmwal[server]'", name=_exc.name) from _exc

import numpy as np

from . import __version__
from ._reader import Reader
from ._snapshot import METRICS, Snapshot
from .errors import CorruptionError, InvalidInputError, MmwalError

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_K",
    "DEFAULT_PORT",
    "DEFAULT_REFRESH_EVERY",
    "ENV_TOKEN",
    "app_from_env",
    "create_app",
    "is_loopback",
    "run",
]

log = logging.getLogger("mmwal.serve")

DEFAULT_PORT = 8000
DEFAULT_REFRESH_EVERY = 1.0
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_K = 1000
DEFAULT_MAX_BATCH = 256

#: The bearer token, read from the environment so that it does not show in ``ps``.
ENV_TOKEN = "MMWAL_SERVE_TOKEN"  # noqa: S105 - the variable's name, not a secret
# How `run` hands its options to worker processes, which build the app with
# `app_from_env` (uvicorn spawns its workers; gunicorn may fork them).
ENV_PATH = "MMWAL_SERVE_PATH"
ENV_REFRESH_EVERY = "MMWAL_SERVE_REFRESH_EVERY"
ENV_MAX_BODY_BYTES = "MMWAL_SERVE_MAX_BODY_BYTES"
ENV_MAX_K = "MMWAL_SERVE_MAX_K"
ENV_MAX_BATCH = "MMWAL_SERVE_MAX_BATCH"
ENV_SUPERVISOR = "MMWAL_SERVE_SUPERVISOR_PID"
ENV_FAILURE_FILE = "MMWAL_SERVE_FAILURE_FILE"

_SEARCH_FIELDS = ("vector", "vectors", "k", "metric", "where", "exact")
_INCLUDES = ("embedding",)


class _Reply(Exception):
    """An HTTP error answer: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ============================================================================ JSON
def _jsonable(obj: Any) -> Any:
    """``obj`` with every value JSON can carry: non-finite floats -> null, bytes -> base64."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def _dumps(obj: Any) -> bytes:
    # allow_nan=False: a NaN or inf that slipped through is a bug here, never
    # invalid JSON on the wire (json.dumps would write the bare token NaN).
    return json.dumps(obj, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(obj), status_code=status, media_type="application/json",
                    headers=headers)


def _hits(hits: list[Any]) -> list[dict[str, Any]]:
    return [{"id": h.id, "score": h.score if math.isfinite(h.score) else None} for h in hits]


def _refuse_constant(name: str) -> Any:
    raise _Reply(422, f"the body is not valid JSON: {name} is not a JSON number; send finite "
                      "numbers only")


# ============================================================================ input
@dataclasses.dataclass(frozen=True)
class _Limits:
    dim: int
    max_k: int
    max_batch: int


@dataclasses.dataclass(frozen=True)
class _SearchRequest:
    queries: np.ndarray  # (dim,) or (m, dim) float32
    batch: bool
    k: int
    metric: str
    where: dict[str, Any] | None
    exact: bool | None


def _vector(x: Any, dim: int, where: str) -> list[float]:
    if type(x) is not list:
        raise _Reply(422, f"{where} must be a list of {dim} numbers, got {_kind(x)}")
    if len(x) != dim:
        raise _Reply(422, f"{where} has dimension {len(x)}, the store has {dim}")
    for i, v in enumerate(x):
        # bool is an int to Python: refuse it, a flag is not a coordinate.
        if type(v) is not float and type(v) is not int:
            raise _Reply(422, f"{where}[{i}] must be a number, got {_kind(v)}")
    return x


def _kind(v: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             type(None): "null", int: "an integer", float: "a number"}
    return names.get(type(v), type(v).__name__)


def parse_search(body: bytes, limits: _Limits) -> _SearchRequest:
    """Check a ``POST /search`` body; raise :class:`_Reply` (422) naming the problem."""
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except _Reply:
        raise
    except (ValueError, RecursionError) as exc:
        raise _Reply(422, f"the body is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise _Reply(422, f"the body must be a JSON object, got {_kind(doc)}")
    unknown = sorted(set(doc) - set(_SEARCH_FIELDS))
    if unknown:
        raise _Reply(422, f"unknown field(s) {', '.join(map(repr, unknown))}; a search takes "
                          f"{', '.join(_SEARCH_FIELDS)}")
    one, many = doc.get("vector"), doc.get("vectors")
    if (one is None) == (many is None):
        raise _Reply(422, 'give exactly one of "vector" (one query) and "vectors" (a batch), '
                          f"got {'both' if one is not None else 'neither'}")
    k = doc.get("k", 10)
    if type(k) is not int or k < 1:
        raise _Reply(422, f'"k" must be a positive integer, got {json.dumps(k)}')
    if k > limits.max_k:
        raise _Reply(422, f'"k" is {k}, more than this server allows ({limits.max_k})')
    metric = doc.get("metric", "cosine")
    if metric not in METRICS:
        raise _Reply(422, f'"metric" must be one of {", ".join(METRICS)}, got '
                          f"{json.dumps(metric)}")
    where = doc.get("where")
    if where is not None and type(where) is not dict:
        raise _Reply(422, f'"where" must be an object (a metadata filter) or null, got '
                          f"{_kind(where)}")
    exact = doc.get("exact")
    if exact is not None and type(exact) is not bool:
        raise _Reply(422, f'"exact" must be true, false or null, got {_kind(exact)}')
    if one is not None:
        rows = [_vector(one, limits.dim, '"vector"')]
    else:
        if type(many) is not list or not many:
            raise _Reply(422, f'"vectors" must be a non-empty list of vectors, got '
                              f"{_kind(many) if type(many) is not list else 'an empty list'}")
        if len(many) > limits.max_batch:
            raise _Reply(422, f'"vectors" holds {len(many)} queries, more than this server '
                              f"allows in one request ({limits.max_batch}); split the batch")
        rows = [_vector(v, limits.dim, f'"vectors"[{i}]') for i, v in enumerate(many)]
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            Q = np.array(rows, dtype=np.float64).astype(np.float32)
    except OverflowError:  # an integer beyond float64
        Q = np.full((1, 1), np.inf, np.float32)
    if not np.isfinite(Q).all():
        raise _Reply(422, "a query vector holds a number outside the float32 range; send "
                          "finite numbers")
    return _SearchRequest(Q[0] if one is not None else Q, many is not None, k, metric,
                          where, exact)


# ============================================================================ the worker
class _Worker:
    """The per-process state: one Reader, refreshed by its own background thread.

    Requests never wait for a refresh or for each other: each one uses the
    Reader's immutable snapshot current when it starts (:meth:`view`), while
    ``Reader(refresh_every=...)`` publishes new snapshots beside them.
    """

    def __init__(self, path: str, refresh_every: float) -> None:
        self.path = path
        self.refresh_every = refresh_every
        self._reader: Reader | None = None
        self._stop = threading.Event()
        self.dim = 0
        self.started = 0.0

    def open(self) -> None:
        reader = Reader(self.path, refresh_every=self.refresh_every or None)
        self.dim = reader.dim
        self.started = time.time()
        self._reader = reader
        supervisor = os.environ.get(ENV_SUPERVISOR, "")
        if supervisor.isdigit() and int(supervisor) == os.getppid():
            threading.Thread(target=self._watch_parent, args=(int(supervisor),), daemon=True,
                             name="mmwal-serve-parent").start()
        log.info("worker %d: serving %s (seq %d, %d documents, dim %d), refresh every %s s",
                 os.getpid(), self.path, reader.seq, len(reader), reader.dim,
                 self.refresh_every or "never")

    def close(self) -> None:
        self._stop.set()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()  # stops its refresh thread

    @property
    def is_open(self) -> bool:
        return self._reader is not None

    def _open_reader(self) -> Reader:
        reader = self._reader
        if reader is None:
            raise _Reply(503, "the store is not open in this worker (starting or stopping)")
        return reader

    def view(self) -> Snapshot:
        """The current snapshot of the store, for the duration of one request."""
        return self._open_reader().snapshot()

    def refresh(self) -> None:
        """One refresh now (the background thread does the same every period).

        A failure keeps the last good view; the Reader counts it (``/stats``)
        and logs it once per message.
        """
        reader = self._reader
        if reader is None:
            return
        try:
            reader.refresh()
        except Exception as exc:  # the Reader's own background loop does the same
            reader._refresh_failed(exc)

    def _watch_parent(self, parent: int) -> None:
        # uvicorn's workers do not notice the death of their supervisor: after a
        # kill -9 of it they would serve on as orphans, holding the port, so that
        # a restarted server could not bind it.  Stop the way SIGTERM stops us.
        while not self._stop.wait(0.5):
            if os.getppid() != parent:
                log.error("worker %d: the parent process %d is gone; shutting down",
                          os.getpid(), parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    # ------------------------------------------------------------------ requests
    def search(self, body: bytes, limits: _Limits) -> dict[str, Any]:
        req = parse_search(body, limits)
        snap = self.view()
        try:
            # exact=None/True/False: the Reader plans it (exact search where it
            # has no approximate index: exact results are always correct).
            got = snap.search(req.queries, k=req.k, metric=req.metric, where=req.where,
                              exact=req.exact)
        except ValueError as exc:
            # The library's bad-input errors (a malformed filter...) are the
            # caller's; damage and plain ValueErrors (bugs) are ours: 500.
            if not isinstance(exc, MmwalError) or isinstance(exc, CorruptionError):
                raise
            raise _Reply(422, str(exc)) from None
        if req.batch:
            return {"results": [_hits(hs) for hs in got]}
        return {"hits": _hits(got)}

    def document(self, doc_id: str, include: str | None) -> dict[str, Any]:
        extra = [x for x in (include or "").split(",") if x]
        bad = sorted(set(extra) - set(_INCLUDES))
        if bad:
            raise _Reply(422, f"include={','.join(bad)} is not known; include takes "
                              f"{', '.join(_INCLUDES)}")
        snap = self.view()
        doc = snap.get(doc_id)
        if doc is None:
            raise _Reply(404, f"no document with id {doc_id!r} (as of seq {snap.seq})")
        out: dict[str, Any] = {"id": doc.id, "content": doc.content, "metadata": doc.metadata}
        if "embedding" in extra:
            out["embedding"] = np.asarray(doc.embedding, dtype=np.float64).tolist()
        return _jsonable(out)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        st = self._open_reader().stats()
        out: dict[str, Any] = {
            "path": st.path, "dim": st.dim, "seq": st.seq, "documents": st.documents,
            "checkpoint_id": st.checkpoint_id, "lag": st.lag, "reader": st.as_dict(),
            "pid": os.getpid(), "started": self.started, "refresh_every": self.refresh_every,
            "last_refresh": st.last_refresh, "refreshes": st.refreshes,
            "refresh_errors": st.refresh_errors,
            "last_refresh_error": st.last_refresh_error, "version": __version__}
        return _jsonable(out)  # type: ignore[no-any-return]


# ============================================================================ middleware
class _Guard:
    """Bearer token and body size, checked before any routing or parsing.

    A pure ASGI middleware: a request without the token is refused before its
    body is read, and a body is read into memory only up to ``max_body``
    bytes (413 past it, whatever ``Content-Length`` claims).
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = None if token is None else token.encode("utf-8")
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] != "/healthz":
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            # compare_digest: the time taken does not tell how much of a guess matched.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(),
                                                                      self.token):
                await _send(send, 401, {"error": "missing or wrong bearer token: send the "
                                        "header 'Authorization: Bearer <token>'"},
                            [(b"www-authenticate", b'Bearer realm="mmwal"')])
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _send(send, 413, self._too_large(int(declared)))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _send(send, 413, self._too_large(size))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> dict[str, str]:
        return {"error": f"the request body ({size:,} bytes or more) is larger than this "
                         f"server accepts ({self.max_body:,} bytes); send smaller batches"}


async def _send(send: Send, status: int, obj: Any,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = _dumps(obj)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# ============================================================================ the app
def create_app(path: str | os.PathLike[str], *, token: str | None = None,
               refresh_every: float = DEFAULT_REFRESH_EVERY,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_k: int = DEFAULT_MAX_K,
               max_batch: int = DEFAULT_MAX_BATCH) -> FastAPI:
    """The ASGI application serving the store at ``path``, read-only.

    The Reader is opened when the application starts (its lifespan), in the
    process that serves, and closed when it stops: building the app in a
    parent that forks workers afterwards (gunicorn ``--preload``) opens
    nothing there.

    Parameters
    ----------
    path
        The store directory.
    token
        When set, every request but ``GET /healthz`` must carry
        ``Authorization: Bearer <token>`` (401 otherwise).
    refresh_every
        Seconds between background refreshes that pick up new writes and
        checkpoints; 0 never refreshes.
    max_body_bytes
        Larger request bodies get 413.
    max_k, max_batch
        Largest ``k`` and largest number of ``vectors`` in one search (422 past them).

    Returns
    -------
    fastapi.FastAPI
    """
    if refresh_every < 0 or not math.isfinite(refresh_every):
        raise InvalidInputError(f"refresh_every must be >= 0 seconds, got {refresh_every!r}")
    for name, value in (("max_body_bytes", max_body_bytes), ("max_k", max_k),
                        ("max_batch", max_batch)):
        if type(value) is not int or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    if token is not None and not token:
        raise InvalidInputError("token must be a non-empty str (or None for no token)")
    worker = _Worker(os.path.abspath(os.fspath(path)), float(refresh_every))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(worker.open)
        except Exception as exc:
            _startup_failed(exc)
            raise
        try:
            yield
        finally:
            await run_in_threadpool(worker.close)
            log.info("worker %d: closed %s", os.getpid(), worker.path)

    app = FastAPI(title="mmwal", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, token=token, max_body=max_body_bytes)
    app.state.mmwal = worker

    @app.exception_handler(_Reply)
    async def _reply(request: Request, exc: _Reply) -> Response:
        return _json_response(exc.status, {"error": exc.message})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _json_response(exc.status_code, {"error": str(exc.detail)}, exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this answer, so uvicorn logs the traceback.
        what = ("the store is damaged (run `mmwal verify`)"
                if isinstance(exc, CorruptionError) else "internal error")
        return _json_response(500, {"error": f"{what}: {type(exc).__name__}: {exc}"})

    @app.post("/search")
    async def search(request: Request) -> Response:
        # The body was read (and bounded) by _Guard; parsing, validation and the
        # search itself are CPU work, run in the threadpool off the event loop.
        body = await request.body()
        limits = _Limits(worker.dim, max_k, max_batch)
        return _json_response(200, await run_in_threadpool(worker.search, body, limits))

    @app.get("/documents/{doc_id:path}")
    def document(doc_id: str, include: str | None = None) -> Response:
        return _json_response(200, worker.document(doc_id, include))

    @app.get("/stats")
    def stats() -> Response:
        return _json_response(200, worker.stats())

    @app.get("/healthz")
    async def healthz() -> Response:
        if not worker.is_open:
            return _json_response(503, {"status": "starting", "pid": os.getpid()})
        return _json_response(200, {"status": "ok", "pid": os.getpid()})

    return app


def _startup_failed(exc: Exception) -> None:
    """Tell `run` why this worker could not start, and stop the service at once.

    Without this, uvicorn's supervisor would notice only at its next health
    check (seconds later) and then exit 0, as if asked to stop.
    """
    msg = f"could not open the store: {' '.join(str(exc).split()) or type(exc).__name__}"
    path = os.environ.get(ENV_FAILURE_FILE)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(msg + "\n")
    supervisor = os.environ.get(ENV_SUPERVISOR, "")
    if supervisor.isdigit() and int(supervisor) == os.getppid():
        os.kill(int(supervisor), signal.SIGTERM)


def _env_number(name: str, default: float, cast: type) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise InvalidInputError(f"environment variable {name}={raw!r} is not a "
                                f"{cast.__name__}") from None


def app_from_env() -> FastAPI:
    """:func:`create_app` with its options from ``MMWAL_SERVE_*`` environment variables.

    The worker entry point of :func:`run` (uvicorn calls it in each worker);
    also usable by gunicorn:
    ``MMWAL_SERVE_PATH=my.store gunicorn -w 4 -k uvicorn_worker.UvicornWorker
    'mmwal.serve:app_from_env()'``.
    """
    path = os.environ.get(ENV_PATH)
    if not path:
        raise InvalidInputError(f"set {ENV_PATH} to the store directory to serve")
    return create_app(
        path, token=os.environ.get(ENV_TOKEN) or None,
        refresh_every=_env_number(ENV_REFRESH_EVERY, DEFAULT_REFRESH_EVERY, float),
        max_body_bytes=_env_number(ENV_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES, int),
        max_k=_env_number(ENV_MAX_K, DEFAULT_MAX_K, int),
        max_batch=_env_number(ENV_MAX_BATCH, DEFAULT_MAX_BATCH, int))


# ============================================================================ run
def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback
                               for a in addrs)


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's and mmwal's log lines, all on stderr (stdout stays free)."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "loggers": {name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
                    for name in ("uvicorn", "mmwal")},
    }


def run(path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
        workers: int = 1, token: str | None = None,
        refresh_every: float = DEFAULT_REFRESH_EVERY, insecure: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_level: str = "info") -> None:
    """Serve the store at ``path`` with ``workers`` uvicorn worker processes until stopped.

    Returns after SIGTERM or SIGINT, once the workers have finished their
    requests and closed their Readers.  Each worker opens its own Reader; this
    process never opens one.  ``token`` defaults to the ``MMWAL_SERVE_TOKEN``
    environment variable.

    Raises
    ------
    mmwal.errors.InvalidInputError
        A bad option, or a non-loopback ``host`` without a token and without
        ``insecure=True``.
    mmwal.MmwalError
        A worker could not open the store (the service stops), or the server
        could not start (the port is taken: see the log).
    """
    token = token if token is not None else (os.environ.get(ENV_TOKEN) or None)
    if token is not None and not token:
        raise InvalidInputError("the token must not be empty")
    if type(workers) is not int or workers < 1:
        raise InvalidInputError(f"workers must be an int >= 1, got {workers!r}")
    if not 0 <= port <= 65535:
        raise InvalidInputError(f"port must be in 0..65535, got {port}")
    if token is None and not insecure and not is_loopback(host):
        raise InvalidInputError(
            f"refusing to serve on {host} without a token: anyone who can reach it could read "
            f"the whole store. Set {ENV_TOKEN} (or --token), bind 127.0.0.1, or pass "
            "--insecure if the network is trusted", host=host)
    # Validate the options here, once, rather than in every worker.
    create_app(path, token=token, refresh_every=refresh_every, max_body_bytes=max_body_bytes)
    os.environ[ENV_PATH] = os.path.abspath(os.fspath(path))
    os.environ[ENV_REFRESH_EVERY] = repr(float(refresh_every))
    os.environ[ENV_MAX_BODY_BYTES] = str(max_body_bytes)
    if workers > 1:
        os.environ[ENV_SUPERVISOR] = str(os.getpid())
    else:  # one worker is this very process: nobody to watch
        os.environ.pop(ENV_SUPERVISOR, None)
    if token is not None:
        os.environ[ENV_TOKEN] = token
    else:
        os.environ.pop(ENV_TOKEN, None)
    if token is not None and not is_loopback(host):
        log.info("serving with a bearer token; put TLS in front of it on an untrusted network")
    extra: dict[str, Any] = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # A worker busy with a long search or refresh on a loaded machine must
        # not be mistaken for a hung one and killed (uvicorn's default is 5 s).
        extra["timeout_worker_healthcheck"] = 30
    fd, failure_file = tempfile.mkstemp(prefix="mmwal-serve-", suffix=".failed")
    os.close(fd)
    os.environ[ENV_FAILURE_FILE] = failure_file
    code: Any = 0
    try:
        try:
            uvicorn.run(
                "mmwal.serve:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_config=_log_config(log_level), access_log=False,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=10,
                **extra)
        except SystemExit as exc:  # uvicorn exits on a startup failure or a taken port
            code = exc.code
        with open(failure_file, encoding="utf-8") as f:
            failures = f.read().splitlines()
    finally:
        os.unlink(failure_file)
    if failures:
        raise MmwalError(failures[0], path=os.environ[ENV_PATH])
    if code not in (None, 0):
        raise MmwalError(f"the server stopped with exit code {code} (the log above says why)",
                         code=code)
