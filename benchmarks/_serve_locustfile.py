"""Locust user for ``bench_serve.py``: closed-loop clients (no wait between requests)
sending ``POST /search`` with a random query vector (k=10) and, one request in
``BENCH_DOC_EVERY``, ``GET /documents/{id}`` of a random document of the initial store.

Configured through the environment: ``BENCH_DIM``, ``BENCH_N`` (ids ``doc-0 ..
doc-{N-1}`` exist), ``BENCH_SEARCH_WEIGHT`` and ``BENCH_DOC_WEIGHT`` (task weights).
Any status other than 200 counts as a failure (locust's default).
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant, task

DIM = int(os.environ.get("BENCH_DIM", "384"))
N = int(os.environ.get("BENCH_N", "1000"))
SEARCH_WEIGHT = int(os.environ.get("BENCH_SEARCH_WEIGHT", "4"))
DOC_WEIGHT = int(os.environ.get("BENCH_DOC_WEIGHT", "1"))


class Client(FastHttpUser):
    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 30.0

    @task(SEARCH_WEIGHT)
    def search(self) -> None:
        vec = [random.gauss(0.0, 1.0) for _ in range(DIM)]
        self.client.post("/search", json={"vector": vec, "k": 10}, name="POST /search")

    @task(DOC_WEIGHT)
    def document(self) -> None:
        self.client.get(f"/documents/doc-{random.randrange(N)}", name="GET /documents/{id}")
