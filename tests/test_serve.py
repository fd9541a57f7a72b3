"""``mmwal serve`` end to end: a real 2-worker uvicorn server queried over HTTP.

The server runs as ``python -m mmwal serve`` in a subprocess on a free port; a
writer process appends (and checkpoints) while the test queries it; results are
then compared with a Reader opened by the test.  Every server started here is
stopped and reaped in a ``finally``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import mmwal
from mmwal import serve
from mmwal._types import Hit

DIM = 8
TOKEN = "t0k-en/with+odd=chars"
MAX_BODY = 64 * 1024
DEADLINE = 90.0  # bound on every wait below; a healthy run needs a few seconds

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy

WRITER = r"""
import sys, numpy as np, mmwal
path, start, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def vec(i):
    return np.random.default_rng(i).standard_normal(dim).astype(np.float32)
with mmwal.Store(path, durability="os") as s:
    for i in range(start, start + n):
        s.add(f"doc-{i}", vec(i), content=f"content {i}", metadata={"i": i})
        if i % 40 == 0:
            s.remove(f"doc-{i - 7}")
        if i == start + n // 2:
            s.checkpoint()   # the workers must follow the store to a new checkpoint
"""


def vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def _strict_json(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"the server wrote the non-JSON constant {name}")
    return json.loads(data, parse_constant=refuse)


def call(base: str, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with _OPENER.open(req, timeout=60) as resp:
            return resp.status, _strict_json(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, _strict_json(e.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL of the whole group; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    try:  # workers outliving their parent would be a bug; never leave them behind
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_server(path: str, tmp: Any, *args: str,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str, Any]:
    """Start ``mmwal serve`` on a free port and wait for /healthz (a few port retries)."""
    for attempt in range(3):
        port = _free_port()
        err_path = tmp / f"serve-{port}.err"
        err = open(err_path, "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmwal", "serve", path, "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})},
            start_new_session=True)  # its own group: the finally can kill every worker
        err.close()
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if call(base, "GET", "/healthz", token=None)[0] == 200:
                        return proc, base, err_path
                except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
                    pass
                time.sleep(0.1)
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
        text = err_path.read_text(errors="replace")
        if "address already in use" not in text.lower() or attempt == 2:
            pytest.fail(f"mmwal serve did not become healthy (exit {proc.returncode}):\n{text}")
    raise AssertionError("unreachable")


def _make_store(path: str, n: int) -> None:
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add_many([f"doc-{i}" for i in range(n)], np.stack([vec(i) for i in range(n)]),
                   contents=[f"content {i}" for i in range(n)],
                   metadatas=[{"i": i} for i in range(n)])
        s.checkpoint()


def _check_document(base: str, doc_id: str) -> None:
    status, doc = call(base, "GET", f"/documents/{doc_id}?include=embedding")
    if status == 404:  # removed by the writer since the search: allowed
        return
    assert status == 200, doc
    i = int(doc_id.split("-")[1])
    assert doc["id"] == doc_id and doc["content"] == f"content {i}"
    assert doc["metadata"] == {"i": i}
    np.testing.assert_array_equal(np.array(doc["embedding"], np.float32), vec(i))


def _pids_at(base: str, seq: int, token: str | None = TOKEN) -> set[int]:
    """Worker pids seen reporting ``seq`` (concurrent requests reach several workers)."""
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: call(base, "GET", "/stats", token=token), range(32)))
    assert all(s == 200 for s, _ in got), got
    return {st["pid"] for _, st in got if st["seq"] == seq}


def _store_files_open(pid: int, path: str) -> list[str]:
    """Store files mapped or open in process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/maps") as f:
        found = [line.split()[-1] for line in f if path in line]
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            found.append(target)
    return found


