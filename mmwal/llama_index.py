"""A LlamaIndex vector store over an mmwal store: ``pip install 'mmwal[llama-index]'``.

:class:`MmwalVectorStore` is a ``BasePydanticVectorStore`` with
``stores_text=True``: a node is stored as one mmwal document whose id is the
node id, whose content is the node's text, and whose metadata is what
LlamaIndex's own ``node_to_metadata_dict`` makes of the node (the node's
metadata at the top level, so filters address it, plus the serialised node --
relationships included -- under ``_node_content`` and the ref doc id under
``ref_doc_id``), so that ``metadata_dict_to_node`` gives the node back.

``MetadataFilters`` map to mmwal's ``where``: operators ``==``, ``!=``, ``>``,
``>=``, ``<``, ``<=``, ``in``, ``nin``, conditions ``and``/``or``, nested
filters; any other operator or condition is refused with an
:class:`~mmwal.errors.InvalidInputError` naming it.

Examples
--------
>>> import tempfile
>>> from llama_index.core.schema import TextNode
>>> from llama_index.core.vector_stores.types import VectorStoreQuery
>>> from mmwal.llama_index import MmwalVectorStore
>>> vs = MmwalVectorStore(tempfile.mkdtemp())
>>> vs.add([TextNode(id_="a", text="apples", embedding=[1.0, 0.0]),
...         TextNode(id_="b", text="bread", embedding=[0.0, 1.0])])
['a', 'b']
>>> r = vs.query(VectorStoreQuery(query_embedding=[0.9, 0.1], similarity_top_k=1))
>>> r.ids, r.nodes[0].get_content()
(['a'], 'apples')
>>> vs.close()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._handle import StoreHandle, mmr
from ._snapshot import Snapshot
from ._types import Config
from .errors import InvalidInputError

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode, MetadataMode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as exc:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        f"mmwal.llama_index needs llama-index-core ({exc}); install it with "
        "pip install 'mmwal[llama-index]'") from exc

__all__ = ["MmwalVectorStore", "filters_to_where"]

_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
}
_METRICS = ("cosine", "dot")


def filters_to_where(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` as an mmwal (Chroma-style) ``where`` filter.

    Examples
    --------
    >>> from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
    >>> filters_to_where(MetadataFilters(filters=[
    ...     MetadataFilter(key="year", value=2020, operator=">="),
    ...     MetadataFilter(key="kind", value=["a", "b"], operator="in")], condition="or"))
    {'$or': [{'year': {'$gte': 2020}}, {'kind': {'$in': ['a', 'b']}}]}
    """
    if filters is None:
        return None
    if not isinstance(filters, MetadataFilters):
        raise InvalidInputError(
            f"filters must be llama_index MetadataFilters, got {type(filters).__name__}",
            got=type(filters).__name__)
    parts: list[dict[str, Any]] = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            w = filters_to_where(f)
            if w is not None:
                parts.append(w)
            continue
        assert isinstance(f, MetadataFilter)
        op = f.operator
        if op not in _OPS:
            raise InvalidInputError(
                f"mmwal does not support the filter operator {op.value!r} (on key {f.key!r}); "
                f"use one of {[o.value for o in _OPS]}", got=op.value, key=f.key)
        parts.append({f.key: {_OPS[op]: f.value}})
    cond = filters.condition or FilterCondition.AND
    if cond not in (FilterCondition.AND, FilterCondition.OR):
        raise InvalidInputError(
            f"mmwal does not support the filter condition {cond.value!r}; use 'and' or 'or' "
            "(negate the operators instead: != for ==, nin for in)", got=cond.value)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return {"$and" if cond == FilterCondition.AND else "$or": parts}


def _and(*parts: dict[str, Any] | None) -> dict[str, Any] | None:
    ps = [p for p in parts if p is not None]
    if not ps:
        return None
    return ps[0] if len(ps) == 1 else {"$and": ps}


class MmwalVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over one mmwal store.

    Parameters
    ----------
    path
        The store's directory.  An existing store is opened; otherwise one is
        created with ``dim`` (or, when ``dim`` is None, at the first ``add``
        with the length of the first embedding).
    dim
        The embedding dimension, to create the store at once (checked against
        an existing store).
    durability, config
        Passed to :class:`mmwal.Store`.
    metric
        ``"cosine"`` (default) or ``"dot"``; query similarities are these
        scores (higher is better).

    Notes
    -----
    ``add`` writes one atomic ``add_many`` record (an existing node id is
    replaced); deletions write one record per node.  Writes are visible to the
    next read of the same object, and writes of other processes too.  Call
    :meth:`close` to release the files.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    path: str
    metric: str = "cosine"
    _handle: StoreHandle = PrivateAttr()

    def __init__(self, path: str | os.PathLike[str], *, dim: int | None = None,
                 durability: str = "fsync", config: Config | None = None,
                 metric: str = "cosine") -> None:
        if metric not in _METRICS:
            raise InvalidInputError(f"metric must be one of {_METRICS}, got {metric!r}",
                                    got=metric)
        handle = StoreHandle(path, dim, durability, config)
        # pydantic's generated __init__ takes the fields; mypy sees the base's.
        super().__init__(path=handle.path, metric=metric)  # type: ignore[call-arg]
        self._handle = handle

    @classmethod
    def class_name(cls) -> str:
        return "MmwalVectorStore"

    @property
    def client(self) -> Any:
        """The underlying :class:`mmwal.Store` (None while no store exists)."""
        return self._handle.existing_store()

    # ------------------------------------------------------------------ writes
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Add nodes (each with an embedding) as one atomic record; return their ids."""
        nodes = list(nodes)
        if not nodes:
            return []
        vecs = []
        for i, node in enumerate(nodes):
            if node.embedding is None:
                raise InvalidInputError(
                    f"nodes[{i}] (id {node.node_id!r}) has no embedding: embed the nodes "
                    "first (a VectorStoreIndex does so with its embed_model)", index=i)
            vecs.append(node.embedding)
        ids = [n.node_id for n in nodes]
        contents = [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        metas = [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata)
                 for n in nodes]
        arr = np.asarray(vecs, dtype=np.float32)
        self._handle.store(int(arr.shape[-1])).add_many(ids, arr, contents, metas)
        return ids

    def _remove(self, ids: Sequence[str]) -> None:
        store = self._handle.existing_store()
        if store is not None:
            store.remove_many(list(ids))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose ref doc (source document) is ``ref_doc_id``."""
        snap = self._handle.snapshot()
        if snap is not None:
            self._remove(snap.find(where={"ref_doc_id": ref_doc_id}))

    def _select(self, snap: Snapshot, node_ids: list[str] | None,
                filters: MetadataFilters | None) -> list[str]:
        where = filters_to_where(filters)
        if node_ids is None:
            return snap.find(where=where)
        wanted = dict.fromkeys(node_ids)  # ordered, without repeats
        if where is None:
            return [i for i in wanted if i in snap]
        matching = set(snap.find(where=where))
        return [i for i in wanted if i in matching]

    def delete_nodes(self, node_ids: list[str] | None = None,
                     filters: MetadataFilters | None = None, **delete_kwargs: Any) -> None:
        """Delete the nodes with these ids and/or matching ``filters`` (both: matching both).

        With neither, nothing is taken as "everything": call :meth:`clear`.
        """
        if node_ids is None and filters is None:
            raise InvalidInputError("delete_nodes() needs node_ids or filters; to remove every "
                                    "node call clear()")
        snap = self._handle.snapshot()
        if snap is not None:
            self._remove(self._select(snap, node_ids, filters))

    def clear(self) -> None:
        """Remove every node (one record)."""
        store = self._handle.existing_store()
        if store is not None:
            store.clear()

    # ------------------------------------------------------------------- reads
    @staticmethod
    def _node(snap: Snapshot, id: str) -> BaseNode | None:
        d = snap.get(id)
        if d is None:
            return None
        node = metadata_dict_to_node(dict(d.metadata or {}), text=d.content)
        node.embedding = [float(x) for x in d.embedding]
        return node

    def get_nodes(self, node_ids: list[str] | None = None,
                  filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The nodes with these ids and/or matching ``filters``; with neither, every node.

        Nodes asked by id come in that order, absent and repeated ids skipped.
        """
        snap = self._handle.snapshot()
        if snap is None:
            return []
        out = []
        for i in self._select(snap, node_ids, filters):
            node = self._node(snap, i)
            if node is not None:
                out.append(node)
        return out

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes nearest ``query.query_embedding``.

        Honours ``filters``, ``doc_ids`` (ref doc ids) and ``node_ids`` (an
        empty list, which ``VectorStoreIndex`` retrievers pass, restricts
        nothing).  In
        ``VectorStoreQueryMode.MMR`` the nodes are picked by maximal marginal
        relevance among the ``mmr_prefetch_k`` (keyword; default
        ``mmr_prefetch_factor`` (4) x ``similarity_top_k``) nearest, with
        ``mmr_threshold`` (default 0.5) weighing relevance against diversity
        (1: relevance only), over the stored vectors.  Similarities are the
        metric's scores against the query in every mode.
        """
        mode = query.mode
        if mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            raise InvalidInputError(
                f"mmwal does not support the query mode {mode.value!r}; use 'default' or 'mmr'",
                got=mode.value)
        if query.query_embedding is None:
            raise InvalidInputError("query.query_embedding is None: mmwal searches by vector "
                                    "(a retriever embeds the query text first)")
        k = int(query.similarity_top_k)
        snap = self._handle.snapshot()
        if snap is None or k <= 0 or len(snap) == 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        doc_where = None
        if query.doc_ids is not None:
            if not query.doc_ids:
                return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
            doc_where = {"ref_doc_id": {"$in": list(query.doc_ids)}}
        where = _and(filters_to_where(query.filters), doc_where)
        q = np.asarray(query.query_embedding, dtype=np.float32)
        fetch = k
        if mode == VectorStoreQueryMode.MMR:
            prefetch = kwargs.get("mmr_prefetch_k")
            if prefetch is None:
                prefetch = int(k * float(kwargs.get("mmr_prefetch_factor", 4.0)))
            fetch = max(k, int(prefetch))
        allowed = None
        # An empty node_ids means no restriction: VectorStoreIndex.as_retriever
        # passes the ids of its index struct, which is empty when the vector
        # store keeps the text (stores_text=True), as this one does.
        if query.node_ids:
            # Exact search is a scan anyway: rank everything, keep these ids.
            allowed = set(query.node_ids)
            fetch = len(snap)
        hits = snap.search(q, fetch, self.metric, where=where)
        if allowed is not None:
            hits = [h for h in hits if h.id in allowed]
            if mode != VectorStoreQueryMode.MMR:
                hits = hits[:k]
        if mode == VectorStoreQueryMode.MMR and hits:
            docs = [snap.get(h.id) for h in hits]
            E = np.stack([d.embedding for d in docs if d is not None])
            lam = 0.5 if query.mmr_threshold is None else float(query.mmr_threshold)
            hits = [hits[j] for j in mmr(q, E, k, lam)]
        nodes, sims, ids = [], [], []
        for h in hits:
            node = self._node(snap, h.id)
            if node is not None:
                nodes.append(node)
                sims.append(float(h.score))
                ids.append(h.id)
        return VectorStoreQueryResult(nodes=nodes, similarities=sims, ids=ids)

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the underlying Store and Reader (idempotent)."""
        self._handle.close()
