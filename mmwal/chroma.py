"""Chroma's client API over mmwal stores, shared safely by many processes.

Switch an application from Chroma by changing one import::

    import mmwal.chroma as chromadb          # was: import chromadb
    client = chromadb.PersistentClient("./db")
    col = client.get_or_create_collection("docs", metadata={"hnsw:space": "cosine"})
    col.add(ids=["a"], embeddings=[[0.1, 0.2]], documents=["hello"], metadatas=[{"k": 1}])
    col.query(query_embeddings=[[0.1, 0.2]], n_results=5, where={"k": 1})

Names, arguments, return shapes (``GetResult`` / ``QueryResult`` dicts of
lists, embeddings as numpy arrays), include defaults, distances and orders are
those of chromadb 1.5.9; every difference is listed in docs/integrations.md
("Migrating from Chroma").  chromadb itself is not needed at run time.

Layout under the client ``path``::

    chroma.json                 the registry: every collection's id, name, metadata,
                                space; replaced atomically (temp, fsync, rename)
    locks/client.lock           flock taken to create, rename or delete a collection
    collections/<id>/write.lock flock held by a writer of that collection
    collections/<id>/store/     the collection's mmwal store (made by the first add)

Collections live in directories named by their id (a UUID), never by their
name, so a handle kept by a process on a deleted collection can never write
into a new collection created later with the same name.

Concurrency: every operation first checks the registry (one ``stat``; the
file is re-read only when it changed), so a collection deleted or renamed by
another process is noticed at once.  Writes of one collection are serialised
across processes by its ``write.lock`` for the time of the check, the
read-modify-write Chroma's semantics need (``add`` ignores existing ids,
``update`` ignores missing ones and merges metadata) and the append; the
fsync happens after the lock is released, so concurrent durable writers share
it (group commit).  ``delete_collection`` removes the entry from the registry
(from then on every process gets :class:`NotFoundError`), takes the write
lock (waiting for a write in progress in another process to finish), and
removes the directory.  A read running in another process at that moment
completes on its mapped files or raises :class:`NotFoundError`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from . import _fsutil
from ._lock import FileLock
from ._reader import Reader
from ._store import Store
from ._types import Config
from .errors import DimensionError, InvalidInputError, MmwalError, StorageIOError

__all__ = [
    "ChromaError",
    "Collection",
    "DuplicateIDError",
    "EmbeddingFunction",
    "GetResult",
    "InvalidArgumentError",
    "InvalidDimensionError",
    "NotFoundError",
    "PersistentClient",
    "QueryResult",
    "UniqueConstraintError",
    "errors",
    "import_chroma",
]


# ============================================================================ errors
class ChromaError(MmwalError):
    """Root of the errors of :mod:`mmwal.chroma` (named like chromadb's)."""


class NotFoundError(ChromaError, ValueError):
    """No collection of that name (or id): it was never created, or was deleted.

    Also a ``ValueError``, which chromadb before 0.5 raised for a missing
    collection.
    """


class UniqueConstraintError(ChromaError, ValueError):
    """``create_collection`` (or ``modify(name=...)``) of a name already taken."""


class InvalidArgumentError(ChromaError, InvalidInputError):
    """An argument was refused before anything was written (also a ``ValueError``)."""


class DuplicateIDError(InvalidArgumentError):
    """The same id appears twice in one call."""


class InvalidDimensionError(InvalidArgumentError, DimensionError):
    """A vector's dimension differs from the collection's."""


class MissingEmbeddingFunctionError(InvalidArgumentError):
    """Documents (or query texts) without embeddings, and no embedding function."""


class errors:  # noqa: N801 - a namespace named like the module ``chromadb.errors``
    """``chromadb.errors`` look-alike: ``mmwal.chroma.errors.NotFoundError`` etc."""

    ChromaError = ChromaError
    NotFoundError = NotFoundError
    UniqueConstraintError = UniqueConstraintError
    InvalidArgumentError = InvalidArgumentError
    DuplicateIDError = DuplicateIDError
    InvalidDimensionError = InvalidDimensionError
    MissingEmbeddingFunctionError = MissingEmbeddingFunctionError


# ============================================================================ types
class EmbeddingFunction(Protocol):
    """Chroma's embedding-function protocol: texts in, one vector per text out."""

    def __call__(self, input: list[str]) -> Any: ...


GetResult = dict[str, Any]
QueryResult = dict[str, Any]

_SPACES = ("l2", "cosine", "ip")
_INCLUDE_ALL = ("documents", "embeddings", "metadatas", "distances", "uris", "data")
_GET_DEFAULT = ("metadatas", "documents")
_QUERY_DEFAULT = ("metadatas", "documents", "distances")
_PEEK_INCLUDE = ("metadatas", "documents", "embeddings")
# The record fields Chroma has and an mmwal document has not (first-insertion
# order, "document is None", uri) travel in the metadata under this key, which
# no Chroma metadata can hold (Chroma refuses keys it cannot filter on; this
# one starts with NUL and is refused here).  Filters never name it.
_HIDDEN = "\x00chroma"
_DOC_NONE = 1
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]")
_INT64 = (-(2**63), 2**63 - 1)
REGISTRY_FORMAT = 1
_MAX_REGISTRY = 64 << 20


def _bad(msg: str, cls: type[InvalidArgumentError] = InvalidArgumentError,
         **facts: Any) -> InvalidArgumentError:
    return cls(msg, **facts)


def validate_name(name: Any) -> str:
    """Check a collection name by Chroma's rules; return it."""
    if not isinstance(name, str):
        raise _bad(f"collection name must be a str, got {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise _bad(f"invalid collection name {name[:80]!r}: expected 3-512 characters from "
                   "[a-zA-Z0-9._-], starting and ending with a character in [a-zA-Z0-9]",
                   name=name)
    if ".." in name:
        raise _bad(f"invalid collection name {name!r}: two consecutive periods (..)",
                   name=name)
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return name
    raise _bad(f"invalid collection name {name!r}: a valid IPv4 address", name=name)


