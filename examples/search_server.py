#!/usr/bin/env python
"""A pool of query worker processes sharing one checkpoint: a small HTTP search server.

The pre-fork model of gunicorn, with the standard library only: the parent
binds ONE listening socket and starts N worker processes that all accept on
it.  Each worker opens its own ``mmwal.Reader``; they all map the same
checkpoint files read-only, so the embeddings sit in memory once (in the page
cache), however many workers there are - ``/stats`` shows each worker's RSS and
PSS of the mapping.  Before each request a worker calls ``reader.refresh()``
(one ``stat`` of MANIFEST when nothing changed), so a document written by any
process is searchable on the next request.

Endpoints::

    GET /search?q=battery+storage&k=5   top-k hits, with content and metadata
    GET /doc/<id>                       one document
    GET /stats                          worker pid, documents, seq, memory of the mapping

By default it listens on 127.0.0.1 on a free port, makes a few requests to
itself, prints what came back and exits.  ``--serve`` keeps it running::

    python examples/search_server.py
    python examples/search_server.py --serve --port 8080 --workers 4
    curl 'http://127.0.0.1:8080/search?q=solar+battery&k=3'
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
from _embed import DIM, embed

import mmwal


# ------------------------------------------------------------------ the worker side
def mapping_memory(suffix: str = "embeddings.npy") -> dict[str, int] | None:
    """RSS and PSS (bytes) of this process's mappings of ``*suffix`` (Linux only)."""
    try:
        with open("/proc/self/smaps", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    mem = {"rss": 0, "pss": 0}
    inside = False
    for line in lines:
        first = line.split(None, 1)[0] if line else ""
        if "-" in first and not first.endswith(":"):  # "start-end perms offset dev inode path"
            inside = line.rstrip().endswith(suffix)
        elif inside and first in ("Rss:", "Pss:"):
            mem[first[:-1].lower()] += int(line.split()[1]) * 1024
    return mem


class Handler(BaseHTTPRequestHandler):
    server: Any  # our HTTPServer, with a .reader attribute

    def do_GET(self) -> None:
        reader: mmwal.Reader = self.server.reader
        reader.refresh()  # see writes made since the last request
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/search":
            qs = urllib.parse.parse_qs(url.query)
            q = qs.get("q", [""])[0]
            k = int(qs.get("k", ["5"])[0])
            hits = reader.search(embed([q])[0], k=k)
            body: Any = {"query": q, "pid": os.getpid(), "hits": [
                {"id": h.id, "score": round(h.score, 4), "content": reader[h.id].content,
                 "metadata": reader[h.id].metadata} for h in hits]}
        elif url.path.startswith("/doc/"):
            doc = reader.get(urllib.parse.unquote(url.path[len("/doc/"):]))
            if doc is None:
                return self.reply(404, {"error": "no such document"})
            body = {"id": doc.id, "content": doc.content, "metadata": doc.metadata}
        elif url.path == "/stats":
            body = {"pid": os.getpid(), "documents": len(reader), "seq": reader.seq,
                    "checkpoint": reader.checkpoint_id, "embeddings_mapping": mapping_memory()}
        else:
            return self.reply(404, {"error": "try /search?q=..., /doc/<id> or /stats"})
        self.reply(200, body)

    def reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a real server would log to a file


def serve(sock: socket.socket, store_path: str) -> None:
    """One worker process: its own Reader, accepting on the shared socket."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly: finally runs
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    server = HTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock  # inherited, already listening
    with mmwal.Reader(store_path) as reader:
        server.reader = reader  # type: ignore[attr-defined]
        _ = reader.embeddings.shape  # map the checkpoint before the first request
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()


# ------------------------------------------------------------------ the parent side
def build_store(path: str, n: int) -> None:
    """A store of ``n`` small documents about four topics, checkpointed."""
    topics = {"energy": "solar battery grid wind storage inverter",
              "health": "patient vaccine trial dosage therapy hospital",
              "finance": "revenue earnings dividend portfolio bond audit",
              "software": "database latency cache kernel query memory"}
    rng = np.random.default_rng(0)
    names = list(topics)
    texts, metas = [], []
    for i in range(n):
        topic = names[i % len(names)]
        words = topics[topic].split()
        texts.append(f"{topic} item {i}: " + " ".join(rng.choice(words, size=10)))
        metas.append({"topic": topic, "n": i})
    with mmwal.Store(path, dim=DIM, durability="os") as store:
        for a in range(0, n, 1000):
            store.add_many([f"doc-{i}" for i in range(a, min(a + 1000, n))],
                           embed(texts[a:a + 1000]), texts[a:a + 1000], metas[a:a + 1000])
        store.checkpoint()


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return json.load(resp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="an existing store to serve (default: build a small one)")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--port", type=int, default=0, help="default: a free port")
    ap.add_argument("--docs", type=int, default=5_000, help="size of the built store")
    ap.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="mmwal-server-")
    store_path = args.store or os.path.join(tmp, "store")
    procs: list[mp.Process] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if not args.store:
            t0 = time.perf_counter()
            build_store(store_path, args.docs)
            print(f"built a store of {args.docs:,} documents in {time.perf_counter() - t0:.1f} s")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))  # loopback only
        sock.listen(64)
        port = sock.getsockname()[1]
        procs = [mp.Process(target=serve, args=(sock, store_path), daemon=True)
                 for _ in range(args.workers)]
        for p in procs:
            p.start()
        print(f"{args.workers} query worker processes serve http://127.0.0.1:{port}/")
        if args.serve:
            print("Ctrl-C to stop")
            while True:
                time.sleep(3600)

        # A few requests of our own, 4 at a time, so several workers answer.
        queries = ["solar battery storage", "vaccine trial dosage", "dividend and bond audit",
                   "database cache latency"] * 3
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda q: get(port, "/search?k=2&q="
                                                  + urllib.parse.quote(q)), queries))
        for ans in answers[:4]:
            top = ans["hits"][0]
            print(f"  {ans['query']!r:28} -> {top['id']:<10} {top['score']:.3f} "
                  f"{top['content'][:40]}... (worker {ans['pid']})")
        pids = {a["pid"] for a in answers}
        print(f"{len(answers)} searches answered by {len(pids)} of {args.workers} workers")

        # A write from another process is visible on the next request.
        with mmwal.Store(store_path) as store:
            text = "tidal lagoon power plant opens"
            store.add("doc-new", embed([text])[0], content=text, metadata={"topic": "energy"})
        ans = get(port, "/search?k=1&q=" + urllib.parse.quote("tidal lagoon"))
        print(f"after a new write, the top hit is {ans['hits'][0]['id']!r} "
              f"(worker {ans['pid']} refreshed)")
        assert ans["hits"][0]["id"] == "doc-new"
        assert get(port, "/doc/doc-new")["content"] == text

        # Memory: every worker maps the whole embeddings file; PSS splits the
        # shared pages between them.
        stats = {}
        for _ in range(20):
            s = get(port, "/stats")
            stats[s["pid"]] = s
            if len(stats) == len(procs):
                break
        mems = [s["embeddings_mapping"] for s in stats.values() if s["embeddings_mapping"]]
        if mems:
            size = os.path.getsize(os.path.join(
                store_path, "checkpoints", f"{next(iter(stats.values()))['checkpoint']:08d}",
                "embeddings.npy"))
            print("embeddings.npy is {:.1f} MB; in the workers seen: RSS {} MB, PSS {} MB".format(
                size / 1e6, " / ".join(f"{m['rss'] / 1e6:.1f}" for m in mems),
                " / ".join(f"{m['pss'] / 1e6:.1f}" for m in mems)))
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=10)
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
