"""Hostile Python objects for ``add``/``add_many`` (Hypothesis).

The principle under test (docs/concepts.md, "What a document may hold"):
whatever ``add``/``add_many`` accept, ``replay``, a ``Reader`` (over the log
tail and over a checkpoint) and ``verify`` give back equal, as plain types;
everything else raises a typed ``MmwalError`` that is also a ``ValueError``,
with the log unchanged (same bytes, same seq).

Generated: str subclasses (``numpy.str_``, a user subclass), lone surrogates,
empty and over-long ids; dict/list subclasses (``OrderedDict``,
``defaultdict``, ``Counter``, a list subclass), tuples, namedtuples, sets;
msgpack ``ExtType`` and ``Timestamp``; numpy scalars; ints past 64 bits;
NaN/inf; nesting around the limit; non-str keys; vectors with huge, non-finite
or wrong-shaped values; unordered and one-shot id containers.

An independent model (``expect_*`` below, written from the documentation, not
from the code) says what each input must become or that it must be refused;
the store must agree with it both ways.
"""

from __future__ import annotations

import collections
import datetime
import enum
import math
import os
import shutil
import tempfile

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import mmwal
from mmwal import _format as F
from mmwal.errors import MmwalError

DIM = 4
LIMIT = F.MAX_METADATA_DEPTH
# No "explain" phase.  MMWAL_FUZZ_SHRINK=0 also skips shrinking: run against the
# code before these checks existed, Hypothesis 6.170's shrinker raised KeyError
# (a str subclass as a choice) inside itself while minimising a real failure;
# without shrinking the first failing example is reported as it is.
_PHASES = [Phase.generate] + ([Phase.shrink] if os.environ.get("MMWAL_FUZZ_SHRINK") != "0"
                              else [])
