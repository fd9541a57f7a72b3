"""A LangChain vector store over an mmwal store: ``pip install 'mmwal[langchain]'``.

:class:`MmwalVectorStore` is a ``langchain_core.vectorstores.VectorStore``: a
LangChain ``Document`` is stored as one mmwal document whose id is
``Document.id``, whose content is ``page_content`` and whose metadata is
``Document.metadata`` (plain msgpack types: str, int, float, bool, None,
lists and dicts with str keys).  Writes go through an :class:`mmwal.Store`,
reads through an :class:`mmwal.Reader` refreshed before every read, so a write
is visible to the next read of the same object, and writes of other processes
too.  Any number of processes may each hold their own ``MmwalVectorStore`` on
one path.

``filter=`` takes mmwal's (Chroma's) ``where`` grammar; a plain dict with
several keys, ``{"source": "a.pdf", "page": 2}``, means all of them (it is
rewritten to ``{"$and": [...]}``).  ``where_document=`` filters on the text.

Examples
--------
>>> import tempfile
>>> from langchain_core.embeddings import DeterministicFakeEmbedding
>>> from mmwal.langchain import MmwalVectorStore
>>> vs = MmwalVectorStore(tempfile.mkdtemp(), DeterministicFakeEmbedding(size=8))
>>> vs.add_texts(["mmwal is a store", "bread needs flour"], [{"k": "db"}, {"k": "food"}],
...              ids=["a", "b"])
['a', 'b']
>>> [d.id for d in vs.similarity_search("store", k=1, filter={"k": "food"})]
['b']
>>> vs.close()
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ._handle import StoreHandle, mmr
from ._snapshot import Snapshot
from ._types import Config
from .errors import InvalidInputError

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ImportError as exc:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        f"mmwal.langchain needs langchain-core ({exc}); install it with "
        "pip install 'mmwal[langchain]'") from exc

__all__ = ["MmwalVectorStore", "to_where"]

_METRICS = ("cosine", "dot", "l2")


def to_where(filter: dict[str, Any] | None) -> dict[str, Any] | None:
    """A LangChain ``filter`` dict as an mmwal ``where`` filter.

    Chroma-style filters (one key per dict) pass through unchanged.  A dict of
    several metadata keys means all of them and becomes ``{"$and": [...]}``,
    one condition per key, in the dict's order; an empty dict means no filter.

    Examples
    --------
    >>> to_where({"source": "a.pdf", "page": {"$gt": 2}})
    {'$and': [{'source': 'a.pdf'}, {'page': {'$gt': 2}}]}
    >>> to_where({"$or": [{"a": 1}, {"b": 2}]})
    {'$or': [{'a': 1}, {'b': 2}]}
    """
    if filter is None:
        return None
    if not isinstance(filter, dict):
        raise InvalidInputError(
            f"filter must be a dict of metadata conditions such as {{'source': 'a.pdf'}}, got "
            f"{type(filter).__name__}; mmwal evaluates filters itself and takes no callables",
            got=type(filter).__name__)
    if not filter:
        return None
    if len(filter) == 1 or any(isinstance(k, str) and k.startswith("$") for k in filter):
        return filter  # mmwal's parser checks it (and names what is wrong)
    return {"$and": [{k: v} for k, v in filter.items()]}


class MmwalVectorStore(VectorStore):
    """A LangChain vector store over one mmwal store.

    Parameters
    ----------
    path
        The store's directory.  An existing store is opened; otherwise one is
        created with ``dim`` (or, when ``dim`` is None, at the first write with
        the length of the first embedding).
    embedding
        The LangChain ``Embeddings`` used for texts and queries.
    dim
        The embedding dimension, to create the store at once (checked against
        an existing store).
    durability, config
        Passed to :class:`mmwal.Store`.
    metric
        ``"cosine"`` (default) or ``"dot"`` (scores are similarities, higher is
        better) or ``"l2"`` (Euclidean distances, lower is better).

    Notes
    -----
    ``add_texts``/``add_documents`` write one atomic ``add_many`` record per
    call; adding an existing id replaces that document.  ``delete`` writes one
    record per id.  Call :meth:`close` (or use ``with``) to release the files.
    """

    def __init__(self, path: str | os.PathLike[str], embedding: Embeddings, *,
                 dim: int | None = None, durability: str = "fsync",
                 config: Config | None = None, metric: str = "cosine") -> None:
        if metric not in _METRICS:
            raise InvalidInputError(f"metric must be one of {_METRICS}, got {metric!r}",
                                    got=metric)
        if not isinstance(embedding, Embeddings):
            raise InvalidInputError(
                f"embedding must be a langchain_core Embeddings, got {type(embedding).__name__}",
                got=type(embedding).__name__)
        self._embedding = embedding
        self.metric = metric
        self._handle = StoreHandle(path, dim, durability, config)

    @property
    def path(self) -> str:
        """The store's absolute path."""
        return self._handle.path

    @property
    def embeddings(self) -> Embeddings:
        """The embedding model used for texts and queries."""
        return self._embedding

    # ------------------------------------------------------------------ writes
    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None,
                  *, ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Embed ``texts`` and add them as one atomic record; return their ids.

        Ids are kept where given (an existing id is replaced) and new uuid4
        strings where absent (``ids`` None, or an item None or empty).
        """
        texts = list(texts)
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise InvalidInputError(f"got {len(metadatas)} metadatas for {n} texts", got=n)
        if ids is not None and len(ids) != n:
            raise InvalidInputError(f"got {len(ids)} ids for {n} texts", got=n)
        out = [i if i else str(uuid.uuid4()) for i in ids] if ids is not None else [
            str(uuid.uuid4()) for _ in range(n)]
        if n == 0:
            return out
        vecs = np.asarray(self._embedding.embed_documents(texts), dtype=np.float32)
        metas = [dict(m) if m else None for m in metadatas] if metadatas else None
        store = self._handle.store(int(vecs.shape[-1]))
        store.add_many(out, vecs, texts, metas)
        return out

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Add LangChain Documents; ``ids=`` overrides ``Document.id``; return the ids."""
        ids = kwargs.pop("ids", None)
        if ids is None:
            ids = [d.id for d in documents]
        return self.add_texts([d.page_content for d in documents],
                              [d.metadata for d in documents], ids=ids, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (absent ids are ignored); return True.

        ``ids=None`` is refused rather than taken as "delete everything": call
        :meth:`clear` for that.
        """
        if ids is None:
            raise InvalidInputError("delete() needs ids; to remove every document call "
                                    "clear()")
        if isinstance(ids, str):
            raise InvalidInputError(f"ids must be a list of str, got the str {ids!r:.60}")
        store = self._handle.existing_store()
        if store is not None:
            store.remove_many(list(ids))
        return True

    def clear(self) -> None:
        """Remove every document (one record)."""
        store = self._handle.existing_store()
        if store is not None:
            store.clear()

    # ------------------------------------------------------------------- reads
    def _doc(self, snap: Snapshot, id: str) -> Document | None:
        d = snap.get(id)
        if d is None:
            return None
        return Document(id=id, page_content=d.content, metadata=dict(d.metadata or {}))

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The Documents with these ids, in the order asked; absent and repeated ids skipped."""
        snap = self._handle.snapshot()
        if snap is None:
            return []
        out: list[Document] = []
        seen: set[str] = set()
        for i in ids:
            if i in seen:
                continue
            seen.add(i)
            doc = self._doc(snap, i)
            if doc is not None:
                out.append(doc)
        return out

    def _search(self, vector: Any, k: int, filter: dict[str, Any] | None,
                where_document: dict[str, Any] | None,
                ) -> tuple[Snapshot | None, list[tuple[str, float]]]:
        snap = self._handle.snapshot()
        if snap is None or k <= 0:
            return snap, []
        hits = snap.search(np.asarray(vector, dtype=np.float32), k, self.metric,
                           where=to_where(filter), where_document=where_document)
        return snap, [(h.id, float(h.score)) for h in hits]

    def similarity_search_with_score_by_vector(
            self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
            where_document: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` best Documents for a vector with their scores (see ``metric``)."""
        snap, hits = self._search(embedding, k, filter, where_document)
        out = []
        for i, score in hits:
            assert snap is not None
            doc = self._doc(snap, i)
            if doc is not None:
                out.append((doc, score))
        return out

    def similarity_search_with_score(
            self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
            where_document: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` best Documents for a text query with their scores.

        The score is mmwal's: cosine or dot similarity (higher is better) or
        the Euclidean distance for ``metric="l2"`` (lower is better).
        """
        return self.similarity_search_with_score_by_vector(
            self._embedding.embed_query(query), k, filter, where_document)

    def similarity_search(self, query: str, k: int = 4,
                          filter: dict[str, Any] | None = None,
                          where_document: dict[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        """The ``k`` Documents most similar to ``query`` (matching ``filter``), best first."""
        return [d for d, _ in self.similarity_search_with_score(query, k, filter,
                                                                where_document)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: dict[str, Any] | None = None,
                                    where_document: dict[str, Any] | None = None,
                                    **kwargs: Any) -> list[Document]:
        """The ``k`` Documents most similar to a vector, best first."""
        return [d for d, _ in self.similarity_search_with_score_by_vector(
            embedding, k, filter, where_document)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Relevance in [0, 1], higher is better.  Cosine similarity lies in
        # [-1, 1]; dot products of unit vectors too (for other vectors the
        # value is clipped); an l2 distance of unit vectors lies in [0, 2].
        if self.metric == "l2":
            return lambda d: min(1.0, max(0.0, 1.0 - d / 2.0))
        return lambda s: min(1.0, max(0.0, (1.0 + s) / 2.0))

    def max_marginal_relevance_search_by_vector(
            self, embedding: list[float], k: int = 4, fetch_k: int = 20,
            lambda_mult: float = 0.5, filter: dict[str, Any] | None = None,
            where_document: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        """``k`` Documents picked by maximal marginal relevance among the ``fetch_k`` best.

        The candidates' vectors are the stored ones (read from the same
        snapshot as the search), not re-embedded.
        """
        snap, hits = self._search(embedding, max(fetch_k, k), filter, where_document)
        if snap is None or not hits:
            return []
        docs = [snap.get(i) for i, _ in hits]
        found = [d for d in docs if d is not None]
        picked = mmr(embedding, np.stack([d.embedding for d in found]), k, lambda_mult)
        return [Document(id=found[j].id, page_content=found[j].content,
                         metadata=dict(found[j].metadata or {})) for j in picked]

    def max_marginal_relevance_search(
            self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
            filter: dict[str, Any] | None = None,
            where_document: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        """``k`` Documents for a text query picked by maximal marginal relevance."""
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, filter,
            where_document)

    # -------------------------------------------------------------- lifecycle
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings,
                   metadatas: list[dict[str, Any]] | None = None, *,
                   ids: list[str] | None = None, path: str | os.PathLike[str] | None = None,
                   **kwargs: Any) -> MmwalVectorStore:
        """A store at ``path`` (required keyword) holding ``texts``.

        Other keywords (``dim``, ``durability``, ``config``, ``metric``) go to
        the constructor.
        """
        if path is None:
            raise InvalidInputError("from_texts needs path=...: the directory of the mmwal "
                                    "store to create or open")
        vs = cls(path, embedding, **kwargs)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs

    def close(self) -> None:
        """Close the underlying Store and Reader (idempotent)."""
        self._handle.close()

    def __enter__(self) -> MmwalVectorStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MmwalVectorStore({self.path!r}, metric={self.metric!r})"
