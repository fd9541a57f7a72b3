"""The stress workload: every document is a pure function of (seed, writer, op, j).

A writer, a reader and the verifier compute the same id, vector, content and
metadata from the same integers, so no payload ever crosses a pipe and every
check is exact: a reader compares what it sees with what must be there, bit for
bit, without the writer's help.

* id ``w{writer}-{op}-{j}``: op ``op`` of a writer is one ``add`` (``j == 0``) or
  one ``add_many`` of ``n`` documents (``j`` in ``0..n-1``);
* vector: ``dim`` float32 values ``k / 4096`` for 16-bit integers ``k`` drawn
  from a splitmix64 hash of the document key and the seed - exact in float32,
  bounded (so exact search is numerically stable) and never all-zero;
* content: a short tag naming the document plus a slice of mixed-script text;
* metadata: a small dict naming the document (sometimes ``None``).

Churners work on a second, small id space that writers never touch:
``c{churner}-{key}`` for ``key`` in ``0..keys-1``.  Op ``k`` of churner ``c``
either upserts one key (``add`` of an id that may exist: a replace) or
removes one (which may be absent); its value names ``k``, so whoever sees a
churn document knows exactly which op wrote it.  Replaced and removed rows are
what makes deletion vectors and compactions happen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "ChurnOp",
    "OpPlan",
    "churn_doc",
    "churn_id",
    "churn_op",
    "doc_content",
    "doc_id",
    "doc_key",
    "doc_metadata",
    "op_plan",
    "parse_churn_id",
    "parse_id",
    "vectors",
]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
#: Writers, ops per writer and documents per op must fit the document key.
MAX_WRITERS = 1 << 16
MAX_OPS = 1 << 28
MAX_BATCH = 1 << 16
_FILLER = ("The quick brown fox jumps over the lazy dog; "
           "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. "
           "いろはにほへと ちりぬるを わかよたれそ つねならむ \u2713 "
           "Съешь же ещё этих мягких французских булок, да выпей чаю. ")
_TAGS = ("alpha", "beta", "gamma", "delta", "epsilon")


def _mix(z: int) -> int:
    """splitmix64's finaliser on a Python int (cheap, no numpy scalar warnings)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping multiplication)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))  # type: ignore[no-any-return]


def doc_key(w: int, k: int, j: int) -> int:
    """The unique integer of document ``j`` of op ``k`` of writer ``w``."""
    return (w << 44) | (k << 16) | j


def doc_id(w: int, k: int, j: int) -> str:
    return f"w{w}-{k}-{j}"


def parse_id(s: str) -> tuple[int, int, int] | None:
    """(writer, op, j) of a workload id, or None when ``s`` is not one."""
    if not s.startswith("w"):
        return None
    parts = s[1:].split("-")
    if len(parts) != 3:
        return None
    try:
        w, k, j = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not (0 <= w < MAX_WRITERS and 0 <= k < MAX_OPS and 0 <= j < MAX_BATCH):
        return None
    if doc_id(w, k, j) != s:  # "w01-2-3" and friends are not ours
        return None
    return w, k, j


def vectors(seed: int, w: Any, k: Any, j: Any, dim: int) -> np.ndarray:
    """The (n, dim) float32 vectors of documents (w, k, j) (arrays or ints, broadcast)."""
    wa = np.atleast_1d(np.asarray(w, dtype=np.uint64))
    ka = np.atleast_1d(np.asarray(k, dtype=np.uint64))
    ja = np.atleast_1d(np.asarray(j, dtype=np.uint64))
    key = (wa << np.uint64(44)) | (ka << np.uint64(16)) | ja
    base = _mix_array(key ^ np.uint64(_mix(seed * 2 + 1)))
    cols = np.arange(dim, dtype=np.uint64) * np.uint64(_GOLDEN)
    h = _mix_array(base[:, None] + cols[None, :])
    v = ((h >> np.uint64(48)).astype(np.int64) - 32768).astype(np.float32)
    v[:, 0] = np.where(v[:, 0] == 0, np.float32(1.0), v[:, 0])  # never all-zero
    return v / np.float32(4096.0)  # type: ignore[no-any-return]