def _space_of(metadata: Mapping[str, Any] | None, configuration: Any) -> str:
    space = None
    if metadata is not None and "hnsw:space" in metadata:
        space = metadata["hnsw:space"]
    if isinstance(configuration, Mapping):
        hnsw = configuration.get("hnsw") or {}
        if isinstance(hnsw, Mapping) and hnsw.get("space") is not None:
            space = hnsw["space"]
    if space is None:
        return "l2"
    if space not in _SPACES:
        raise _bad(f"hnsw:space must be one of {_SPACES}, got {space!r}", got=space)
    return str(space)


def _check_collection_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise _bad(f"collection metadata must be a dict or None, got {type(metadata).__name__}")
    if not metadata:
        raise _bad("collection metadata cannot be empty: pass None instead of {}")
    out = dict(metadata)
    _check_record_metadata(out, "collection metadata", allow_none=False)
    return out


def _check_scalar(v: Any, where: str) -> None:
    if isinstance(v, (bool, str)):
        return
    if isinstance(v, int):
        if not _INT64[0] <= v <= _INT64[1]:
            raise _bad(f"{where}: int {v} outside the signed 64-bit range")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _bad(f"{where}: {v} is not a finite float (chromadb 1.5.9 accepts it and "
                       "silently drops it); store it as a str or leave the key out")
        return
    raise _bad(f"{where}: expected a str, int, float, bool, a list of those, or None, got "
               f"{type(v).__name__} {v!r:.60}")


def _check_record_metadata(m: dict[str, Any], where: str, *, allow_none: bool) -> None:
    for k, v in m.items():
        if not isinstance(k, str):
            raise _bad(f"{where}: keys must be str, got {type(k).__name__} {k!r:.40}")
        if not k or k.startswith("$") or k == "chroma:document" or k.startswith("\x00"):
            raise _bad(f"{where}: the key {k!r} is reserved or empty (keys may not be empty, "
                       "start with '$' or NUL, or be 'chroma:document')", key=k)
        key_where = f"{where}[{k!r}]"
        if v is None:
            if not allow_none:
                raise _bad(f"{key_where}: None is accepted only by update/upsert (where it "
                           "removes the key); leave the key out instead")
            continue
        if isinstance(v, list):
            if not v:
                raise _bad(f"{key_where}: a list value must be non-empty")
            kinds = {bool if isinstance(x, bool) else type(x) for x in v}
            if len(kinds) != 1 or not kinds <= {str, int, float, bool}:
                raise _bad(f"{key_where}: a list value must hold only str, only int, only "
                           f"float or only bool items, got {v!r:.80}")
            for x in v:
                _check_scalar(x, key_where)
            continue
        _check_scalar(v, key_where)


def _one_to_many(x: Any) -> Any:
    return [x] if isinstance(x, (str, Mapping)) else x


def _as_list(x: Any, n: int, what: str) -> list[Any]:
    x = _one_to_many(x)
    if isinstance(x, np.ndarray):
        x = list(x)
    if not isinstance(x, Sequence):
        raise _bad(f"{what} must be a list, got {type(x).__name__}")
    if len(x) != n:
        raise _bad(f"{what}: {len(x)} given for {n} ids; pass exactly one per id",
                   got=len(x), expected=n)
    return list(x)


def _check_ids(ids: Any, what: str) -> list[str]:
    ids = _one_to_many(ids)
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if not isinstance(ids, Sequence) or isinstance(ids, bytes):
        raise _bad(f"ids must be a str or a list of str, got {type(ids).__name__}")
    ids = list(ids)
    if not ids:
        raise _bad(f"expected ids to be a non-empty list, got 0 ids in {what}")
    for i, x in enumerate(ids):
        if not isinstance(x, str):
            raise _bad(f"ids[{i}] must be a str, got {type(x).__name__} {x!r:.40}")
        if not x:
            raise _bad(f"ids[{i}] is empty: an id must have at least one character")
    out: list[str] = ids
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dup: set[str] = set()
        for x in out:
            (dup if x in seen else seen).add(x)
        dups = sorted(dup)
        raise _bad(f"expected ids to be unique, found duplicates of: {', '.join(dups[:10])} "
                   f"in {what}", DuplicateIDError, duplicates=dups)
    return out


def _check_include(include: Any, default: Sequence[str], what: str) -> list[str]:
    if include is None:
        return list(default)
    if isinstance(include, str) or not isinstance(include, Sequence):
        raise _bad(f"include must be a list of str, got {include!r:.80}")
    out = []
    for item in include:
        if item not in _INCLUDE_ALL:
            raise _bad(f"include items must be among {', '.join(_INCLUDE_ALL)}, got {item!r}")
        if item == "distances" and what != "query":
            raise _bad(f"include cannot hold 'distances' in {what}")
        if item == "data":
            raise _bad("include=['data'] needs a Chroma data loader, which mmwal.chroma has "
                       "not; store the data's location in uris or metadata")
        out.append(str(item))
    return out