# ============================================================================ the server
def test_two_workers_serve_a_store_being_written(tmp_path):
    path = str(tmp_path / "store")
    _make_store(path, 200)
    proc, base, err_path = start_server(
        path, tmp_path, "--workers", "2", "--refresh-every", "0.2",
        "--max-body-bytes", str(MAX_BODY), env={serve.ENV_TOKEN: TOKEN})
    writer = None
    try:
        # The token came from the environment: it is not on any command line.
        if sys.platform == "linux":
            for pid in [proc.pid, *_children(proc.pid)]:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert TOKEN.encode() not in f.read()

        # -------- queries while a writer process appends, removes and checkpoints
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "200", "400", str(DIM)])
        rng = np.random.default_rng(7)
        served = 0
        while writer.poll() is None or served < 5:
            q = rng.standard_normal(DIM).tolist()
            status, got = call(base, "POST", "/search", {"vector": q, "k": 5})
            assert status == 200, got
            assert 1 <= len(got["hits"]) <= 5
            _check_document(base, got["hits"][0]["id"])
            served += 1
        assert writer.wait() == 0

        # -------- once every worker has refreshed past the last write: exact agreement
        with mmwal.Reader(path) as r:
            final = r.seq
            pids: set[int] = set()
            deadline = time.monotonic() + DEADLINE
            while len(pids) < 2 and time.monotonic() < deadline:
                pids |= _pids_at(base, final)
            assert len(pids) >= 2, f"fewer than 2 workers reached seq {final}: {pids}"
            assert proc.pid not in pids
            status, st = call(base, "GET", "/stats")
            assert status == 200 and st["documents"] == len(r) and st["dim"] == DIM
            assert st["checkpoint_id"] == r.checkpoint_id and st["refresh_errors"] == 0

            for metric in ("cosine", "dot", "l2"):
                Q = rng.standard_normal((3, DIM)).astype(np.float32)
                want = r.search(Q, k=7, metric=metric)
                for j in range(3):
                    _, one = call(base, "POST", "/search",
                                  {"vector": Q[j].tolist(), "k": 7, "metric": metric})
                    _same_hits(one["hits"], want[j])
                status, batch = call(base, "POST", "/search",
                                     {"vectors": Q.tolist(), "k": 7, "metric": metric,
                                      "exact": True, "where": None})
                assert status == 200 and len(batch["results"]) == 3
                for hits, w in zip(batch["results"], want):
                    _same_hits(hits, w)
            assert r.get("doc-193") is None  # removed by the writer
            for doc_id in ["doc-0", "doc-193", "doc-399", "doc-599"]:
                doc = r.get(doc_id)
                status, got = call(base, "GET", f"/documents/{doc_id}")
                if doc is None:
                    assert status == 404 and doc_id in got["error"]
                else:
                    assert status == 200 and "embedding" not in got
                    assert got == {"id": doc_id, "content": doc.content,
                                   "metadata": doc.metadata}

        # -------- the parent maps nothing of the store; each worker opened its own Reader
        if sys.platform == "linux":
            assert _store_files_open(proc.pid, path) == []
            for pid in pids:
                assert _store_files_open(pid, path), f"worker {pid} has no store file open"

        _check_auth(base)
        _check_bad_input(base)
        _check_sizes(base)

        # -------- SIGTERM: workers finish, close their Readers, everything exits 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        log = err_path.read_text()
        for pid in pids:
            assert f"worker {pid}: closed {path}" in log, log
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        _stop(proc)


def test_workers_stop_when_the_parent_is_killed(tmp_path):
    """kill -9 of the supervising process: its workers stop instead of serving on as orphans
    (which would also keep the port, so that a restart could not bind it)."""
    path = str(tmp_path / "store")
    _make_store(path, 20)
    proc, base, err_path = start_server(path, tmp_path, "--workers", "2")
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + DEADLINE
        while len(workers) < 2 and time.monotonic() < deadline:
            workers |= _pids_at(base, 20, token=None)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + DEADLINE
        while any(_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(p) for p in workers), err_path.read_text()
        assert "parent" in err_path.read_text()
    finally:
        _stop(proc)


