"""The metadata filter language (mmwal/_search/where.py).

Three layers: the vectorised evaluator over columns must agree with the
per-document evaluator on random metadata and random filters (hypothesis);
malformed filters are typed errors naming their path; and a table of results
pinned to what chromadb 1.5.9 returned for the same filters and metadata.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmwal._search import where as W
from mmwal.errors import InvalidInputError, MmwalError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# ----------------------------------------------------------------------------- strategies
# A small pool of keys and values so that random filters hit random metadata often.

KEYS = ["a", "b", "ü.k", ""]
TEXT = st.text(alphabet="abé😀", max_size=3)
EDGE_INTS = [0, 1, -1, 2, 3, 2**53, 2**53 + 1, -(2**53) - 1, INT64_MAX, INT64_MIN,
             INT64_MAX - 1, 2**62]
EDGE_FLOATS = [0.0, -0.0, 1.0, 1.5, -1.5, 2.5, 3.0, 2.0**53, 2.0**63, -(2.0**63), 1e300,
               -1e300, 9.3e18, 0.1]

query_ints = st.one_of(st.integers(-3, 3), st.sampled_from(EDGE_INTS))
query_floats = st.one_of(st.sampled_from(EDGE_FLOATS),
                         st.floats(-4, 4, allow_nan=False).map(lambda x: round(x * 2) / 2))
query_numbers = st.one_of(query_ints, query_floats)
query_scalars = st.one_of(query_numbers, st.booleans(), TEXT)

meta_values = st.one_of(
    st.sampled_from([2**53 - 1, -(2**53), 2.0**53 + 2, INT64_MIN + 1, 2.0**62, 0.5, -0.5]),
    query_ints, query_floats, st.booleans(), TEXT,
    st.sampled_from([math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1, 2**64 - 1]),
    st.none(), st.lists(st.integers(0, 2), max_size=2), st.dictionaries(TEXT, st.integers(0, 1),
                                                                        max_size=1),
    st.binary(max_size=2),
)
metadatas = st.lists(
    st.one_of(st.none(), st.dictionaries(st.sampled_from(KEYS), meta_values, max_size=3)),
    max_size=12)


def _same_kind_list(draw_from):
    return st.lists(draw_from, min_size=1, max_size=4)


set_operands = st.one_of(_same_kind_list(query_ints), _same_kind_list(query_floats),
                         _same_kind_list(st.booleans()), _same_kind_list(TEXT))

keys = st.sampled_from(KEYS)
leaves = st.one_of(
    st.builds(lambda k, v: {k: v}, keys, query_scalars),
    st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$eq", "$ne"]),
              query_scalars),
    st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
              query_numbers),
    st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$in", "$nin"]),
              set_operands),
    st.builds(lambda k, v: {k: {"$exists": v}}, keys, st.booleans()),
)
filters = st.recursive(
    leaves,
    lambda inner: st.builds(lambda op, xs: {op: xs}, st.sampled_from(["$and", "$or"]),
                            st.lists(inner, min_size=2, max_size=3)),
    max_leaves=6)


def vectorised(where, metas):
    return W.compile_columns(W.parse(where), W.build_columns(metas), len(metas)).tolist()


def one_by_one(where, metas):
    expr = W.parse(where)
    return [W.matches(expr, m) for m in metas]


# ----------------------------------------------------------------------------- properties


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filters, metadatas)
def test_columns_agree_with_matches(where, metas):
    assert vectorised(where, metas) == one_by_one(where, metas)


EDGE_VALUES = [*EDGE_INTS, *EDGE_FLOATS, 2**53 - 1, -(2**53), 2.0**53 + 2, -(2.0**53),
               INT64_MIN + 1, 2.0**62, math.nan, math.inf, -math.inf, True, False, "", "a", "é",
               None, [1], 2**63, 0.5, -0.5, 3.5]


def test_every_operator_on_every_edge_pair():
    """Where random draws rarely land: ints beyond 2**53 against floats, int64 bounds, -0.0."""
    metas = [{"x": v} for v in EDGE_VALUES] + [{}, None]
    queries = [v for v in EDGE_VALUES
               if isinstance(v, (int, float, str)) and not (isinstance(v, float) and
                                                           not math.isfinite(v))
               and (not isinstance(v, int) or INT64_MIN <= v <= INT64_MAX)]
    cols = W.build_columns(metas)
    checked = 0
    for q in queries:
        ops = ["$eq", "$ne"]
        if isinstance(q, (int, float)) and not isinstance(q, bool):
            ops += ["$gt", "$gte", "$lt", "$lte"]
        for op in ops:
            where = {"x": {op: q}}
            expr = W.parse(where)
            got = W.compile_columns(expr, cols, len(metas)).tolist()
            assert got == [W.matches(expr, m) for m in metas], where
            checked += 1
        for op in ("$in", "$nin"):
            same = [v for v in queries if W._kind_of(v) == W._kind_of(q)]
            where = {"x": {op: [q, *same[:: 3]]}}
            expr = W.parse(where)
            got = W.compile_columns(expr, cols, len(metas)).tolist()
            assert got == [W.matches(expr, m) for m in metas], where
    assert checked > 150


@settings(max_examples=150, deadline=None)
@given(metadatas, st.lists(st.integers(0, 12), max_size=4))
def test_chunked_builder_equals_one_shot(metas, cuts):
    b = W.ColumnBuilder()
    start = 0
    for cut in sorted(cuts):
        b.add(metas[start:cut])
        start = max(start, cut)
    b.add(metas[start:])
    assert b.n == len(metas)
    _assert_columns_equal(b.finish(), W.build_columns(metas))


def _assert_columns_equal(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert sorted(got[key]) == sorted(want[key])
        for kind, val in want[key].items():
            if kind == "other":
                np.testing.assert_array_equal(got[key][kind], val)
            elif kind == "str":
                np.testing.assert_array_equal(got[key][kind][0], val[0])
                assert list(got[key][kind][1]) == list(val[1])
            else:
                for g, w in zip(got[key][kind], val):
                    np.testing.assert_array_equal(g, w)


# Rows of one shape (the same keys, in any order), now and then a row with a key
# more or less, or None: the shapes a batch of documents usually has.
shaped_metadatas = st.tuples(
    st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
    st.lists(st.tuples(st.lists(meta_values, min_size=3, max_size=3), st.booleans(),
                       st.integers(0, 9)), max_size=12),
).map(lambda shape_rows: [
    None if odd == 0 else
    dict(zip(shape[::-1] if flip else shape, vals)) if odd > 2 else
    dict(zip([*shape, "extra"], vals)) if odd == 1 else
    dict(zip(shape[1:], vals))
    for vals, flip, odd in shape_rows[1]
    for shape in [shape_rows[0]]])


@settings(max_examples=200, deadline=None)
@given(st.one_of(shaped_metadatas, metadatas), st.lists(st.integers(0, 12), max_size=3))
def test_add_plain_equals_the_row_by_row_path(metas, cuts):
    """add_plain (array steps per key) builds what the row-by-row path builds, keys in
    first-seen order, and says flat exactly when no key is a container."""
    import types

    plain, by_row = W.ColumnBuilder(), W.ColumnBuilder()
    start = 0
    flat = True
    for cut in [*sorted(cuts), len(metas)]:
        part = metas[start:cut]
        flat = plain.add_plain(part) and flat
        by_row.add([types.MappingProxyType(m) if m is not None else None for m in part])
        start = max(start, cut)
    got, want = plain.finish(), by_row.finish()
    assert list(got) == list(want)  # (the order columns.bin lists the keys in)
    _assert_columns_equal(got, want)
    assert flat == all(type(v) not in (list, dict) for m in metas if m for v in m.values())


@settings(max_examples=150, deadline=None)
@given(metadatas)
def test_column_layout_invariants(metas):
    """The layout the module docstring promises to a fragment writer."""
    n = len(metas)
    cols = W.build_columns(metas)
    for key, kc in cols.items():
        assert kc, key
        presence = []
        for kind, dtype in (("int", np.int64), ("float", np.float64), ("bool", np.bool_)):
            if kind in kc:
                values, present = kc[kind]
                assert values.dtype == dtype and present.dtype == np.bool_
                assert values.shape == present.shape == (n,)
                assert present.any()
                assert not values[~present].any()  # zeros where absent
                presence.append(present)
        if "str" in kc:
            codes, dictionary = kc["str"]
            assert codes.dtype == np.int32 and codes.shape == (n,)
            assert list(dictionary) == sorted(set(dictionary))
            assert set(codes[codes >= 0].tolist()) == set(range(len(dictionary)))
            assert codes.min() >= -1
            presence.append(codes >= 0)
        if "other" in kc:
            assert kc["other"].dtype == np.bool_ and kc["other"].any()
            presence.append(kc["other"])
        # at most one kind per row; exactly the rows whose metadata has the key
        assert (np.sum(presence, axis=0) <= 1).all()
        has_key = [m is not None and key in m for m in metas]
        assert np.any(presence, axis=0).tolist() == has_key
    all_keys = {k for m in metas if m for k in m}
    assert set(cols) == all_keys


@settings(max_examples=200, deadline=None)
@given(filters)
def test_every_generated_filter_reads_only_its_keys(where):
    expr = W.parse(where)
    assert W.keys_of(expr) <= set(KEYS)
    # a key no row has: evaluating over no columns equals matching empty metadata
    n = 3
    got = W.compile_columns(expr, {}, n).tolist()
    assert got == [W.matches(expr, None)] * n == [W.matches(expr, {})] * n


def test_compile_does_not_write_into_read_only_columns():
    metas = [{"a": 1}, {"a": "x"}, {"a": True}, {"a": 2.5}, {"a": [1]}, None]
    cols = W.build_columns(metas)
    for kc in cols.values():
        for val in kc.values():
            for arr in (val if isinstance(val, tuple) else (val,)):
                if isinstance(arr, np.ndarray):
                    arr.setflags(write=False)
    where = {"$or": [{"a": {"$exists": True}}, {"a": {"$in": [True, False]}}, {"a": {"$ne": 1}}]}
    assert vectorised(where, metas) == one_by_one(where, metas)
    assert W.compile_columns(W.parse(where), cols, 6).flags.writeable


def test_dictionary_may_be_any_sorted_sequence():
    """A fragment can keep the dictionary as a blob + offsets behind __len__/__getitem__."""

    class Blob:
        def __init__(self, strings):
            data = [s.encode() for s in strings]
            self.blob = b"".join(data)
            self.offsets = np.cumsum([0] + [len(d) for d in data])

        def __len__(self):
            return len(self.offsets) - 1

        def __getitem__(self, i):
            return self.blob[self.offsets[i]:self.offsets[i + 1]].decode()

    metas = [{"s": s} for s in ["b", "é", "a", "😀", "b", "zz"]] + [None]
    cols = W.build_columns(metas)
    codes, dictionary = cols["s"]["str"]
    cols["s"]["str"] = (codes, Blob(dictionary))
    for where in [{"s": "b"}, {"s": {"$in": ["😀", "a", "nope"]}}, {"s": {"$nin": ["zz"]}},
                  {"s": "nope"}]:
        assert W.compile_columns(W.parse(where), cols, len(metas)).tolist() == \
            one_by_one(where, metas)


# ----------------------------------------------------------------------------- semantics


def test_bool_is_not_a_number():
    metas = [{"f": True}, {"f": 1}, {"f": 1.0}, {"f": False}, {"f": 0}]
    assert vectorised({"f": True}, metas) == [True, False, False, False, False]
    assert vectorised({"f": 1}, metas) == [False, True, True, False, False]
    assert vectorised({"f": {"$gte": 0}}, metas) == [False, True, True, False, True]
    assert vectorised({"f": {"$ne": True}}, metas) == [False, True, True, True, True]
    assert vectorised({"f": {"$in": [False]}}, metas) == [False, False, False, True, False]


def test_int_float_comparisons_are_exact():
    metas = [{"x": 2**53 + 1}, {"x": 2.0**53}, {"x": INT64_MAX}, {"x": 2.0**63}, {"x": 0.5}]
    assert vectorised({"x": 2**53 + 1}, metas) == [True, False, False, False, False]
    assert vectorised({"x": 2.0**53}, metas) == [False, True, False, False, False]
    assert vectorised({"x": {"$gt": 2.0**53}}, metas) == [True, False, True, True, False]
    assert vectorised({"x": {"$lt": 2.0**63}}, metas) == [True, True, True, False, True]
    assert vectorised({"x": {"$gte": INT64_MAX}}, metas) == [False, False, True, True, False]
    assert vectorised({"x": {"$in": [2.0**53, 0.5]}}, metas) == [False, True, False, False, True]


def test_ne_and_nin_match_missing_keys_and_other_kinds():
    metas = [{"k": 1}, {"k": "1"}, {}, None, {"k": None}, {"k": [1]}, {"k": math.nan}]
    assert vectorised({"k": {"$ne": 1}}, metas) == [False, True, True, True, True, True, True]
    assert vectorised({"k": {"$nin": [1, 2]}}, metas) == [False, True, True, True, True, True,
                                                         True]
    assert vectorised({"k": {"$eq": 1}}, metas) == [True] + [False] * 6


def test_exists_counts_every_value_even_none_and_lists():
    metas = [{"k": 1}, {"k": None}, {"k": [1]}, {"k": {"x": 1}}, {"k": 2**64 - 1}, {}, None]
    assert vectorised({"k": {"$exists": True}}, metas) == [True] * 5 + [False] * 2
    assert vectorised({"k": {"$exists": False}}, metas) == [False] * 5 + [True] * 2


def test_non_scalar_values_never_match_comparisons():
    metas = [{"k": [1]}, {"k": {"a": 1}}, {"k": None}, {"k": b"1"}, {"k": 2**63}]
    for where in [{"k": 1}, {"k": {"$gte": -1e300}}, {"k": {"$lt": 1e300}},
                  {"k": {"$in": [1, 2]}}, {"k": "1"}, {"k": {"$in": [2.0**63]}}]:
        assert vectorised(where, metas) == [False] * 5, where


def test_and_or_nest():
    metas = [{"src": "a.pdf", "page": 3}, {"src": "a.pdf", "page": 1}, {"src": "b.pdf", "page": 9}]
    where = {"$or": [{"$and": [{"src": "a.pdf"}, {"page": {"$gte": 2}}]}, {"page": {"$gt": 5}}]}
    assert vectorised(where, metas) == [True, False, True]


def test_empty_fragment():
    assert W.compile_columns(W.parse({"a": 1}), W.build_columns([]), 0).tolist() == []
    assert W.compile_columns(W.parse({"a": {"$ne": 1}}), {}, 0).shape == (0,)


# Pinned: the same 17 metadatas were added to a chromadb 1.5.9 PersistentClient collection
# and each filter run with Collection.get(where=...); these are the ids it returned.
CHROMA_METAS = [
    {"a": 1}, {"a": 1.0}, {"a": True}, {"a": False}, {"a": 0}, {"a": "1"}, {"a": 2.5},
    {"a": "b"}, None, {"b": 1}, {"a": ["x", "y"]}, {"a": [1, 2]}, {"a": ""}, {"a": -1},
    {"a": 1.5},
]
_ALL = set(range(len(CHROMA_METAS)))
CHROMA_PINNED = [
    ({"a": 1}, {0, 1}),
    ({"a": 1.0}, {0, 1}),
    ({"a": True}, {2}),
    ({"a": False}, {3}),
    ({"a": 0}, {4}),
    ({"a": "1"}, {5}),
    ({"a": {"$ne": 1}}, _ALL - {0, 1}),
    ({"a": {"$ne": True}}, _ALL - {2}),
    ({"a": {"$ne": "b"}}, _ALL - {7}),
    ({"a": {"$gt": 0}}, {0, 1, 6, 14}),
    ({"a": {"$gte": 1}}, {0, 1, 6, 14}),
    ({"a": {"$gt": 0.5}}, {0, 1, 6, 14}),
    ({"a": {"$lt": 2}}, {0, 1, 4, 13, 14}),
    ({"a": {"$in": [1]}}, {0, 1}),
    ({"a": {"$in": [1.0]}}, {0, 1}),
    ({"a": {"$in": [True]}}, {2}),
    ({"a": {"$in": ["b", "x"]}}, {7}),
    ({"a": {"$nin": [1]}}, _ALL - {0, 1}),
    ({"a": {"$nin": ["b"]}}, _ALL - {7}),
    ({"a": {"$nin": [True]}}, _ALL - {2}),
    ({"a": "x"}, set()),
    ({"": 1}, set()),
    ({"$or": [{"a": 1}, {"b": 1}]}, {0, 1, 9}),
]


@pytest.mark.parametrize(("where", "want"), CHROMA_PINNED, ids=[str(w) for w, _ in CHROMA_PINNED])
def test_pinned_to_chroma(where, want):
    got = vectorised(where, CHROMA_METAS)
    assert {i for i, hit in enumerate(got) if hit} == want
    assert got == one_by_one(where, CHROMA_METAS)


DOCS = ["doc 0 Hello", "doc 10 Hello", "", None, "line\nbreak"]


@pytest.mark.parametrize(("where_document", "want"), [
    ({"$contains": "Hello"}, [True, True, False, False, False]),
    ({"$contains": "hello"}, [False] * 5),               # case-sensitive
    ({"$not_contains": "1"}, [True, False, True, True, True]),  # no content counts as ""
    ({"$regex": "doc 1[0-9]"}, [False, True, False, False, False]),  # unanchored search
    ({"$regex": "^break"}, [False] * 5),
    ({"$not_regex": "^doc"}, [False, False, True, True, True]),
    ({"$regex": "(?i)HELLO"}, [True, True, False, False, False]),
    ({"$and": [{"$contains": "1"}, {"$contains": "Hello"}]}, [False, True, False, False, False]),
    ({"$or": [{"$contains": "0 "}, {"$regex": "k$"}]}, [True, True, False, False, True]),
])
def test_where_document(where_document, want):
    expr = W.parse_document(where_document)
    assert [W.matches_document(expr, d) for d in DOCS] == want


# ----------------------------------------------------------------------------- errors

BAD_WHERE = [
    # (filter, path named in the message, a phrase of the message)
    ([("a", 1)], "where", "must be a dict"),
    (None, "where", "must be a dict"),
    ({}, "where", "is empty"),
    ({"a": 1, "b": 2}, "where", "has 2 keys"),
    ({1: 1}, "where[1]", "keys are str"),
    ({"$foo": 1}, 'where["$foo"]', "unknown operator"),
    ({"$contains": "x"}, 'where["$contains"]', "unknown operator"),
    ({"$and": []}, 'where["$and"]', "at least two"),
    ({"$and": [{"a": 1}]}, 'where["$and"]', "at least two"),
    ({"$or": {"a": 1}}, 'where["$or"]', "a list of filters"),
    ({"$and": [{"a": 1}, "b"]}, 'where["$and"][1]', "must be a dict"),
    ({"$and": [{"a": 1}, {"page": {"$gt": "3"}}]}, 'where["$and"][1]["page"]["$gt"]',
     "numbers only"),
    ({"$or": [{"a": 1}, {"$and": [{"b": 1}, {"page": {"$gt": True}}]}]},
     'where["$or"][1]["$and"][1]["page"]["$gt"]', "numbers only"),
    ({"page": {"$gte": None}}, 'where["page"]["$gte"]', "numbers only"),
    ({"a": None}, 'where["a"]', "got NoneType"),
    ({"a": [1]}, 'where["a"]', "got list"),
    ({"a": {}}, 'where["a"]', "is empty"),
    ({"a": {"$eq": 1, "$ne": 2}}, 'where["a"]', "has 2 keys"),
    ({"a": {"$like": 1}}, 'where["a"]["$like"]', "unknown operator"),
    ({"a": {"$contains": "x"}}, 'where["a"]["$contains"]', "list-valued metadata"),
    ({"#document": {"$contains": "x"}}, 'where["#document"]["$contains"]', "use where_document"),
    ({"a": {"$regex": "x"}}, 'where["a"]["$regex"]', "where_document"),
    ({"a": {"gt": 1}}, 'where["a"]["gt"]', "unknown operator"),
    ({"a": {"$eq": [1]}}, 'where["a"]["$eq"]', "got list"),
    ({"a": {"$eq": None}}, 'where["a"]["$eq"]', "got NoneType"),
    ({"a": {"$eq": {"x": 1}}}, 'where["a"]["$eq"]', "got dict"),
    ({"a": math.nan}, 'where["a"]', "finite"),
    ({"a": {"$lt": math.inf}}, 'where["a"]["$lt"]', "finite"),
    ({"a": 2**63}, 'where["a"]', "64-bit"),
    ({"a": {"$in": []}}, 'where["a"]["$in"]', "non-empty list"),
    ({"a": {"$in": "ab"}}, 'where["a"]["$in"]', "non-empty list"),
    ({"a": {"$nin": [1, [2]]}}, 'where["a"]["$nin"][1]', "got list"),
    ({"a": {"$in": [1, 2.5]}}, 'where["a"]["$in"][1]', "one kind"),
    ({"a": {"$in": [1, True]}}, 'where["a"]["$in"][1]', "one kind"),
    ({"a": {"$in": ["x", 1]}}, 'where["a"]["$in"][1]', "one kind"),
    ({"a": {"$exists": 1}}, 'where["a"]["$exists"]', "true or false"),
    ({"ü": {"$gt": "é"}}, 'where["ü"]["$gt"]', "numbers only"),
]


@pytest.mark.parametrize(("where", "path", "phrase"), BAD_WHERE,
                         ids=[repr(w)[:60] for w, _, _ in BAD_WHERE])
def test_malformed_where_names_its_path(where, path, phrase):
    with pytest.raises(InvalidInputError) as ei:
        W.parse(where)
    err = ei.value
    assert isinstance(err, MmwalError) and isinstance(err, ValueError)
    assert str(err).startswith(path + ": "), str(err)
    assert phrase in str(err)
    assert err.path == path
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.path == path


def test_deep_nesting_is_an_error_not_a_crash():
    where = {"a": 1}
    for _ in range(200):
        where = {"$and": [where, {"b": 1}]}
    with pytest.raises(InvalidInputError, match="at most 64 levels"):
        W.parse(where)


BAD_DOCUMENT = [
    ("x", "where_document", "must be a dict"),
    ({}, "where_document", "is empty"),
    ({"$contains": "a", "$regex": "b"}, "where_document", "has 2 keys"),
    ({"$foo": "x"}, 'where_document["$foo"]', "unknown document operator"),
    ({"$contains": ""}, 'where_document["$contains"]', "non-empty str"),
    ({"$contains": 1}, 'where_document["$contains"]', "non-empty str"),
    ({"$and": [{"$contains": "a"}]}, 'where_document["$and"]', "at least two"),
    ({"$or": "ab"}, 'where_document["$or"]', "a list of document filters"),
    ({"$or": [{"$contains": "a"}, {"$regex": "("}]}, 'where_document["$or"][1]["$regex"]',
     "does not compile"),
    ({"$and": [{"$contains": "a"}, {"page": 1}]}, 'where_document["$and"][1]["page"]',
     "unknown document operator"),
]


@pytest.mark.parametrize(("where_document", "path", "phrase"), BAD_DOCUMENT,
                         ids=[repr(w)[:60] for w, _, _ in BAD_DOCUMENT])
def test_malformed_where_document_names_its_path(where_document, path, phrase):
    with pytest.raises(InvalidInputError) as ei:
        W.parse_document(where_document)
    assert str(ei.value).startswith(path + ": "), str(ei.value)
    assert phrase in str(ei.value)


def test_name_sets_the_root_of_the_path():
    with pytest.raises(InvalidInputError, match=r'^filter\["a"\]\["\$gt"\]: '):
        W.parse({"a": {"$gt": "x"}}, name="filter")


def test_build_columns_rejects_non_dict_metadata():
    with pytest.raises(InvalidInputError, match=r"metadatas\[1\] must be a dict or None"):
        W.build_columns([{"a": 1}, ["a", 1]])


def test_column_builder_takes_any_iterable_the_same_way_as_a_list():
    import types

    from mmwal._search.where import ColumnBuilder

    rows = [{"a": 1, "s": "x"}, types.MappingProxyType({"a": 2}), None, {"s": "y"}]
    by_list, by_gen = ColumnBuilder(), ColumnBuilder()
    by_list.add(list(rows))
    by_gen.add(m for m in rows)  # not a list, and one row is not a plain dict
    assert by_gen.n == by_list.n == 4
    a, b = by_list.finish(), by_gen.finish()
    assert sorted(a) == sorted(b) == ["a", "s"]
    for key in a:
        for kind in a[key]:
            got, want = b[key][kind], a[key][kind]
            if kind == "other":
                assert np.array_equal(got, want)
            else:
                assert np.array_equal(got[0], want[0])
                assert list(got[1]) == list(want[1])
    with pytest.raises(InvalidInputError, match=r"metadatas\[1\]"):
        ColumnBuilder().add(m for m in [{"a": 1}, 5])