FUZZ = settings(max_examples=int(os.environ.get("MMWAL_FUZZ_EXAMPLES", "40")), deadline=None,
                database=None, phases=_PHASES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


class StrSub(str):
    pass


class ListSub(list):
    pass


class Color(enum.IntEnum):
    RED = 3


Pair = collections.namedtuple("Pair", "a b")


class Refused(Exception):
    """The model says: this input must be refused."""


# ---------------------------------------------------------------------- the model
def expect_text(v):
    if not isinstance(v, str):
        raise Refused("not a str")
    s = str.__str__(v)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused("not UTF-8") from None
    return s


def expect_id(v):
    s = expect_text(v)
    if not s or len(s.encode("utf-8")) > F.MAX_ID_BYTES:
        raise Refused("empty or too long")
    return s


def expect_value(v, depth):
    if v is None or type(v) is bool:
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        i = int.__int__(v)
        if not -(2**63) <= i <= 2**64 - 1:
            raise Refused("int range")
        return i
    if isinstance(v, float):
        f = float.__float__(v)
        if not math.isfinite(f):
            raise Refused("non-finite")
        return f
    if isinstance(v, str):
        return expect_text(v)
    if isinstance(v, bytes):
        return bytes(v)
    if type(v) is tuple or isinstance(v, (list, dict)):
        if depth + 1 > LIMIT:
            raise Refused("too deep")
        if isinstance(v, dict):
            return expect_dict(v, depth + 1)
        return [expect_value(x, depth + 1) for x in v]
    raise Refused(type(v).__name__)


def expect_dict(d, depth):
    out = {}
    for k, x in d.items():
        if not isinstance(k, str):
            raise Refused("key type")
        out[expect_text(k)] = expect_value(x, depth)
    if len(out) != len(d):
        raise Refused("key collision")
    return out


def expect_metadata(m):
    if m is None:
        return None
    if not isinstance(m, dict):
        raise Refused("metadata not a dict")
    return expect_dict(m, 0)


def expect_vector(v, n):
    shape = (DIM,) if n is None else (n, DIM)
    try:
        arr = np.asarray(v)
    except (ValueError, TypeError):
        raise Refused("not an array") from None
    if arr.dtype.kind not in "fiub" or not np.can_cast(arr.dtype, np.float32, "same_kind"):
        raise Refused("dtype")
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = arr.astype(np.float32)
    if f32.shape != shape or not np.isfinite(f32).all():
        raise Refused("shape or non-finite")
    sq = np.einsum("...i,...i->...", f32.astype(np.float64), f32.astype(np.float64))
    if np.any(sq > F.MAX_VECTOR_NORM**2):
        raise Refused("norm")
    return f32


def expect_ids(ids):
    if isinstance(ids, (set, frozenset, dict, str, bytes)) or type(ids).__name__.startswith(
            "dict_") or not hasattr(ids, "__len__"):
        raise Refused("unordered or one-shot")
    return [expect_id(x) for x in ids]


# ---------------------------------------------------------------------- strategies
surrogates = st.sampled_from(["\ud800", "a\udcffb", "\udfff"])
plain_text = st.text(max_size=12)
texts = st.one_of(plain_text, plain_text.map(StrSub), plain_text.map(np.str_), surrogates,
                  surrogates.map(StrSub))
good_text = st.text(min_size=1, max_size=12)
good_ids = st.one_of(good_text, good_text, good_text.map(StrSub), good_text.map(np.str_))
ids = st.one_of(
    good_ids, good_ids, good_ids, good_ids, good_ids, good_ids, surrogates,
    st.just(""), st.just(StrSub("")), st.just(np.str_("")),
    st.integers(F.MAX_ID_BYTES - 2, F.MAX_ID_BYTES + 2).map(lambda n: StrSub("x" * n)),
    st.integers(F.MAX_ID_BYTES // 3 - 1, F.MAX_ID_BYTES // 3 + 1).map(lambda n: "\u20ac" * n),
    st.integers(), st.binary(max_size=4), st.none(),
)


def deep(levels, kind):
    v = 1
    for _ in range(levels):
        v = kind({"k": v}) if issubclass(kind, dict) else kind([v])
    return v


deep_values = st.builds(deep, st.integers(LIMIT - 2, LIMIT + 2),
                        st.sampled_from([dict, list, tuple, ListSub, collections.OrderedDict]))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(),
    texts, st.binary(max_size=6),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=3)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32), st.integers(0, 999_999_999)),
    st.floats().map(np.float64), st.floats(width=32).map(np.float32),
    st.integers(-5, 5).map(np.int64), st.booleans().map(np.bool_), st.just(Color.RED),
    st.just(datetime.date(2020, 1, 2)), st.builds(bytearray, st.binary(max_size=3)),
    st.sets(st.integers(0, 3), max_size=2), st.frozensets(st.integers(0, 3), max_size=2),
    deep_values,
)
keys = st.one_of(plain_text, plain_text.map(StrSub), surrogates, st.integers(0, 3),
                 st.binary(max_size=2), st.tuples(st.integers(0, 2)))
str_keys = st.one_of(plain_text, plain_text.map(StrSub))


def containers(kids):
    return st.one_of(
        st.lists(kids, max_size=3), st.lists(kids, max_size=3).map(tuple),
        st.lists(kids, max_size=3).map(ListSub),
        st.builds(Pair, kids, kids),
        st.dictionaries(str_keys, kids, max_size=3),
        st.dictionaries(keys, kids, max_size=2),
        st.dictionaries(str_keys, kids, max_size=3).map(collections.OrderedDict),
        st.dictionaries(str_keys, kids, max_size=3).map(
            lambda d: collections.defaultdict(list, d)),
        st.dictionaries(str_keys, st.integers(0, 3), max_size=2).map(collections.Counter),
    )


good_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), plain_text, plain_text.map(StrSub),
    st.binary(max_size=6), st.floats(allow_nan=False, allow_infinity=False).map(np.float64),
    st.just(Color.RED),
)
values = st.recursive(leaves, containers, max_leaves=8)
good_values = st.recursive(good_leaves, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.lists(kids, max_size=3).map(tuple),
    st.lists(kids, max_size=3).map(ListSub), st.dictionaries(str_keys, kids, max_size=3),
    st.dictionaries(str_keys, kids, max_size=3).map(collections.OrderedDict)), max_leaves=8)
