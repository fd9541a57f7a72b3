"""mmwal.langchain.MmwalVectorStore: LangChain's own conformance suite, plus what it skips.

``TestStandard`` runs ``langchain_tests``' ``VectorStoreIntegrationTests`` in
full (sync and async, ``get_by_ids`` included; nothing overridden or skipped),
each test on a fresh store in its own temporary directory.  The tests after it
cover what the suite does not: filters, scores, MMR over the stored vectors,
visibility of writes to the next read, other processes' writes, reopening.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import mmwal
from mmwal.errors import InvalidInputError
from mmwal.langchain import MmwalVectorStore, to_where


class TestStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path):
        # A fresh, empty store per test; durability="os" keeps the suite quick
        # (fsync is the default and is what the dedicated tests below use).
        vs = MmwalVectorStore(tmp_path / "store", self.get_embeddings(), durability="os")
        try:
            yield vs
        finally:
            vs.close()

    def test_suite_runs_sync_async_and_get_by_ids(self):
        # The suite skips whole halves when these say False: they must not.
        assert self.has_sync and self.has_async and self.has_get_by_ids


class _Axes(Embeddings):
    """Texts naming axes ("x", "y", "x y" ...) embed onto those axes: exact geometry."""

    AXES = ("x", "y", "z", "w")

    def _one(self, text: str) -> list[float]:
        v = [float(a in text.split()) for a in self.AXES]
        return v if any(v) else [0.0, 0.0, 0.0, 1e-3]

    def embed_documents(self, texts):
        return [self._one(t) for t in texts]

    def embed_query(self, text):
        return self._one(text)


@pytest.fixture
def vs(tmp_path):
    with MmwalVectorStore(tmp_path / "s", _Axes()) as v:
        yield v


def test_store_is_created_at_the_first_write_with_the_embedding_dimension(tmp_path):
    path = tmp_path / "lazy"
    with MmwalVectorStore(path, _Axes()) as v:
        assert not path.exists()  # reading an absent store creates nothing
        assert v.similarity_search("x") == []
        assert v.get_by_ids(["a"]) == []
        assert v.delete(["a"]) is True
        v.add_texts(["x"], ids=["a"])
    with mmwal.Reader(path) as r:
        assert r.stats().dim == 4


def test_dim_given_creates_the_store_at_once_and_is_checked(tmp_path):
    MmwalVectorStore(tmp_path / "s", _Axes(), dim=4).close()
    assert os.path.exists(tmp_path / "s")
    with pytest.raises(mmwal.MmwalError):
        MmwalVectorStore(tmp_path / "s", _Axes(), dim=5)


def test_bad_arguments_are_typed_errors_naming_the_fix(tmp_path):
    with pytest.raises(InvalidInputError, match="durability"):
        MmwalVectorStore(tmp_path / "s", _Axes(), durability="sometimes")
    with pytest.raises(InvalidInputError, match="metric"):
        MmwalVectorStore(tmp_path / "s", _Axes(), metric="jaccard")
    with pytest.raises(InvalidInputError, match="Embeddings"):
        MmwalVectorStore(tmp_path / "s", object())
    with pytest.raises(InvalidInputError, match="path="):
        MmwalVectorStore.from_texts(["x"], _Axes())
    assert not os.path.exists(tmp_path / "s")


def test_write_is_visible_to_the_next_read_of_the_same_object(vs):
    assert vs.similarity_search("x", k=1) == []  # no store yet
    vs.add_texts(["x"], ids=["a"])
    assert [d.id for d in vs.similarity_search("x", k=1)] == ["a"]
    vs.add_texts(["x y"], ids=["a"])  # replace
    assert vs.get_by_ids(["a"])[0].page_content == "x y"
    vs.delete(["a"])
    assert vs.similarity_search("x", k=1) == []
    assert vs.get_by_ids(["a"]) == []


def test_writes_of_another_process_are_visible(vs):
    vs.add_texts(["x"], ids=["a"])
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from test_langchain import _Axes;"
            "from mmwal.langchain import MmwalVectorStore as V;"
            "v = V(sys.argv[1], _Axes()); v.add_texts(['y'], ids=['b']); v.close()")
    subprocess.run([sys.executable, "-c", code, vs.path, os.path.dirname(__file__)], check=True)
    assert [d.id for d in vs.similarity_search("y", k=1)] == ["b"]


def test_metadata_and_ids_round_trip_and_persist(tmp_path):
    meta = {"source": "a.pdf", "page": 3, "score": 0.5, "ok": True, "none": None,
            "tags": ["a", "b"], "nested": {"k": [1, {"z": "é"}]}}
    docs = [Document(page_content="x", metadata=meta, id="given"),
            Document(page_content="", metadata={})]
    with MmwalVectorStore(tmp_path / "s", _Axes()) as v:
        ids = v.add_documents(docs)
    assert ids[0] == "given" and len(ids[1]) == 36  # a uuid4 for the one without an id
    with MmwalVectorStore(tmp_path / "s", _Axes()) as v:  # reopened
        got = v.get_by_ids([ids[1], "missing", ids[0], ids[0]])
    assert got == [Document(page_content="", metadata={}, id=ids[1]),
                   Document(page_content="x", metadata=meta, id="given")]


def test_unstorable_metadata_is_refused_and_nothing_is_written(vs):
    import datetime
    with pytest.raises(InvalidInputError):
        vs.add_texts(["x", "y"], [{"ok": 1}, {"when": datetime.date(2020, 1, 1)}], ids=["a", "b"])
    assert vs.get_by_ids(["a", "b"]) == []


def test_to_where_turns_several_keys_into_and_and_passes_chroma_filters():
    assert to_where(None) is None
    assert to_where({}) is None
    assert to_where({"a": 1}) == {"a": 1}
    assert to_where({"a": 1, "b": {"$in": ["x"]}}) == {"$and": [{"a": 1}, {"b": {"$in": ["x"]}}]}
    f = {"$or": [{"a": 1}, {"b": 2}]}
    assert to_where(f) is f
    with pytest.raises(InvalidInputError, match="callable"):
        to_where(lambda d: True)


def test_filters_select_exactly_the_matching_documents(vs):
    vs.add_texts(["x", "x", "x y", "y"],
                 [{"src": "a", "p": 1}, {"src": "b", "p": 2}, {"src": "a", "p": 3}, {}],
                 ids=["1", "2", "3", "4"])
    def ids(**kw):
        return sorted(d.id for d in vs.similarity_search("x", k=10, **kw))
    assert ids(filter={"src": "a"}) == ["1", "3"]
    assert ids(filter={"src": "a", "p": 3}) == ["3"]  # several keys: all of them
    assert ids(filter={"p": {"$gte": 2}}) == ["2", "3"]
    assert ids(filter={"$or": [{"src": "b"}, {"p": 3}]}) == ["2", "3"]
    assert ids(filter={"src": {"$ne": "a"}}) == ["2", "4"]
    assert ids(where_document={"$contains": "y"}) == ["3", "4"]
    assert [d.id for d in vs.similarity_search_by_vector([0, 1, 0, 0], k=10,
                                                         filter={"src": "a"})] == ["3", "1"]
    with pytest.raises(InvalidInputError, match="where"):
        vs.similarity_search("x", filter={"src": {"$like": "a"}})


def test_scores_and_relevance_scores(vs):
    vs.add_texts(["x", "y", "x y"], ids=["x", "y", "xy"])
    got = vs.similarity_search_with_score("x", k=3)
    assert [d.id for d, _ in got] == ["x", "xy", "y"]
    assert [round(s, 5) for _, s in got] == [1.0, round(1 / np.sqrt(2), 5), 0.0]
    rel = vs.similarity_search_with_relevance_scores("x", k=3)
    assert [round(s, 5) for _, s in rel] == [1.0, round((1 + 1 / np.sqrt(2)) / 2, 5), 0.5]


def test_l2_metric_scores_are_distances(tmp_path):
    with MmwalVectorStore(tmp_path / "s", _Axes(), metric="l2") as v:
        v.add_texts(["x", "y"], ids=["x", "y"])
        got = v.similarity_search_with_score("x", k=2)
        assert [(d.id, round(s, 5)) for d, s in got] == [("x", 0.0), ("y", round(np.sqrt(2), 5))]
        rel = v.similarity_search_with_relevance_scores("x", k=2)
        assert [round(s, 5) for _, s in rel] == [1.0, round(1 - np.sqrt(2) / 2, 5)]


class _NoReembedding(_Axes):
    """Embeds queries only once documents are in: MMR must use the stored vectors."""

    frozen = False

    def embed_documents(self, texts):
        assert not self.frozen, "documents were embedded again"
        return super().embed_documents(texts)


def test_mmr_uses_the_stored_vectors_and_picks_diverse_documents(tmp_path):
    emb = _NoReembedding()
    with MmwalVectorStore(tmp_path / "s", emb) as vs:
        vs.add_texts(["x", "x", "x z"], ids=["x1", "x2", "xz"])
        emb.frozen = True
        # Plain similarity returns the two identical documents first; MMR takes
        # one of them and then the relevant one that differs from it.
        assert {d.id for d in vs.similarity_search("x", k=2)} == {"x1", "x2"}
        got = [d.id for d in vs.max_marginal_relevance_search("x", k=2, fetch_k=3,
                                                               lambda_mult=0.3)]
        assert got[0] in ("x1", "x2") and got[1] == "xz"
        # lambda_mult=1 is plain relevance.
        got = vs.max_marginal_relevance_search_by_vector([1, 0, 0, 0], k=2, lambda_mult=1.0)
        assert {d.id for d in got} == {"x1", "x2"}
        # fetch_k bounds the candidates: with one candidate there is one result.
        assert len(vs.max_marginal_relevance_search("x", k=2, fetch_k=1)) == 2  # fetch_k < k: k wins


def test_mmr_and_similarity_by_vector_honour_filters(vs):
    vs.add_texts(["x", "x z", "y"], [{"k": 1}, {"k": 2}, {"k": 2}], ids=["x", "xz", "y"])
    assert [d.id for d in vs.max_marginal_relevance_search("x", k=2, filter={"k": 2})] == ["xz", "y"]


def test_delete_needs_ids_and_clear_removes_everything(vs):
    vs.add_texts(["x", "y"], ids=["a", "b"])
    with pytest.raises(InvalidInputError, match="clear"):
        vs.delete()
    with pytest.raises(InvalidInputError):
        vs.delete("a")
    vs.clear()
    assert vs.get_by_ids(["a", "b"]) == []


def test_from_texts_and_retriever(tmp_path):
    v = MmwalVectorStore.from_texts(["x", "y"], _Axes(), [{"n": 1}, {"n": 2}], ids=["a", "b"],
                                    path=tmp_path / "s", durability="os")
    try:
        r = v.as_retriever(search_kwargs={"k": 1, "filter": {"n": 2}})
        assert [d.id for d in r.invoke("x")] == ["b"]
        r = v.as_retriever(search_type="mmr", search_kwargs={"k": 1})
        assert [d.id for d in r.invoke("x")] == ["a"]
    finally:
        v.close()


async def test_async_methods_and_afrom_texts(tmp_path):
    v = await MmwalVectorStore.afrom_texts(["x", "y"], _Axes(), ids=["a", "b"],
                                           path=tmp_path / "s")
    try:
        assert [d.id for d in await v.asimilarity_search("y", k=1)] == ["b"]
        assert [d.id for d in await v.amax_marginal_relevance_search("y", k=1)] == ["b"]
        await v.adelete(["b"])
        assert [d.id for d in await v.aget_by_ids(["a", "b"])] == ["a"]
    finally:
        v.close()


def test_closed_store_refuses_calls(tmp_path):
    v = MmwalVectorStore(tmp_path / "s", _Axes())
    v.add_texts(["x"], ids=["a"])
    v.close()
    v.close()
    with pytest.raises(mmwal.errors.ClosedError):
        v.similarity_search("x")
    with pytest.raises(mmwal.errors.ClosedError):
        v.add_texts(["x"])


def test_the_suite_is_not_overridden_here():
    # test_no_overrides_DO_NOT_OVERRIDE in the suite checks this too; keep the
    # module honest about it in plain words.
    base = VectorStoreIntegrationTests
    for name, member in inspect.getmembers(base):
        if name.startswith("test_"):
            assert getattr(TestStandard, name) is member


def test_fake_embedding_of_the_suite_is_deterministic():
    e = DeterministicFakeEmbedding(size=6)
    assert e.embed_query("foo") == e.embed_query("foo")