def doc_content(seed: int, w: int, k: int, j: int) -> str:
    h = _mix(doc_key(w, k, j) ^ (seed * 0x51ED27 + 7))
    n = h % 97
    if n < 5:
        return ""  # empty content is legal and must round-trip
    start = (h >> 8) % len(_FILLER)
    text = (_FILLER[start:] + _FILLER)[:n]
    return f"{doc_id(w, k, j)}|{text}"


def doc_metadata(seed: int, w: int, k: int, j: int, n: int) -> dict[str, Any] | None:
    h = _mix(doc_key(w, k, j) ^ (seed * 0x2545F491 + 11))
    if h % 13 == 0:
        return None
    return {"w": w, "op": k, "j": j, "n": n, "tag": _TAGS[h % 5],
            "x": ((h >> 20) % 1000) / 8.0, "flags": [bool(h & 1), (h >> 3) % 7, None]}


class OpPlan:
    """What op ``k`` of writer ``w`` does: ``n`` documents, by ``add`` or ``add_many``."""

    __slots__ = ("k", "many", "n", "w")

    def __init__(self, w: int, k: int, n: int, many: bool) -> None:
        self.w, self.k, self.n, self.many = w, k, n, many

    def ids(self) -> list[str]:
        return [doc_id(self.w, self.k, j) for j in range(self.n)]

    def vectors(self, seed: int, dim: int) -> np.ndarray:
        return vectors(seed, self.w, self.k, np.arange(self.n), dim)

    def contents(self, seed: int) -> list[str]:
        return [doc_content(seed, self.w, self.k, j) for j in range(self.n)]

    def metadatas(self, seed: int) -> list[dict[str, Any] | None]:
        return [doc_metadata(seed, self.w, self.k, j, self.n) for j in range(self.n)]


def op_plan(seed: int, w: int, k: int, batch_size: int, many_percent: int) -> OpPlan:
    """The plan of op ``k`` of writer ``w``: ``many_percent`` % of ops are ``add_many``.

    An ``add_many`` holds 1 to ``batch_size`` documents (a one-document batch
    goes through ``add_many`` too: both paths must behave the same).
    """
    h = _mix(doc_key(w, k, 0) ^ (seed * 0x9E3779B1 + 3))
    if batch_size > 1 and h % 100 < many_percent:
        return OpPlan(w, k, 1 + (h >> 8) % batch_size, True)
    return OpPlan(w, k, 1, False)


# ============================================================================ churn
#: Churn vectors are drawn as documents of this pseudo-writer (minus the churner):
#: far above any real writer (``--writers`` is at most 256).
CHURN_WRITER = MAX_WRITERS - 1
#: Share (percent) of churn ops that remove their key.
CHURN_REMOVE_PERCENT = 30


def churn_id(c: int, key: int) -> str:
    return f"c{c}-{key}"


def parse_churn_id(s: str) -> tuple[int, int] | None:
    """(churner, key) of a churn id, or None when ``s`` is not one."""
    if not s.startswith("c"):
        return None
    a, sep, b = s[1:].partition("-")
    if not sep:
        return None
    try:
        c, key = int(a), int(b)
    except ValueError:
        return None
    if not (0 <= c < 256 and 0 <= key < MAX_BATCH) or churn_id(c, key) != s:
        return None
    return c, key


class ChurnOp:
    """Op ``k`` of churner ``c``: upsert or remove key ``key``."""

    __slots__ = ("c", "k", "key", "remove")

    def __init__(self, c: int, k: int, key: int, remove: bool) -> None:
        self.c, self.k, self.key, self.remove = c, k, key, remove

    @property
    def id(self) -> str:
        return churn_id(self.c, self.key)


def churn_op(seed: int, c: int, k: int, keys: int) -> ChurnOp:
    """The plan of op ``k`` of churner ``c`` over ``keys`` keys."""
    h = _mix(doc_key(CHURN_WRITER - c, k, 0) ^ (seed * 0x2F1B3C5D + 17))
    return ChurnOp(c, k, int(h % keys), (h >> 32) % 100 < CHURN_REMOVE_PERCENT)


def churn_doc(seed: int, c: int, k: int, key: int,
              dim: int) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Vector, content and metadata an upsert (op ``k`` of churner ``c``) writes to ``key``."""
    vec = vectors(seed, CHURN_WRITER - c, k, key, dim)[0]
    return vec, f"{churn_id(c, key)} op {k}", {"churn": c, "key": key, "op": k}