good_metadatas = st.one_of(st.none(), st.dictionaries(str_keys, good_values, max_size=4))
metadatas = st.one_of(
    good_metadatas, good_metadatas, good_metadatas, good_metadatas,
    st.none(), st.dictionaries(str_keys, values, max_size=4),
    st.dictionaries(str_keys, values, max_size=3).map(collections.OrderedDict),
    st.dictionaries(keys, values, max_size=2), values,
)
finite = st.sampled_from([0.0, 1.0, -2.5, 3e-39, 1e18, 4e18, 1e19, 1e20, 3.4e38, 1e39])
scalars = st.one_of(finite, st.floats(), st.integers(-(2**40), 2**40))
good_vectors = st.lists(st.floats(-1e6, 1e6), min_size=DIM, max_size=DIM)
vectors = st.one_of(
    good_vectors, good_vectors, good_vectors, good_vectors.map(np.array),
    st.lists(finite.filter(lambda x: x < 3.4e38), min_size=DIM, max_size=DIM).map(
        lambda x: np.array(x, dtype=np.float32)),
    st.lists(finite, min_size=DIM, max_size=DIM).map(np.array),
    st.lists(scalars, min_size=DIM, max_size=DIM),
    st.lists(scalars, min_size=DIM - 1, max_size=DIM + 1),
    st.lists(st.integers(-9, 9), min_size=DIM, max_size=DIM).map(np.array),
    st.just(["a"] * DIM), st.none(),
)
contents = st.one_of(plain_text, plain_text, st.none(), st.none(), texts, st.integers(),
                     st.binary(max_size=3))


def id_containers(items):
    return st.one_of(
        st.just(list(items)), st.just(list(items)), st.just(list(items)),
        st.just(tuple(items)), st.just(np.array(items, dtype=object)),
        st.just(set(items)), st.just(frozenset(items)),
        st.just(dict.fromkeys(items).keys()), st.just(iter(items)),
        st.just(x for x in items),
    )


# ---------------------------------------------------------------------- the check
@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="mmwal-fuzz-input-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def log_bytes(path):
    wal = os.path.join(path, "wal")
    return {n: os.path.getsize(os.path.join(wal, n)) for n in sorted(os.listdir(wal))}


def exact_types(x):
    if type(x) is dict:
        return all(type(k) is str and exact_types(v) for k, v in x.items())
    if type(x) is list:
        return all(exact_types(v) for v in x)
    return type(x) in (str, int, float, bool, bytes, type(None))


def check_call(workdir, call, want):
    """Run ``call(store)``; the outcome must match the model's ``want()``."""
    path = tempfile.mkdtemp(dir=workdir)
    try:
        with mmwal.Store(path, dim=DIM, durability="os") as s:
            s.add("seed", np.ones(DIM), content="c", metadata={"k": [1]})
            before, seq = log_bytes(path), s.seq
            try:
                expected = want()
            except Refused as why:
                expected = why
            try:
                got = call(s)
            except MmwalError as exc:
                assert isinstance(exc, (ValueError, TypeError)), repr(exc)
                assert log_bytes(path) == before and s.seq == seq, "a refused call wrote"
                assert isinstance(expected, Refused), f"refused {exc!r}, the model accepts"
                event(f"refused: {expected}")
                return
            assert not isinstance(expected, Refused), f"accepted, the model refuses: {expected}"
            seqs = range(got, got + 1) if isinstance(got, int) else got
            event("accepted")
        assert len(seqs) == len(expected)
        ops = {op.seq: op for op in mmwal.replay(path)}
        for sq, (key, vec, content, meta) in zip(seqs, expected):
            op = ops[sq]
            assert (op.id, op.content, op.metadata) == (key, content, meta)
            assert type(op.id) is str and type(op.content) is str and exact_types(op.metadata)
            assert op.embedding.tobytes() == vec.tobytes()
        last = {}
        for key, vec, content, meta in expected:
            last[key] = (vec, content, meta)
        for stage in ("tail", "checkpoint"):
            with mmwal.Reader(path) as r:
                for key, (vec, content, meta) in last.items():
                    doc = r[key]
                    assert (doc.id, doc.content, doc.metadata) == (key, content, meta), stage
                    assert exact_types(doc.metadata) and type(doc.content) is str
                    assert np.asarray(doc.embedding).tobytes() == vec.tobytes()
                hits = r.search(np.ones(DIM), k=len(r), metric="l2")
                assert all(math.isfinite(h.score) for h in hits)
            report = mmwal.verify(path)
            assert report.ok, report.problems
            if stage == "tail":
                with mmwal.Store(path) as s:
                    s.checkpoint()
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Each example is valid but for at most one field (which one is drawn): a store
# sees mostly almost-right input, the kind that slips through checks.
FIELDS = ("none", "id", "vector", "content", "metadata", "metadata", "metadata")