def _vectors(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{what} must be lists of numbers of one length: {exc}") from None
    if arr.ndim == 1:
        arr = arr[None, :] if arr.size else arr.reshape(0, 0)
    if arr.ndim != 2:
        raise _bad(f"{what} must be a list of vectors, got an array of shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise _bad(f"{what} must not contain NaN or infinity")
    return arr


def _norm(arr: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(arr, axis=-1, keepdims=True)
    out: np.ndarray = arr / np.maximum(n, 1e-30)
    return out


def _distances(vecs: np.ndarray, q: np.ndarray, space: str) -> np.ndarray:
    """Chroma's distances of rows ``vecs`` to one query ``q`` (float64)."""
    v = vecs.astype(np.float64)
    qq = q.astype(np.float64)
    if space == "l2":
        d = v - qq
        return np.einsum("ij,ij->i", d, d)  # type: ignore[no-any-return]
    if space == "cosine":
        return 1.0 - _norm(v) @ _norm(qq)  # type: ignore[no-any-return]
    return 1.0 - v @ qq  # type: ignore[no-any-return]


# ============================================================================ registry
class _Registry:
    """``chroma.json``: id -> {name, metadata, space, created}; cached by stat."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "chroma.json")
        self._key: tuple[int, int, int] | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        self._mu = threading.Lock()

    def load(self) -> dict[str, dict[str, Any]]:
        with self._mu:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._key, self._entries = None, {}
                return self._entries
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._key:
                raw = _fsutil.read_file(self.path, _MAX_REGISTRY)
                try:
                    doc = json.loads(raw)
                    if doc.get("format") != REGISTRY_FORMAT:
                        raise ValueError(f"format {doc.get('format')!r}")
                    entries = dict(doc["collections"])
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    from .errors import CorruptionError

                    raise CorruptionError(f"{self.path}: not an mmwal.chroma registry "
                                          f"({exc})", path=self.path, offset=0) from None
                self._key, self._entries = key, entries
            return self._entries

    def publish(self, entries: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"format": REGISTRY_FORMAT, "collections": entries},
                          sort_keys=True, allow_nan=False).encode()
        _fsutil.atomic_write(self.path, data)
        with self._mu:
            self._key = None

    def by_name(self, name: str) -> dict[str, Any] | None:
        for e in self.load().values():
            if e["name"] == name:
                return e
        return None


class _Handle:
    """One process's Store / Reader / write lock of one collection, opened lazily."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.store_path = os.path.join(root, "store")
        self.store: Store | None = None
        self.reader: Reader | None = None
        self.lock: FileLock | None = None
        self.mu = threading.Lock()
        self.order_cache: tuple[int, dict[str, int]] | None = None

    def close(self) -> None:
        for obj in (self.store, self.reader):
            if obj is not None:
                try:
                    obj.close()
                except (MmwalError, OSError):
                    pass
        lk = self.lock
        # A thread of this process may hold the write lock right now (a write that
        # finds its collection deleted): then Collection._write closes it instead.
        if lk is not None and lk.thread_lock.acquire(False):
            try:
                lk.close()
            finally:
                lk.thread_lock.release()
        self.store = self.reader = self.lock = None


# ============================================================================ client
class PersistentClient:
    """Chroma's ``PersistentClient`` over mmwal stores; any number of processes may share a path.

    Parameters
    ----------
    path
        The client directory (created if missing).
    settings, tenant, database
        Accepted for compatibility with chromadb and ignored (one tenant, one
        database per path).
    durability
        Of every write: ``"fsync"`` (default: on stable storage on return),
        ``"os"`` or ``"interval"`` (see :class:`mmwal.Store`).
    config
        The :class:`mmwal.Config` of the collections' stores.
    auto_checkpoint
        Checkpoint a collection's store from this process when its log passes
        the config's thresholds (after the write that crossed them, outside
        the collection's write lock).  Default True.
    lock_timeout
        Seconds to wait for the client and collection locks (None: forever).

    Examples
    --------
    >>> import tempfile, mmwal.chroma as chromadb
    >>> client = chromadb.PersistentClient(tempfile.mkdtemp(), durability="os")
    >>> col = client.get_or_create_collection("docs")
    >>> col.add(ids=["a", "b"], embeddings=[[1, 0], [0, 1]], documents=["x", "y"])
    >>> col.query(query_embeddings=[[1, 0]], n_results=1)["ids"]
    [['a']]
    """

    def __init__(self, path: str | os.PathLike[str] = "./chroma", settings: Any = None,
                 tenant: str = "default_tenant", database: str = "default_database", *,
                 durability: str = "fsync", config: Config | None = None,
                 auto_checkpoint: bool = True, lock_timeout: float | None = 30.0) -> None:
        if durability not in ("fsync", "os", "interval"):
            raise _bad(f"durability must be 'fsync', 'os' or 'interval', got {durability!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.durability = durability
        self.config = config if config is not None else Config()
        self.auto_checkpoint = auto_checkpoint
        self.lock_timeout = lock_timeout
        _fsutil.makedirs(os.path.join(self.path, "locks"))
        _fsutil.makedirs(os.path.join(self.path, "collections"))
        self._registry = _Registry(self.path)
        self._lock = FileLock(os.path.join(self.path, "locks", "client.lock"), lock_timeout)
        self._handles: dict[str, _Handle] = {}
        self._mu = threading.Lock()
        self._pid = os.getpid()
        self._registry.load()

    def __repr__(self) -> str:
        return f"mmwal.chroma.PersistentClient({self.path!r})"

    # ------------------------------------------------------------------ internals
    def _forked(self) -> None:
        if os.getpid() != self._pid:
            # A child of fork: the parent's lock descriptors must not be used
            # (or unlocked) here; Stores and Readers reopen themselves on use.
            self._pid = os.getpid()
            self._lock.after_fork()
            self._mu = threading.Lock()
            for h in self._handles.values():
                h.mu = threading.Lock()
                if h.lock is not None:
                    h.lock.after_fork()

    def _handle(self, cid: str) -> _Handle:
        self._forked()
        with self._mu:
            h = self._handles.get(cid)
            if h is None:
                h = self._handles[cid] = _Handle(os.path.join(self.path, "collections", cid))
            return h

    def _entry(self, cid: str) -> dict[str, Any]:
        e = self._registry.load().get(cid)
        if e is None:
            with self._mu:
                h = self._handles.pop(cid, None)
            if h is not None:
                h.close()
            raise NotFoundError(f"collection [{cid}] does not exist (deleted by this or "
                                f"another process?) in {self.path}", id=cid)
        return e

    def _locked(self) -> _ClientLock:
        self._forked()
        return _ClientLock(self._lock)

    def _clean_orphans(self, entries: Mapping[str, Any]) -> None:
        """Under the client lock: remove collection directories no entry names."""
        base = os.path.join(self.path, "collections")
        for name in os.listdir(base):
            if name not in entries:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)

    def _collection(self, e: Mapping[str, Any], ef: Any) -> Collection:
        return Collection(self, e["id"], e["name"], e.get("metadata"), e["space"], ef)

    # ------------------------------------------------------------------ API
    def heartbeat(self) -> int:
        """Nanoseconds since the epoch (Chroma's liveness check)."""
        return time.time_ns()

    def create_collection(self, name: str, configuration: Any = None,
                          metadata: Mapping[str, Any] | None = None,
                          embedding_function: EmbeddingFunction | None = None,
                          data_loader: Any = None, get_or_create: bool = False,
                          ) -> Collection:
        """Create a collection (:class:`UniqueConstraintError` if the name is taken)."""
        validate_name(name)
        meta = _check_collection_metadata(metadata)
        space = _space_of(meta, configuration)
        if data_loader is not None:
            raise _bad("data loaders are not supported by mmwal.chroma")
        with self._locked():
            entries = dict(self._registry.load())
            for e in entries.values():
                if e["name"] == name:
                    if get_or_create:
                        return self._collection(e, embedding_function)
                    raise UniqueConstraintError(f"collection [{name}] already exists in "
                                                f"{self.path}", name=name)
            self._clean_orphans(entries)
            cid = str(uuid.uuid4())
            root = os.path.join(self.path, "collections", cid)
            _fsutil.makedirs(root)
            e = {"id": cid, "name": name, "metadata": meta, "space": space,
                 "created": time.time()}
            entries[cid] = e
            self._registry.publish(entries)
        return self._collection(e, embedding_function)

    def get_or_create_collection(self, name: str, configuration: Any = None,
                                 metadata: Mapping[str, Any] | None = None,
                                 embedding_function: EmbeddingFunction | None = None,
                                 data_loader: Any = None) -> Collection:
        """The collection of that name, created if missing (``metadata`` only applies then)."""
        validate_name(name)
        e = self._registry.by_name(name)
        if e is not None:
            return self._collection(e, embedding_function)
        return self.create_collection(name, configuration, metadata, embedding_function,
                                      data_loader, get_or_create=True)

    def get_collection(self, name: str, embedding_function: EmbeddingFunction | None = None,
                       data_loader: Any = None) -> Collection:
        """The collection of that name (:class:`NotFoundError` if there is none)."""
        self._forked()
        e = self._registry.by_name(name)
        if e is None:
            raise NotFoundError(f"collection [{name}] does not exist in {self.path}",
                                name=name)
        return self._collection(e, embedding_function)

    def list_collections(self, limit: int | None = None, offset: int | None = None,
                         ) -> list[Collection]:
        """Every collection, oldest first."""
        self._forked()
        es = sorted(self._registry.load().values(), key=lambda e: (e["created"], e["id"]))
        es = es[offset or 0:]
        if limit is not None:
            es = es[:limit]
        return [self._collection(e, None) for e in es]

    def count_collections(self) -> int:
        """How many collections there are."""
        self._forked()
        return len(self._registry.load())

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its data, for every process.

        The registry entry goes first (every later operation on it, in any
        process, raises :class:`NotFoundError`); then the collection's write
        lock is taken, so a write in progress in another process finishes
        first; then the directory is removed.
        """
        with self._locked():
            entries = dict(self._registry.load())
            e = next((x for x in entries.values() if x["name"] == name), None)
            if e is None:
                raise NotFoundError(f"collection [{name}] does not exist in {self.path}",
                                    name=name)
            del entries[e["id"]]
            self._registry.publish(entries)
            with self._mu:
                h = self._handles.pop(e["id"], None)
            if h is not None:
                h.close()
            root = os.path.join(self.path, "collections", e["id"])
            try:
                wl = FileLock(os.path.join(root, "write.lock"), self.lock_timeout)
            except StorageIOError:
                wl = None
            if wl is not None:
                try:
                    wl.acquire_exclusive_slow()
                    wl.release_slow()
                finally:
                    wl.close()
            shutil.rmtree(root, ignore_errors=True)
            _fsutil.fsync_dir(os.path.join(self.path, "collections"))

    def reset(self) -> bool:
        """Not supported: delete the collections one by one (chromadb needs allow_reset too)."""
        raise _bad("reset() is not supported by mmwal.chroma; call delete_collection for each "
                   "collection")

    def close(self) -> None:
        """Close every Store and Reader this client opened."""
        with self._mu:
            hs = list(self._handles.values())
            self._handles.clear()
        for h in hs:
            h.close()
        self._lock.close()


class _ClientLock:
    def __init__(self, lock: FileLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire_exclusive_slow()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release_slow()


# ============================================================================ collection
def _pack_meta(meta: dict[str, Any] | None, order: int, doc: str | None,
               uri: str | None) -> dict[str, Any]:
    out = dict(meta) if meta else {}
    out[_HIDDEN] = [order, _DOC_NONE if doc is None else 0, uri]
    return out


def _unpack_meta(meta: dict[str, Any] | None) -> tuple[dict[str, Any] | None, int, int,
                                                       str | None]:
    if not meta or _HIDDEN not in meta:
        return (meta or None), 0, 0, None
    m = dict(meta)
    order, flags, uri = m.pop(_HIDDEN)
    return (m or None), int(order), int(flags), uri


class Collection:
    """A Chroma collection stored in one mmwal store (get one from a client)."""

    def __init__(self, client: PersistentClient, cid: str, name: str,
                 metadata: dict[str, Any] | None, space: str,
                 embedding_function: EmbeddingFunction | None) -> None:
        self._client = client
        self.id = cid
        self.name = name
        self.metadata = metadata
        self.space = space
        self.embedding_function = embedding_function

    def __repr__(self) -> str:
        return f"Collection(name={self.name})"

    @property
    def configuration(self) -> dict[str, Any]:
        return {"hnsw": {"space": self.space}}

    @property
    def store_path(self) -> str:
        """The directory of this collection's mmwal store (it appears with the first add)."""
        return os.path.join(self._client.path, "collections", self.id, "store")

    # ------------------------------------------------------------------ plumbing
    def _sync_entry(self) -> _Handle:
        e = self._client._entry(self.id)
        self.name, self.metadata = e["name"], e.get("metadata")
        return self._client._handle(self.id)

    def _snapshot(self, h: _Handle) -> Any:
        """A fresh snapshot of the collection's store, or None before its first add."""
        with h.mu:
            if h.reader is None:
                if not os.path.exists(os.path.join(h.store_path, "MANIFEST")):
                    return None
                try:
                    h.reader = Reader(h.store_path)
                except (FileNotFoundError, StorageIOError):
                    self._client._entry(self.id)  # deleted meanwhile: NotFoundError
                    raise
            reader = h.reader
        try:
            reader.refresh()
        except (FileNotFoundError, StorageIOError):
            self._client._entry(self.id)
            raise
        return reader.snapshot()

    def _store(self, h: _Handle, dim: int | None) -> Store | None:
        if h.store is None:
            exists = os.path.exists(os.path.join(h.store_path, "MANIFEST"))
            if not exists and dim is None:
                return None
            mode = "os" if self._client.durability == "fsync" else self._client.durability
            cfg = self._client.config
            if cfg.auto_checkpoint:
                import dataclasses

                cfg = dataclasses.replace(cfg, auto_checkpoint=False)  # done outside the lock
            h.store = Store(h.store_path, None if exists else dim, durability=mode, config=cfg)
        return h.store

    def _write(self, fn: Callable[[Any, _Handle], Store | None]) -> None:
        """Run ``fn(snapshot, handle)`` under the collection's write lock, then sync."""
        h = self._sync_entry()
        with h.mu:
            if h.lock is None:
                try:
                    h.lock = FileLock(os.path.join(h.root, "write.lock"),
                                      self._client.lock_timeout)
                except StorageIOError:
                    self._client._entry(self.id)
                    raise
            lock = h.lock
        lock.acquire_exclusive_slow()
        try:
            h = self._sync_entry()  # deleted while we waited? then NotFoundError
            store = fn(self._snapshot(h), h)
        except NotFoundError:
            lock.release_slow()
            lock.close()  # the collection is gone; its handle no longer owns this lock
            raise
        except BaseException:
            lock.release_slow()
            raise
        lock.release_slow()
        if store is None:
            return
        if self._client.durability == "fsync":
            store.sync()
        if self._client.auto_checkpoint and store.needs_checkpoint():
            store.checkpoint()

    def _dim_error(self, want: int, got: int) -> InvalidDimensionError:
        return InvalidDimensionError(
            f"collection {self.name!r} expects embeddings of dimension {want}, got {got}",
            expected=want, got=got)

    def _embed(self, texts: list[Any], what: str) -> np.ndarray:
        ef = self.embedding_function
        if ef is None:
            raise MissingEmbeddingFunctionError(
                f"{what} without embeddings and no embedding_function on collection "
                f"{self.name!r}: pass embeddings=..., or embedding_function=... to "
                "get_collection / get_or_create_collection (mmwal never downloads a model)")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise _bad(f"{what}: documents[{i}] must be a str to be embedded, got "
                           f"{type(t).__name__}")
        vecs = _vectors(ef(list(texts)), "the embedding function's output")
        if vecs.shape[0] != len(texts):
            raise _bad(f"the embedding function returned {vecs.shape[0]} vectors for "
                       f"{len(texts)} texts")
        return vecs

    def _prepare(self, what: str, ids: Any, embeddings: Any, metadatas: Any, documents: Any,
                 uris: Any, images: Any, *, need_vectors: bool,
                 ) -> tuple[list[str], np.ndarray | None, list[Any] | None, list[Any] | None,
                            list[Any] | None]:
        if images is not None:
            raise _bad("images are not supported by mmwal.chroma; pass embeddings")
        ids = _check_ids(ids, what)
        n = len(ids)
        docs = None if documents is None else _as_list(documents, n, "documents")
        if docs is not None:
            for i, d in enumerate(docs):
                if d is not None and not isinstance(d, str):
                    raise _bad(f"documents[{i}] must be a str or None, got {type(d).__name__}")
        metas = None if metadatas is None else _as_list(metadatas, n, "metadatas")
        if metas is not None:
            for i, m in enumerate(metas):
                if m is None:
                    continue
                if not isinstance(m, Mapping):
                    raise _bad(f"metadatas[{i}] must be a dict or None, got "
                               f"{type(m).__name__}")
                if not m:
                    raise _bad(f"metadatas[{i}] is empty: pass None instead of {{}}")
                metas[i] = dict(m)
                _check_record_metadata(metas[i], f"metadatas[{i}]",
                                       allow_none=what != "add")
        uri_list = None if uris is None else _as_list(uris, n, "uris")
        if uri_list is not None:
            for i, u in enumerate(uri_list):
                if u is not None and not isinstance(u, str):
                    raise _bad(f"uris[{i}] must be a str or None, got {type(u).__name__}")
        vecs = None
        if embeddings is not None:
            vecs = _vectors(embeddings, "embeddings")
            if vecs.shape[0] != n:
                raise _bad(f"embeddings: {vecs.shape[0]} given for {n} ids", got=vecs.shape[0])
        elif docs is not None:
            vecs = self._embed(docs, what)
        elif need_vectors:
            raise _bad(f"{what} needs embeddings or documents (with an embedding function)")
        return ids, vecs, metas, docs, uri_list

    def _check_dim(self, store: Store | None, vecs: np.ndarray | None) -> None:
        if store is not None and vecs is not None and vecs.shape[1] != store.dim:
            raise self._dim_error(store.dim, vecs.shape[1])

    # ------------------------------------------------------------------ writes
    def add(self, ids: Any, embeddings: Any = None, metadatas: Any = None,
            documents: Any = None, images: Any = None, uris: Any = None) -> None:
        """Add records; ids that already exist are left unchanged (as in Chroma 1.5.9)."""
        ids, vecs, metas, docs, uri_list = self._prepare(
            "add", ids, embeddings, metadatas, documents, uris, images, need_vectors=True)
        assert vecs is not None

        def run(snap: Any, h: _Handle) -> Store | None:
            store = self._store(h, vecs.shape[1])
            assert store is not None
            self._check_dim(store, vecs)
            keep = [i for i, x in enumerate(ids) if snap is None or x not in snap]
            if not keep:
                return None
            base = time.time_ns()
            store.add_many(
                [ids[i] for i in keep], vecs[keep],
                ["" if docs is None or docs[i] is None else docs[i] for i in keep],
                [_pack_meta(None if metas is None else metas[i], base + j,
                            None if docs is None else docs[i],
                            None if uri_list is None else uri_list[i])
                 for j, i in enumerate(keep)])
            return store

        self._write(run)

    def _merge(self, old: Any, i: int, vecs: np.ndarray | None, metas: list[Any] | None,
               docs: list[Any] | None, uri_list: list[Any] | None, order: int,
               ) -> tuple[np.ndarray, str, dict[str, Any]]:
        if old is not None:
            meta, order, flags, uri = _unpack_meta(old.metadata)
            doc: str | None = None if flags & _DOC_NONE else old.content
            vec = old.embedding
        else:
            meta, doc, uri, vec = None, None, None, None
        if metas is not None and metas[i] is not None:
            merged = dict(meta or {})
            for k, v in metas[i].items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            meta = merged or None
        if docs is not None and docs[i] is not None:  # None: unchanged, as in Chroma
            doc = docs[i]
        if uri_list is not None and uri_list[i] is not None:
            uri = uri_list[i]
        if vecs is not None:
            vec = vecs[i]
        assert vec is not None
        return vec, "" if doc is None else doc, _pack_meta(meta, order, doc, uri)

    def _upsert_or_update(self, what: str, ids: Any, embeddings: Any, metadatas: Any,
                          documents: Any, uris: Any, images: Any) -> None:
        ids, vecs, metas, docs, uri_list = self._prepare(
            what, ids, embeddings, metadatas, documents, uris, images,
            need_vectors=what == "upsert")

        def run(snap: Any, h: _Handle) -> Store | None:
            store = self._store(h, None if vecs is None else vecs.shape[1])
            if store is None:
                return None  # update of an empty collection: nothing exists
            self._check_dim(store, vecs)
            base = time.time_ns()
            out_ids, out_vecs, out_docs, out_metas = [], [], [], []
            for i, x in enumerate(ids):
                old = None if snap is None else snap.get(x)
                if old is None and what == "update":
                    continue  # Chroma 1.5.9 ignores missing ids in update
                vec, doc, meta = self._merge(old, i, vecs, metas, docs, uri_list, base + i)
                out_ids.append(x)
                out_vecs.append(vec)
                out_docs.append(doc)
                out_metas.append(meta)
            if not out_ids:
                return None
            store.add_many(out_ids, np.stack(out_vecs), out_docs, out_metas)
            return store

        self._write(run)

    def upsert(self, ids: Any, embeddings: Any = None, metadatas: Any = None,
               documents: Any = None, images: Any = None, uris: Any = None) -> None:
        """Insert new ids; for existing ones replace the given fields and merge metadata."""
        self._upsert_or_update("upsert", ids, embeddings, metadatas, documents, uris, images)

    def update(self, ids: Any, embeddings: Any = None, metadatas: Any = None,
               documents: Any = None, images: Any = None, uris: Any = None) -> None:
        """Replace the given fields of existing ids (missing ids are ignored).

        Metadata is merged into the old one; a key set to None is removed.
        New documents without embeddings are embedded again (as Chroma does),
        which needs an embedding function.
        """
        self._upsert_or_update("update", ids, embeddings, metadatas, documents, uris, images)

    def delete(self, ids: Any = None, where: Any = None, where_document: Any = None) -> None:
        """Delete the records matching ``ids`` and ``where`` and ``where_document``."""
        if ids is None and where is None and where_document is None:
            raise _bad("at least one of ids, where, or where_document must be provided in "
                       "delete")
        id_list = None if ids is None else _check_ids(ids, "delete")
        self._validate_filters(where, where_document)

        def run(snap: Any, h: _Handle) -> Store | None:
            if snap is None:
                return None
            doomed = self._select(snap, id_list, where, where_document)
            if not doomed:
                return None
            store = self._store(h, None)
            assert store is not None
            store.remove_many(list(doomed))
            return store

        self._write(run)

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _validate_filters(where: Any, where_document: Any) -> None:
        from ._search import where as W

        try:
            if where is not None:
                W.parse(where)
            if where_document is not None:
                W.parse_document(where_document)
        except InvalidInputError as exc:
            if isinstance(exc, InvalidArgumentError):
                raise
            raise InvalidArgumentError(exc.message, **exc.facts) from None

    def _select(self, snap: Any, ids: list[str] | None, where: Any,
                where_document: Any) -> list[str]:
        """Live ids matching every given condition, unordered."""
        if where is None and where_document is None:
            if ids is None:
                return list(snap.ids)
            return [x for x in ids if x in snap]
        found = snap.find(where, where_document=where_document)
        if ids is None:
            return list(found)
        wanted = set(ids)
        return [x for x in found if x in wanted]

    def _orders(self, h: _Handle, snap: Any) -> dict[str, int]:
        """id -> first-insertion order for every live record (cached per snapshot seq)."""
        cached = h.order_cache
        if cached is not None and cached[0] == snap.seq:
            return cached[1]
        out: dict[str, int] = {}
        for x in snap.ids:
            doc = snap.get(x)
            if doc is not None:
                out[x] = _unpack_meta(doc.metadata)[1]
        h.order_cache = (snap.seq, out)
        return out

    def count(self) -> int:
        """How many records the collection holds."""
        h = self._sync_entry()
        snap = self._snapshot(h)
        return 0 if snap is None else len(snap)

    def get(self, ids: Any = None, where: Any = None, limit: int | None = None,
            offset: int | None = None, where_document: Any = None, include: Any = None,
            ) -> GetResult:
        """Records by ids and/or filters, in first-insertion order (as Chroma).

        ``include`` defaults to ``["metadatas", "documents"]``; embeddings come
        back as one float64 numpy array of shape (n, dim), as in chromadb 1.x.
        """
        inc = _check_include(include, _GET_DEFAULT, "get")
        id_list = None if ids is None else _check_ids(ids, "get")
        for v, name in ((limit, "limit"), (offset, "offset")):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise _bad(f"{name} must be None or an int >= 0, got {v!r}")
        self._validate_filters(where, where_document)
        h = self._sync_entry()
        snap = self._snapshot(h)
        if snap is None:
            return self._result([], [], inc)
        sel = self._select(snap, id_list, where, where_document)
        start = offset or 0
        if id_list is not None:
            # Few records: order them by their own metadata, not the whole collection's.
            pairs = [(x, d) for x, d in ((x, snap.get(x)) for x in sel) if d is not None]
            pairs.sort(key=lambda p: (_unpack_meta(p[1].metadata)[1], p[0]))
            pairs = pairs[start:] if limit is None else pairs[start:start + limit]
            return self._result([p[0] for p in pairs], [p[1] for p in pairs], inc)
        orders = self._orders(h, snap)
        sel.sort(key=lambda x: (orders.get(x, 0), x))
        sel = sel[start:] if limit is None else sel[start:start + limit]
        docs = [snap.get(x) for x in sel]
        keep = [i for i, d in enumerate(docs) if d is not None]
        return self._result([sel[i] for i in keep], [docs[i] for i in keep], inc)

    def peek(self, limit: int = 10) -> GetResult:
        """The first ``limit`` records with embeddings, metadatas and documents."""
        return self.get(limit=limit, include=list(_PEEK_INCLUDE))

    def _result(self, ids: list[str], docs: list[Any], inc: list[str]) -> GetResult:
        unpacked = [_unpack_meta(d.metadata) for d in docs]
        out: GetResult = {"ids": ids, "embeddings": None, "documents": None, "uris": None,
                          "included": inc, "data": None, "metadatas": None}
        if "embeddings" in inc:
            out["embeddings"] = (np.stack([d.embedding for d in docs]).astype(np.float64)
                                 if docs else np.array([], dtype=np.float64))
        if "documents" in inc:
            out["documents"] = [None if u[2] & _DOC_NONE else d.content
                                for d, u in zip(docs, unpacked)]
        if "metadatas" in inc:
            out["metadatas"] = [u[0] for u in unpacked]
        if "uris" in inc:
            out["uris"] = [u[3] for u in unpacked]
        return out

    def query(self, query_embeddings: Any = None, query_texts: Any = None,
              query_images: Any = None, query_uris: Any = None, ids: Any = None,
              n_results: int = 10, where: Any = None, where_document: Any = None,
              include: Any = None) -> QueryResult:
        """The ``n_results`` nearest records to each query, by the collection's space.

        Distances are Chroma's: ``l2`` squared Euclidean, ``cosine``
        1 - cosine similarity, ``ip`` 1 - dot product; ascending, ties in
        first-insertion order.  ``ids`` restricts the candidates.
        """
        inc = _check_include(include, _QUERY_DEFAULT, "query")
        if query_images is not None or query_uris is not None:
            raise _bad("query_images and query_uris are not supported by mmwal.chroma")
        if isinstance(n_results, bool) or not isinstance(n_results, int) or n_results < 1:
            raise _bad(f"n_results must be an int >= 1, got {n_results!r}")
        if (query_embeddings is None) == (query_texts is None):
            raise _bad("pass exactly one of query_embeddings or query_texts")
        if query_embeddings is not None:
            Q = _vectors(query_embeddings, "query_embeddings")
        else:
            texts = _one_to_many(query_texts)
            Q = self._embed(list(texts), "query_texts")
        if Q.shape[0] == 0:
            raise _bad("query_embeddings is empty")
        id_list = None if ids is None else _check_ids(ids, "query")
        self._validate_filters(where, where_document)
        h = self._sync_entry()
        snap = self._snapshot(h)
        if snap is not None and Q.shape[1] != snap.dim:
            raise self._dim_error(snap.dim, Q.shape[1])
        keys = ("ids", "embeddings", "documents", "uris", "included", "data", "metadatas",
                "distances")
        out: QueryResult = {k: None for k in keys}
        out["ids"], out["included"] = [], inc
        for k in ("embeddings", "documents", "uris", "metadatas", "distances"):
            if k in inc:
                out[k] = []
        need_docs = any(k in inc for k in ("embeddings", "documents", "uris", "metadatas"))
        for q in Q:
            ids_q, docs_q, dist_q = self._query_one(h, snap, q, n_results, id_list, where,
                                                    where_document, need_docs)
            r = self._result(ids_q, docs_q, [k for k in inc if k != "distances"])
            out["ids"].append(ids_q)
            for k in ("embeddings", "documents", "uris", "metadatas"):
                if k in inc:
                    out[k].append(r[k])
            if "distances" in inc:
                out["distances"].append(dist_q)
        return out

    def _query_one(self, h: _Handle, snap: Any, q: np.ndarray, n: int,
                   ids: list[str] | None, where: Any, where_document: Any, need_docs: bool,
                   ) -> tuple[list[str], list[Any], list[float]]:
        if snap is None or len(snap) == 0:
            return [], [], []
        if ids is not None:
            cands = self._select(snap, ids, where, where_document)
            pairs = [(x, d) for x, d in ((x, snap.get(x)) for x in cands) if d is not None]
            if not pairs:
                return [], [], []
            exact = _distances(np.stack([d.embedding for _, d in pairs]), q, self.space)
            order = [_unpack_meta(d.metadata)[1] for _, d in pairs]
            rank = sorted(range(len(pairs)),
                          key=lambda i: (float(exact[i]), order[i], pairs[i][0]))[:n]
            return ([pairs[i][0] for i in rank], [pairs[i][1] for i in rank],
                    [float(exact[i]) for i in rank])
        metric = {"l2": "l2", "cosine": "cosine", "ip": "dot"}[self.space]
        # A few more than asked: records tied at the cut are then ordered as
        # Chroma orders whole tie groups (first insertion) before the list is cut.
        hits = snap.search(q, k=n + 8, metric=metric, where=where,
                           where_document=where_document)
        dist: list[float]
        if self.space == "l2":
            dist = [h_.score * h_.score for h_ in hits]  # mmwal: Euclidean, exact
        else:
            dist = [1.0 - h_.score for h_ in hits]  # 1 - cosine similarity / dot product
        cands = [h_.id for h_ in hits]
        docs: dict[str, Any] = {}
        a = 0
        while a < min(n, len(cands)):
            b = a + 1
            while b < len(cands) and dist[b] == dist[a]:
                b += 1
            if b - a > 1:  # a tie group reaching into the first n: order it
                for x in cands[a:b]:
                    docs[x] = snap.get(x)
                group = sorted(range(a, b), key=lambda i: (
                    _unpack_meta(docs[cands[i]].metadata)[1], cands[i]))
                cands[a:b] = [cands[i] for i in group]
                dist[a:b] = [dist[i] for i in group]
            a = b
        cands, dist = cands[:n], dist[:n]
        if not need_docs:
            return cands, [], dist
        return cands, [docs[x] if x in docs else snap.get(x) for x in cands], dist

    # ------------------------------------------------------------------ modify
    def modify(self, name: str | None = None, metadata: Mapping[str, Any] | None = None,
               configuration: Any = None) -> None:
        """Rename the collection and/or replace its metadata (its space cannot change)."""
        client = self._client
        if name is not None:
            validate_name(name)
        meta = _check_collection_metadata(metadata) if metadata is not None else None
        if (meta is not None and "hnsw:space" in meta) or configuration is not None:
            # Chroma 1.5.9 refuses it too, even with the same value.
            raise _bad("changing the distance function (hnsw:space) of a collection once it "
                       "is created is not supported; create a new collection")
        with client._locked():
            entries = dict(client._registry.load())
            e = entries.get(self.id)
            if e is None:
                raise NotFoundError(f"collection [{self.id}] does not exist", id=self.id)
            e = dict(e)
            if meta is not None:
                e["metadata"] = meta
            if name is not None and name != e["name"]:
                if any(x["name"] == name for x in entries.values()):
                    raise UniqueConstraintError(f"collection [{name}] already exists",
                                                name=name)
                e["name"] = name
            entries[self.id] = e
            client._registry.publish(entries)
        self.name, self.metadata = e["name"], e.get("metadata")


# ============================================================================ import
def import_chroma(src: str, dst: str, *, batch_size: int = 1000,
                  stream: Any = None, progress: bool | None = None,
                  durability: str = "os") -> list[tuple[str, int, int]]:
    """Copy every collection of a Chroma persistent directory into an mmwal.chroma client.

    Reads with chromadb (``pip install chromadb``), writes through
    :class:`PersistentClient` in batches (``add``), then syncs.  Returns
    ``(name, count in Chroma, count in mmwal)`` per collection.
    """
    try:
        import chromadb
        from chromadb.config import Settings
    except ImportError:
        raise ImportError("import-chroma reads the Chroma directory with chromadb: run "
                          "`pip install chromadb`") from None
    from ._progress import progress as _progress

    stream = sys.stderr if stream is None else stream
    if not os.path.isdir(src):
        from .errors import StoreNotFoundError

        raise StoreNotFoundError(f"no Chroma directory at {src}", path=src)
    source = chromadb.PersistentClient(src, settings=Settings(anonymized_telemetry=False))
    target = PersistentClient(dst, durability=durability)
    out = []
    try:
        for sc in source.list_collections():
            name = sc.name
            meta = sc.metadata or None
            space = "l2"
            try:
                space = sc.configuration["hnsw"]["space"]  # type: ignore[index]
            except (KeyError, TypeError, AttributeError):
                pass
            if meta is not None and "hnsw:space" in meta:
                space = meta["hnsw:space"]
            tc = target.create_collection(name, configuration={"hnsw": {"space": space}},
                                          metadata=meta)
            total = sc.count()
            with _progress(total, f"import {name}", stream=stream, enabled=progress) as bar:
                done = 0
                while done < total:
                    r = sc.get(limit=batch_size, offset=done,
                               include=["embeddings", "documents", "metadatas", "uris"])
                    if not r["ids"]:
                        break
                    tc.add(ids=r["ids"], embeddings=r["embeddings"],
                           documents=r["documents"],
                           metadatas=[m or None for m in r["metadatas"] or []],
                           uris=r["uris"])
                    done += len(r["ids"])
                    bar.set(done)
            h = target._handle(tc.id)
            if h.store is not None:
                h.store.sync()
            out.append((name, total, tc.count()))
    finally:
        target.close()
    return out

