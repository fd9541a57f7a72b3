"""Differential test: mmwal's filter evaluator against chromadb's own, on the same data.

One chromadb ``PersistentClient`` collection (in a temp dir) holds a fixed set of
seeded random metadatas; hypothesis draws filters from the grammar Chroma
accepts, runs each through ``Collection.get(where=...)`` and through
:func:`mmwal._search.where.matches`, and compares the ids.  It also checks that
every filter mmwal rejects in ``test_where.BAD_WHERE`` is rejected by Chroma.

Three documented differences are kept out of the draws (mmwal compares
numbers exactly, Chroma 1.5.9 converts between int and float first):

* ``$exists``, an mmwal extension;
* int operands beyond 2**53: Chroma rounds them to a float to compare them with
  float values;
* fractional float operands and float operands beyond the int64 range compared
  with int values: Chroma truncates the operand to an int (chroma-core/chroma
  issue 7491, fixes proposed in PRs 7493 and 7548 adopt the exact rule mmwal
  uses).  ``test_chroma_truncates_fractional_float_operands`` pins that
  difference, so it fails -- and the docs need updating -- once Chroma fixes it.
"""

from __future__ import annotations

import random

import chromadb
import pytest
from chromadb.config import Settings
from hypothesis import given, settings
from hypothesis import strategies as st
from test_where import BAD_WHERE, TEXT

from mmwal._search import where as W

N_DOCS = 120
BIG = 2**53
KEYS = ["a", "b", "ü.k"]  # Chroma refuses the empty key in metadata


def _chroma_value(rnd):
    r = rnd.random()
    if r < 0.25:
        return rnd.choice([0, 1, -1, 2, 3, BIG, BIG + 1, -BIG - 1, 2**62, -(2**62)])
    if r < 0.45:
        return rnd.choice([0.0, -0.0, 1.0, 1.5, -1.5, 2.5, 3.0, 2.0**53, 1e300, 0.1, -2.0**63])
    if r < 0.6:
        return rnd.random() < 0.5
    if r < 0.85:
        return "".join(rnd.choice("abé😀") for _ in range(rnd.randint(0, 3)))
    return rnd.choice([[1, 2], ["a"], [True], [1.5]])  # Chroma's list metadata: kind "other"


def _chroma_metas():
    rnd = random.Random(20261203)
    metas = []
    for _ in range(N_DOCS):
        if rnd.random() < 0.1:
            metas.append(None)  # Chroma refuses {} but takes None
            continue
        m = {k: _chroma_value(rnd) for k in KEYS if rnd.random() < 0.6}
        metas.append(m or None)
    return metas


METAS = _chroma_metas()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    client = chromadb.PersistentClient(str(tmp_path_factory.mktemp("chroma")),
                                       settings=Settings(anonymized_telemetry=False))
    col = client.create_collection("where-diff", embedding_function=None)
    col.add(ids=[str(i) for i in range(N_DOCS)], embeddings=[[0.0, 1.0]] * N_DOCS,
            metadatas=METAS)
    return col


chroma_ints = st.one_of(st.integers(-3, 3), st.sampled_from([BIG, -BIG, BIG - 1, 2**40]))
# integral floats only: a fractional one meets Chroma's truncation bug (see the docstring)
chroma_floats = st.sampled_from([0.0, -0.0, 1.0, -1.0, 3.0, 2.0**53, 2.0**53 + 2, 1e300, -1e300,
                                 -(2.0**63), 2.0**63])
numbers = st.one_of(chroma_ints, chroma_floats)
scalars = st.one_of(numbers, st.booleans(), TEXT)
keys = st.sampled_from(KEYS)


def _lists(x):
    return st.lists(x, min_size=1, max_size=3)


leaves = st.one_of(
    st.builds(lambda k, v: {k: v}, keys, scalars),
    st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$eq", "$ne"]), scalars),
    st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
              numbers),
    st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$in", "$nin"]),
              st.one_of(_lists(chroma_ints), _lists(chroma_floats), _lists(st.booleans()),
                        _lists(TEXT))),
)
filters = st.recursive(
    leaves,
    lambda inner: st.builds(lambda op, xs: {op: xs}, st.sampled_from(["$and", "$or"]),
                            st.lists(inner, min_size=2, max_size=3)),
    max_leaves=5)


@settings(max_examples=300, deadline=None)
@given(where=filters)
def test_same_ids_as_chromadb(collection, where):
    expr = W.parse(where)
    want = {int(i) for i in collection.get(where=where, include=[])["ids"]}
    got = {i for i, m in enumerate(METAS) if W.matches(expr, m)}
    assert got == want, where


# where=None means "no filter" to Chroma's get(); parse() is only called with a filter.
# Chroma's $contains on list-valued metadata and its "#document" key inside where are
# not supported by mmwal (documented in where.py): the filters Chroma accepts and mmwal
# refuses.
NOT_IN_MMWAL = [{"a": {"$contains": "x"}}, {"#document": {"$contains": "x"}}]
REJECTED = [case for case in BAD_WHERE if case[0] is not None and case[0] not in NOT_IN_MMWAL]


@pytest.mark.parametrize("where", NOT_IN_MMWAL, ids=repr)
def test_the_chroma_filters_mmwal_refuses(collection, where):
    assert any(case[0] == where for case in BAD_WHERE)  # refused by mmwal, with a message
    collection.get(where=where)  # accepted by Chroma


@pytest.mark.parametrize(("where", "path", "phrase"), REJECTED,
                         ids=[repr(w)[:60] for w, _, _ in REJECTED])
def test_chromadb_rejects_what_mmwal_rejects(collection, where, path, phrase):
    with pytest.raises(Exception):  # noqa: B017 - Chroma raises ValueError or its own errors
        collection.get(where=where)


def test_chroma_truncates_fractional_float_operands(tmp_path):
    """The one known disagreement on valid filters: a canary for when Chroma fixes it."""
    client = chromadb.PersistentClient(str(tmp_path), settings=Settings(anonymized_telemetry=False))
    col = client.create_collection("truncation", embedding_function=None)
    values = [2, 2.5, 3]
    col.add(ids=["int2", "float2.5", "int3"], embeddings=[[0.0, 1.0]] * 3,
            metadatas=[{"n": v} for v in values])
    cases = {  # filter: (what Chroma 1.5.9 returns, what mmwal returns)
        "$eq": ({"int2", "float2.5"}, {"float2.5"}),
        "$gte": ({"int2", "float2.5", "int3"}, {"float2.5", "int3"}),
        "$lt": (set(), {"int2"}),
        "$ne": ({"int3"}, {"int2", "int3"}),
    }
    for op, (chroma_ids, mmwal_ids) in cases.items():
        where = {"n": {op: 2.5}}
        assert set(col.get(where=where)["ids"]) == chroma_ids, where
        expr = W.parse(where)
        ids = ["int2", "float2.5", "int3"]
        assert {i for i, v in zip(ids, values) if W.matches(expr, {"n": v})} == mmwal_ids