@FUZZ
@given(data=st.data())
def test_add_hostile_objects(workdir, data):
    bad = data.draw(st.sampled_from(FIELDS))
    key = data.draw(ids if bad == "id" else good_ids)
    vec = data.draw(vectors if bad == "vector" else good_vectors)
    content = data.draw(contents if bad == "content" else st.one_of(st.none(), plain_text))
    meta = data.draw(metadatas if bad == "metadata" else good_metadatas)
    kwargs = {}
    if content is not None:
        kwargs["content"] = content
    if meta is not None:
        kwargs["metadata"] = meta

    def want():
        return [(expect_id(key), expect_vector(vec, None),
                 "" if content is None else expect_text(content), expect_metadata(meta))]

    check_call(workdir, lambda s: s.add(key, vec, **kwargs), want)


@FUZZ
@given(data=st.data(), n=st.integers(1, 3))
def test_add_many_hostile_objects(workdir, data, n):
    bad = data.draw(st.sampled_from(FIELDS + ("ids",)))
    keys = data.draw(st.lists(ids if bad == "id" else good_ids, min_size=n, max_size=n,
                              unique_by=lambda k: (type(k).__name__, repr(k))))
    hashable = all(isinstance(k, (str, int, bytes)) or k is None for k in keys)
    id_arg = data.draw(id_containers(keys)) if bad == "ids" and hashable else list(keys)
    good_vecs = st.lists(good_vectors, min_size=n, max_size=n)
    vecs = data.draw(st.one_of(
        good_vecs, good_vecs.map(np.array),
        st.lists(st.lists(finite, min_size=DIM, max_size=DIM), min_size=n, max_size=n),
        st.lists(st.lists(scalars, min_size=DIM, max_size=DIM), min_size=n, max_size=n + 1))
        if bad == "vector" else good_vecs)
    cts = data.draw(st.one_of(st.lists(contents, min_size=n, max_size=n),
                              st.lists(plain_text, min_size=n, max_size=n).map(set))
                    if bad == "content" else
                    st.one_of(st.none(), st.lists(plain_text, min_size=n, max_size=n)))
    mts = data.draw(st.lists(metadatas if bad == "metadata" else good_metadatas, min_size=n,
                             max_size=n) | st.none())

    def want():
        ks = expect_ids(id_arg)
        vs = expect_vector(vecs, len(ks))
        if cts is not None and (isinstance(cts, set) or len(cts) != len(ks)):
            raise Refused("contents")
        cs = [""] * len(ks) if cts is None else [expect_text(c) for c in cts]
        ms = [None] * len(ks) if mts is None else [expect_metadata(m) for m in mts]
        return list(zip(ks, vs, cs, ms))

    try:
        ks = expect_ids(list(keys))
        if len(set(ks)) != len(ks):
            return  # repeated ids keep the last occurrence: covered by test_model
    except Refused:
        pass
    check_call(workdir, lambda s: s.add_many(id_arg, vecs, contents=cts, metadatas=mts), want)
