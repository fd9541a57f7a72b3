"""The contender service for ``bench_serve.py``: the same endpoints as ``mmwal serve``
over a LanceDB table, as a user would write it (FastAPI, sync endpoints so that the
blocking search runs in the threadpool, one LanceDB connection per worker opened in
the lifespan, i.e. after the fork/spawn).

Run by the benchmark as ``uvicorn _serve_lance_app:app --app-dir benchmarks --workers 4``
with ``BENCH_LANCE_PATH`` (database directory) and ``BENCH_LANCE_REFRESH`` (seconds
between checks for a newer table version: LanceDB's ``read_consistency_interval``, the
counterpart of ``mmwal serve --refresh-every``).  Table ``docs``: ``id`` (string, with
a scalar index), ``content``, ``source``, ``page``, ``vector`` (fixed-size list of
float32).  Importing this module has no side effects beyond building the app object.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

TABLE = "docs"
_state: dict[str, Any] = {}


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    import lancedb

    interval = float(os.environ.get("BENCH_LANCE_REFRESH", "1"))
    db = lancedb.connect(os.environ["BENCH_LANCE_PATH"],
                         read_consistency_interval=_dt.timedelta(seconds=interval))
    _state["table"] = db.open_table(TABLE)
    yield
    _state.clear()


app = FastAPI(lifespan=_lifespan)


class SearchBody(BaseModel):
    vector: list[float]
    k: int = 10


@app.post("/search")
def search(body: SearchBody) -> dict[str, Any]:
    rows = (_state["table"].search(body.vector).distance_type("cosine")
            .select(["id", "_distance"]).limit(body.k).to_list())
    return {"hits": [{"id": r["id"], "score": 1.0 - float(r["_distance"])} for r in rows]}


@app.get("/documents/{doc_id}")
def document(doc_id: str) -> dict[str, Any]:
    quoted = doc_id.replace("'", "''")
    rows = (_state["table"].search().where(f"id = '{quoted}'")
            .select(["id", "content", "source", "page"]).limit(1).to_list())
    if not rows:
        raise HTTPException(404, f"no document {doc_id!r}")
    r = rows[0]
    return {"id": r["id"], "content": r["content"],
            "metadata": {"source": r["source"], "page": r["page"]}}


@app.get("/stats")
def stats() -> dict[str, Any]:
    tbl = _state["table"]
    return {"pid": os.getpid(), "documents": tbl.count_rows(), "version": tbl.version}


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok", "pid": os.getpid()}