def test_one_worker_serves_in_the_process_itself(tmp_path):
    """The default, --workers 1: no supervisor, the command's own process serves."""
    path = str(tmp_path / "store")
    _make_store(path, 20)
    proc, base, err_path = start_server(path, tmp_path, "--refresh-every", "0")
    try:
        status, st = call(base, "GET", "/stats", token=None)
        assert status == 200 and st["pid"] == proc.pid and st["refresh_every"] == 0
        status, got = call(base, "POST", "/search", {"vector": vec(4).tolist(), "k": 1},
                           token=None)
        assert status == 200 and got == {"hits": [{"id": "doc-4", "score": got["hits"][0]["score"]}]}
        assert abs(got["hits"][0]["score"] - 1.0) < 1e-5
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(DEADLINE) == 0
        assert f"worker {proc.pid}: closed {path}" in err_path.read_text()
    finally:
        _stop(proc)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may take its time)."""
    if sys.platform != "linux":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _same_hits(got: list[dict[str, Any]], want: list[Hit]) -> None:
    assert [h["id"] for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want],
                               rtol=0, atol=1e-5)


def _check_auth(base: str) -> None:
    body = {"vector": [0.0] * DIM}
    assert call(base, "POST", "/search", body)[0] == 200
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1], ""):
        for path, payload in (("/search", body), ("/stats", None), ("/documents/doc-0", None)):
            status, got = call(base, "POST" if payload else "GET", path, payload, token=token)
            assert status == 401, (token, path, got)
            assert "Bearer" in got["error"]
    status, _ = call(base, "GET", "/stats", token=None,
                     headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    assert call(base, "GET", "/healthz", token=None)[0] == 200  # for load balancers


BAD_SEARCHES: list[tuple[str, Any]] = [
    ("wrong dimension", {"vector": [0.5] * (DIM - 1)}),
    ("wrong dimension in a batch", {"vectors": [[0.5] * DIM, [0.5] * (DIM + 1)]}),
    ("a string in the vector", {"vector": ["0.5"] * DIM}),
    ("a bool in the vector", {"vector": [True] + [0.5] * (DIM - 1)}),
    ("null in the vector", {"vector": [None] + [0.5] * (DIM - 1)}),
    ("a nested list", {"vector": [[0.5]] * DIM}),
    ("vector is an object", {"vector": {"x": 1}}),
    ("beyond float32", {"vector": [1e39] + [0.5] * (DIM - 1)}),
    ("beyond float64", {"vector": [10**400] + [0.5] * (DIM - 1)}),
    ("k = 0", {"vector": [0.5] * DIM, "k": 0}),
    ("k < 0", {"vector": [0.5] * DIM, "k": -3}),
    ("k a float", {"vector": [0.5] * DIM, "k": 2.0}),
    ("k a string", {"vector": [0.5] * DIM, "k": "3"}),
    ("k a bool", {"vector": [0.5] * DIM, "k": True}),
    ("k over the cap", {"vector": [0.5] * DIM, "k": serve.DEFAULT_MAX_K + 1}),
    ("unknown metric", {"vector": [0.5] * DIM, "metric": "hamming"}),
    ("both vector and vectors", {"vector": [0.5] * DIM, "vectors": [[0.5] * DIM]}),
    ("neither vector nor vectors", {"k": 3}),
    ("empty batch", {"vectors": []}),
    ("batch over the cap", {"vectors": [[0.5] * DIM] * (serve.DEFAULT_MAX_BATCH + 1)}),
    ("malformed filter", {"vector": [0.5] * DIM, "where": ["source", "a.pdf"]}),
    ("exact not a bool", {"vector": [0.5] * DIM, "exact": "yes"}),
    ("unknown field", {"vector": [0.5] * DIM, "top_k": 3}),
    ("not an object", [0.5] * DIM),
]
BAD_RAW = [
    ("malformed JSON", b'{"vector": [0.5, 0.5'),
    ("NaN", ('{"vector": [NaN' + ", 0.5" * (DIM - 1) + "]}").encode()),
    ("Infinity", ('{"vector": [-Infinity' + ", 0.5" * (DIM - 1) + "]}").encode()),
    ("not UTF-8", b'{"vector": "\xff\xfe"}'),
    ("empty body", b""),
]


def _check_bad_input(base: str) -> None:
    for what, body in BAD_SEARCHES:
        status, got = call(base, "POST", "/search", body)
        assert status == 422, (what, got)
        assert isinstance(got["error"], str) and got["error"], what
    for what, raw in BAD_RAW:
        status, got = call(base, "POST", "/search", raw=raw)
        assert status == 422, (what, got)
    # A well-formed filter is applied: only matching documents come back.
    status, got = call(base, "POST", "/search",
                       {"vector": [0.5] * DIM, "k": 20, "where": {"i": {"$lt": 10}}})
    assert status == 200 and got["hits"] and all(int(h["id"][4:]) < 10 for h in got["hits"])
    status, got = call(base, "POST", "/search",
                       {"vector": [0.5] * DIM, "where": {"i": {"$like": 10}}})
    assert status == 422 and '["i"]' in got["error"]
    # exact=false is answered (exactly) rather than refused.
    assert call(base, "POST", "/search", {"vector": [0.5] * DIM, "exact": False})[0] == 200
    assert call(base, "GET", "/documents/no-such-doc")[0] == 404
    assert call(base, "GET", "/documents/doc-1?include=everything")[0] == 422
    assert call(base, "GET", "/no-such-route")[0] == 404


def _check_sizes(base: str) -> None:
    big = json.dumps({"vector": [0.5] * DIM, "pad": "x" * MAX_BODY}).encode()
    status, got = call(base, "POST", "/search", raw=big)
    assert status == 413 and "larger than" in got["error"]
    # Without Content-Length (chunked), the limit holds while the body is read.
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        chunks = iter([big[i:i + 4096] for i in range(0, len(big), 4096)])
        conn.request("POST", "/search", body=chunks, encode_chunked=True,
                     headers={"Authorization": f"Bearer {TOKEN}",
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413, resp.read()
    finally:
        conn.close()
    # Just under the limit is served.
    ok = json.dumps({"vectors": [[0.25] * DIM] * 200, "k": 1}).encode()
    assert len(ok) < MAX_BODY
    status, got = call(base, "POST", "/search", raw=ok)
    assert status == 200 and len(got["results"]) == 200


# ============================================================================ refusals
def _serve_cli(*args: str, env: dict[str, str] | None = None,
               code: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != serve.ENV_TOKEN}
    cmd = ([sys.executable, "-c", code, *args] if code
           else [sys.executable, "-m", "mmwal", "serve", *args])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**environ, **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        _stop(proc)  # a server that started after all: stop its workers too
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_non_loopback_host_without_token_is_refused(tmp_path):
    path = str(tmp_path / "store")
    _make_store(path, 3)
    for host in ("0.0.0.0", "::"):
        res = _serve_cli(path, "--host", host, "--port", str(_free_port()))
        assert res.returncode == 2, res
        assert "without a token" in res.stderr and "--insecure" in res.stderr
        assert serve.ENV_TOKEN in res.stderr


def test_missing_store_exit_2(tmp_path):
    res = _serve_cli(str(tmp_path / "nothing"), "--port", str(_free_port()))
    assert res.returncode == 2 and "no mmwal store" in res.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_store_the_workers_cannot_open_fails_the_command(tmp_path, workers):
    """Damage found when a worker opens its Reader: exit 1 naming it, never 0."""
    path = str(tmp_path / "store")
    _make_store(path, 3)
    emb = next(os.path.join(d, "embeddings.npy") for d, _, files in os.walk(path)
               if "embeddings.npy" in files)
    os.truncate(emb, 10)
    res = _serve_cli(path, "--workers", workers, "--port", str(_free_port()))
    assert res.returncode == 1, res
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mmwal serve: ") and "could not open the store" in last, last
    assert "embeddings.npy" in last and "mmwal verify" in last


def test_missing_extra_names_the_install_command(tmp_path):
    path = str(tmp_path / "store")
    _make_store(path, 3)
    # sys.modules[name] = None makes `import name` raise ImportError, as if not installed.
    code = ("import sys; sys.modules['fastapi'] = None; from mmwal.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    res = _serve_cli("serve", path, code=code)
    assert res.returncode == 2, res
    assert "pip install 'mmwal[server]'" in res.stderr
    res = _serve_cli(code="import sys; sys.modules['uvicorn'] = None; import mmwal.serve")
    assert res.returncode == 1 and "pip install 'mmwal[server]'" in res.stderr


def test_core_import_does_not_load_the_server():
    code = ("import sys, mmwal, mmwal.cli; mmwal.cli.build_parser(['serve']); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'mmwal.serve') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=DEADLINE)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ============================================================================ units
def test_non_finite_scores_still_make_valid_json():
    hits = [Hit("a", float("inf")), Hit("b", float("nan")), Hit("c", 0.5)]
    out = serve._dumps({"hits": serve._hits(hits)})
    assert _strict_json(out) == {"hits": [{"id": "a", "score": None},
                                          {"id": "b", "score": None},
                                          {"id": "c", "score": 0.5}]}
    doc = serve._jsonable({"m": {"x": float("-inf"), "b": b"\x00\x01", "t": (1, 2.5)}})
    assert _strict_json(serve._dumps(doc)) == {"m": {"x": None, "b": "AAE=", "t": [1, 2.5]}}


def test_is_loopback():
    for host in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"):
        assert serve.is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "no-such-host.invalid"):
        assert not serve.is_loopback(host), host


def test_create_app_refuses_bad_options(tmp_path):
    for kwargs in ({"refresh_every": -1.0}, {"refresh_every": float("nan")},
                   {"max_body_bytes": 0}, {"max_k": True}, {"token": ""}):
        with pytest.raises(mmwal.MmwalError):
            serve.create_app(str(tmp_path), **kwargs)


def test_refresh_failure_keeps_the_last_view(tmp_path, monkeypatch):
    """A failing refresh is counted and logged; requests keep the last good view."""
    path = str(tmp_path / "store")
    _make_store(path, 5)
    w = serve._Worker(path, refresh_every=0)
    w.open()
    try:
        def broken(self) -> None:
            raise mmwal.CorruptionError("simulated damage", path=path, offset=0)
        monkeypatch.setattr(mmwal.Reader, "_refresh_state", broken)
        w.refresh()
        w.refresh()
        st = w.stats()
        assert st["refresh_errors"] == 2 and "simulated damage" in st["last_refresh_error"]
        assert st["documents"] == 5
        limits = serve._Limits(DIM, 10, 10)
        got = w.search(json.dumps({"vector": vec(3).tolist(), "k": 1}).encode(), limits)
        assert got["hits"][0]["id"] == "doc-3"
    finally:
        w.close()
    with pytest.raises(serve._Reply) as e:
        w.stats()
    assert e.value.status == 503


def test_requests_and_the_background_refresh_run_together(tmp_path):
    """Requests from many threads while the background thread refreshes: no errors.

    Requests take no lock: each searches the snapshot current when it started.
    Before snapshots, a search racing a refresh raised "operands could not be
    broadcast" within a few hundred writes.
    """
    path = str(tmp_path / "store")
    _make_store(path, 50)
    w = serve._Worker(path, refresh_every=0.0005)
    w.open()
    errors: list[BaseException] = []
    stop = threading.Event()
    body = json.dumps({"vector": vec(1).tolist(), "k": 3}).encode()

    def requests(searches_only: bool) -> None:
        try:
            while not stop.is_set():
                assert w.search(body, serve._Limits(DIM, 10, 10))["hits"][0]["id"] == "doc-1"
                if not searches_only:
                    assert w.document("doc-1", "embedding")["embedding"] == vec(1).tolist()
                    w.stats()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=requests, args=(i > 0,)) for i in range(4)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: races show within a few writes
    try:
        for t in threads:
            t.start()
        with mmwal.Store(path, durability="os") as s:
            for i in range(50, 2000):
                s.add_many([f"doc-{i}", f"doc-x{i}"], [vec(i), vec(i + 7)])
                if i % 3 == 0:
                    s.remove(f"doc-{i - 2}")
                if i % 400 == 0:
                    s.checkpoint()
                if errors:
                    break
        with mmwal.Reader(path) as r:
            final, n = r.seq, len(r)
        deadline = time.monotonic() + DEADLINE
        while not errors and w.stats()["seq"] != final and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(switch)
        st = w.stats()
        w.close()
    assert not errors, errors
    assert st["seq"] == final and st["documents"] == n and st["refresh_errors"] == 0
