"""mmwal.llama_index.MmwalVectorStore: a VectorStoreIndex on it end to end, and each method.

No network: a small hashing embedding (below) stands in for a model, and
the query engine gets LlamaIndex's MockLLM.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import mmwal
from mmwal.errors import InvalidInputError
from mmwal.llama_index import MmwalVectorStore, filters_to_where


class HashEmbedding(BaseEmbedding):
    """Bag of hashed words: texts sharing words are near; deterministic, offline."""

    dim: int = 256

    def _vec(self, text: str) -> list[float]:
        v = np.zeros(self.dim)
        for w in text.lower().split():
            v[int(hashlib.sha1(w.strip(".,?!").encode()).hexdigest(), 16) % self.dim] += 1.0
        return (v / max(np.linalg.norm(v), 1e-9)).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)


@pytest.fixture
def vs(tmp_path):
    v = MmwalVectorStore(tmp_path / "s")
    yield v
    v.close()


def _n(id, text, vec, **meta):
    return TextNode(id_=id, text=text, embedding=vec, metadata=meta)


def test_vector_store_index_end_to_end(tmp_path):
    emb = HashEmbedding()
    docs = [Document(text="The walrus sleeps on the ice floe.", doc_id="walrus",
                     metadata={"topic": "animals", "year": 2020}),
            Document(text="Sourdough bread needs flour water and salt.", doc_id="bread",
                     metadata={"topic": "food", "year": 2021}),
            Document(text="A write-ahead log makes appends durable.", doc_id="wal",
                     metadata={"topic": "storage", "year": 2022})]
    vs = MmwalVectorStore(tmp_path / "s", durability="os")
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=emb)
    got = index.as_retriever(similarity_top_k=1).retrieve("where does the walrus sleep?")
    assert [n.node.ref_doc_id for n in got] == ["walrus"]
    assert got[0].node.get_content() == "The walrus sleeps on the ice floe."
    assert got[0].node.metadata == {"topic": "animals", "year": 2020}
    embedded = got[0].node.get_content(metadata_mode=MetadataMode.EMBED)  # what was embedded
    assert got[0].score == pytest.approx(float(np.dot(emb._vec("where does the walrus sleep?"),
                                                      emb._vec(embedded))), abs=1e-5)
    # Filters through the retriever.
    f = MetadataFilters(filters=[MetadataFilter(key="year", value=2021, operator=">=")])
    got = index.as_retriever(similarity_top_k=3, filters=f).retrieve("walrus")
    assert sorted(n.node.ref_doc_id for n in got) == ["bread", "wal"]
    # Deleting a document through the index removes its nodes from the store.
    index.delete_ref_doc("walrus")
    got = index.as_retriever(similarity_top_k=3).retrieve("walrus")
    assert "walrus" not in {n.node.ref_doc_id for n in got}
    # A query engine answers (MockLLM) from the retrieved nodes.
    resp = index.as_query_engine(similarity_top_k=1, llm=MockLLM()).query("What does bread need?")
    assert resp.source_nodes[0].node.ref_doc_id == "bread"
    vs.close()
    # Reopened from disk by a new index: the nodes are all in the store.
    vs2 = MmwalVectorStore(tmp_path / "s")
    index2 = VectorStoreIndex.from_vector_store(vs2, embed_model=emb)
    got = index2.as_retriever(similarity_top_k=1).retrieve("durable appends log")
    assert [n.node.ref_doc_id for n in got] == ["wal"]
    vs2.close()


def test_node_metadata_and_relationships_round_trip(vs):
    node = TextNode(id_="n1", text="héllo", embedding=[1.0, 0.0, 0.0],
                    metadata={"a": 1, "b": "x", "nested": {"k": [1, 2.5, None]}, "t": True},
                    excluded_embed_metadata_keys=["b"],
                    relationships={
                        NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc1",
                                                                 metadata={"m": 1}),
                        NodeRelationship.NEXT: RelatedNodeInfo(node_id="n2")})
    vs.add([node])
    (got,) = vs.get_nodes(node_ids=["n1"])
    assert got.node_id == "n1" and got.get_content() == "héllo"
    assert got.metadata == node.metadata
    assert got.excluded_embed_metadata_keys == ["b"]
    assert got.ref_doc_id == "doc1"
    assert got.relationships[NodeRelationship.SOURCE].metadata == {"m": 1}
    assert got.relationships[NodeRelationship.NEXT].node_id == "n2"
    assert got.embedding == [1.0, 0.0, 0.0]
    assert got.hash == node.hash


def _src(doc):
    return {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)}


def test_delete_by_ref_doc_removes_every_node_of_it(vs):
    vs.add([TextNode(id_=f"{d}-{i}", text=f"{d} {i}", embedding=[1.0, float(i)],
                     relationships=_src(d)) for d in ("d1", "d2") for i in range(3)])
    vs.delete("d1")
    assert sorted(n.node_id for n in vs.get_nodes()) == ["d2-0", "d2-1", "d2-2"]
    vs.delete("absent")  # nothing to do, no error
    assert len(vs.get_nodes()) == 3


def test_get_and_delete_nodes_by_ids_and_filters(vs):
    vs.add([_n(str(i), f"t{i}", [1.0, float(i)], k=i % 2) for i in range(6)])
    odd = MetadataFilters(filters=[MetadataFilter(key="k", value=1)])
    assert [n.node_id for n in vs.get_nodes(node_ids=["4", "1", "zz", "1"])] == ["4", "1"]
    assert [n.node_id for n in vs.get_nodes(filters=odd)] == ["1", "3", "5"]
    assert [n.node_id for n in vs.get_nodes(node_ids=["0", "1", "3"], filters=odd)] == ["1", "3"]
    vs.delete_nodes(node_ids=["0", "1"], filters=odd)  # only "1" matches both
    assert [n.node_id for n in vs.get_nodes()] == ["0", "2", "3", "4", "5"]
    vs.delete_nodes(filters=odd)
    assert [n.node_id for n in vs.get_nodes()] == ["0", "2", "4"]
    vs.delete_nodes(node_ids=["2"])
    assert [n.node_id for n in vs.get_nodes()] == ["0", "4"]
    with pytest.raises(InvalidInputError, match="clear"):
        vs.delete_nodes()
    vs.clear()
    assert vs.get_nodes() == []


def _ids(vs, k=10, **kw):
    r = vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=k, **kw))
    return r.ids


def test_query_top_k_similarities_and_every_filter_operator(vs):
    vs.add([_n(str(i), f"t{i}", [1.0, float(i)], n=i, s=f"v{i}") for i in range(5)])
    r = vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=2))
    assert r.ids == ["0", "1"]
    assert r.similarities == pytest.approx([1.0, 1 / np.sqrt(2)])
    assert [n.get_content() for n in r.nodes] == ["t0", "t1"]

    def f(op, value, key="n"):
        return MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=op)])

    assert _ids(vs, filters=f("==", 2)) == ["2"]
    assert _ids(vs, filters=f("!=", 2)) == ["0", "1", "3", "4"]
    assert _ids(vs, filters=f(">", 2)) == ["3", "4"]
    assert _ids(vs, filters=f(">=", 2)) == ["2", "3", "4"]
    assert _ids(vs, filters=f("<", 2)) == ["0", "1"]
    assert _ids(vs, filters=f("<=", 2)) == ["0", "1", "2"]
    assert _ids(vs, filters=f("in", ["v1", "v3"], "s")) == ["1", "3"]
    assert _ids(vs, filters=f("nin", ["v1", "v3"], "s")) == ["0", "2", "4"]
    both = MetadataFilters(filters=[MetadataFilter(key="n", value=1, operator=">"),
                                    MetadataFilter(key="n", value=4, operator="<")])
    assert _ids(vs, filters=both) == ["2", "3"]
    either = MetadataFilters(filters=[MetadataFilter(key="n", value=0),
                                      MetadataFilters(filters=[MetadataFilter(key="n", value=4)]),
                                      ], condition=FilterCondition.OR)
    assert _ids(vs, filters=either) == ["0", "4"]
    assert _ids(vs, node_ids=["4", "2", "9"]) == ["2", "4"]
    assert _ids(vs, k=1, node_ids=["4", "2"]) == ["2"]
    # What VectorStoreIndex's retrievers pass for a store that keeps the text.
    assert _ids(vs, k=2, node_ids=[]) == ["0", "1"]
    assert _ids(vs, doc_ids=["None"]) == ["0", "1", "2", "3", "4"]  # nodes without a ref doc
    assert _ids(vs, doc_ids=["d"]) == []


def test_filters_map_to_where_and_unsupported_ones_are_refused():
    assert filters_to_where(None) is None
    assert filters_to_where(MetadataFilters(filters=[])) is None
    assert filters_to_where(MetadataFilters(filters=[MetadataFilter(key="a", value="x")])) == {
        "a": {"$eq": "x"}}
    for op in (FilterOperator.CONTAINS, FilterOperator.TEXT_MATCH, FilterOperator.ANY,
               FilterOperator.ALL, FilterOperator.IS_EMPTY, FilterOperator.TEXT_MATCH_INSENSITIVE):
        with pytest.raises(InvalidInputError, match=f"operator '{op.value}'.*key 'a'"):
            filters_to_where(MetadataFilters(filters=[MetadataFilter(key="a", value="x",
                                                                     operator=op)]))
    with pytest.raises(InvalidInputError, match="condition 'not'"):
        filters_to_where(MetadataFilters(filters=[MetadataFilter(key="a", value="x")],
                                         condition=FilterCondition.NOT))


def test_query_mmr_picks_diverse_nodes_with_mmr_threshold(vs):
    vs.add([_n("a1", "a", [1.0, 0.0, 0.0]), _n("a2", "a", [1.0, 0.0, 0.0]),
            _n("az", "az", [1.0, 0.0, 1.0])])
    plain = vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2)).ids
    assert set(plain) == {"a1", "a2"}
    r = vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2,
                                  mode=VectorStoreQueryMode.MMR, mmr_threshold=0.3))
    assert r.ids[0] in ("a1", "a2") and r.ids[1] == "az"
    assert r.similarities == pytest.approx([1.0, 1 / np.sqrt(2)])
    r = vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2,
                                  mode=VectorStoreQueryMode.MMR, mmr_threshold=1.0))
    assert set(r.ids) == {"a1", "a2"}


def test_query_refuses_what_it_cannot_do(vs):
    vs.add([_n("a", "a", [1.0, 0.0])])
    with pytest.raises(InvalidInputError, match="query mode 'hybrid'"):
        vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0], mode=VectorStoreQueryMode.HYBRID))
    with pytest.raises(InvalidInputError, match="query_embedding"):
        vs.query(VectorStoreQuery(query_str="a"))
    with pytest.raises(InvalidInputError, match="no embedding"):
        vs.add([TextNode(id_="b", text="b")])


def test_empty_and_absent_store(tmp_path):
    v = MmwalVectorStore(tmp_path / "s")
    assert v.client is None and not os.path.exists(tmp_path / "s")
    assert v.query(VectorStoreQuery(query_embedding=[1.0], similarity_top_k=3)).ids == []
    assert v.get_nodes() == []
    v.delete("x")
    v.add([_n("a", "a", [1.0, 0.0])])  # created here, with dim 2
    assert isinstance(v.client, mmwal.Store) and v.client.dim == 2
    v.close()
    with pytest.raises(InvalidInputError, match="metric"):
        MmwalVectorStore(tmp_path / "t", metric="l2")


def test_writes_of_the_same_object_and_of_other_processes_are_visible(vs):
    vs.add([_n("a", "a", [1.0, 0.0])])
    assert _ids(vs) == ["a"]
    vs.add([_n("b", "b", [1.0, 0.1])])
    assert _ids(vs) == ["a", "b"]
    code = ("import sys; from mmwal.llama_index import MmwalVectorStore as V;"
            "from llama_index.core.schema import TextNode;"
            "v = V(sys.argv[1]); v.add([TextNode(id_='c', text='c', embedding=[1.0, 0.0])]);"
            "v.close()")
    subprocess.run([sys.executable, "-c", code, vs.path], check=True)
    assert sorted(_ids(vs)) == ["a", "b", "c"]


async def test_async_methods_run(vs):
    await vs.async_add([_n("a", "a", [1.0, 0.0]), _n("b", "b", [0.0, 1.0])])
    r = await vs.aquery(VectorStoreQuery(query_embedding=[0.0, 1.0]))
    assert r.ids == ["b"]
    await vs.adelete_nodes(node_ids=["b"])
    assert [n.node_id for n in await vs.aget_nodes()] == ["a"]
