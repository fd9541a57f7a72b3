"""Metadata filters: Chroma-style ``where`` documents, parsed once, evaluated two ways.

A filter is parsed and checked by :func:`parse` into a small immutable
expression tree (:data:`Expr`).  The tree is evaluated either one document at a
time by :func:`matches` (the log tail, whose metadata is decoded anyway, and
the oracle of the tests), or for a whole fragment at once by
:func:`compile_columns`, a vectorised numpy evaluation over the column arrays
described below that never decodes a document.  Both give the same answer for
every filter and every metadata (a property test holds them to it).

``where_document`` filters over the content text are parsed by
:func:`parse_document` and evaluated by :func:`matches_document`.

Grammar of ``where``
--------------------
The grammar and its checks are Chroma's (chromadb 1.5.9, ``validate_where``
plus the checks its Rust core adds), so that a filter written for Chroma means
the same here and a filter mmwal accepts, Chroma accepts too -- with one
extension, ``$exists``::

    filter     := {KEY: SCALAR}                    # shorthand for {KEY: {"$eq": SCALAR}}
                | {KEY: {OP: SCALAR}}              # OP in $eq $ne
                | {KEY: {ORD: NUMBER}}             # ORD in $gt $gte $lt $lte
                | {KEY: {SET: [SCALAR, ...]}}      # SET in $in $nin; >= 1 item, one kind
                | {KEY: {"$exists": BOOL}}         # mmwal extension (not in Chroma)
                | {"$and": [filter, filter, ...]}  # >= 2 filters
                | {"$or":  [filter, filter, ...]}  # >= 2 filters
    KEY        := a str naming a top-level metadata key, not starting with "$"
    SCALAR     := str | int | float | bool
    NUMBER     := int | float                      # bool is not a number here

Rules, each a typed :class:`~mmwal.errors.InvalidInputError` (also a
``ValueError``) whose message names the offending part by its path, e.g.
``where["$and"][1]["page"]["$gt"]``, and whose ``path`` attribute holds it:

* A filter (and every operator dict) has **exactly one** key.  Two conditions
  are combined with ``$and``; ``{"a": 1, "b": 2}`` is rejected, as in Chroma.
  An empty dict is rejected.
* ``$and`` / ``$or`` take a list of at least two filters (Chroma's rule).
* A key starting with ``$`` that is not ``$and`` / ``$or`` is rejected at the
  top of a filter; so is any operator not listed above inside an operator dict
  (``$contains`` / ``$not_contains``, Chroma's operators on list-valued
  metadata, are not supported; ``$regex`` belongs to ``where_document``).
* Values are str, int, float or bool; ``None``, lists (except the operand of
  ``$in`` / ``$nin``), dicts, bytes are rejected.  Floats must be finite and
  ints must fit in a signed 64-bit integer (Chroma's limits).
* ``$gt $gte $lt $lte`` take an int or float only: a bool or a str is rejected
  (Chroma does not order strings).
* ``$in`` / ``$nin`` take a non-empty list whose items are all of one kind:
  all str, all bool, all int or all float (Chroma's rule; ``[1, 2.5]`` is
  rejected -- write ``[1.0, 2.5]``).
* ``$exists`` takes a bool.
* Nesting deeper than 64 levels is rejected.

Semantics
---------
The value of a key in a document's metadata has one of five *kinds*: ``str``,
``int`` (an int in the signed 64-bit range, not a bool), ``float``, ``bool``,
or ``other`` (anything else: ``None``, a list, a dict, bytes, an int outside
the 64-bit range).  A key may hold different kinds in different documents.

* ``$eq`` with a str matches a str value equal to it.  With a bool it matches
  only a bool value: ``True`` does not equal ``1`` (as in Chroma, which keeps
  bools and numbers apart).  With a number it matches an int or float value
  that is numerically equal: ``1`` matches ``1`` and ``1.0``.
* ``$gt $gte $lt $lte`` match int and float values only, compared
  numerically; str, bool and ``other`` values never match.
* ``$in`` matches when ``$eq`` matches one of the items.
* ``$ne`` is exactly ``not $eq`` and ``$nin`` exactly ``not $in``: they match
  documents that lack the key, documents without metadata, and values of
  another kind or of kind ``other`` (Chroma 1.5.9 does the same: ``{"a":
  {"$ne": 1}}`` returns documents without ``a``).
* Comparisons between ints and floats are exact (Python's): ``2**53 + 1`` does
  not equal ``2.0**53``, and ``2.5`` neither equals nor is ``<=`` the int
  ``2``.  A NaN value never equals or orders with anything (so ``$ne``
  matches it).  Chroma 1.5.9 converts first, which makes two differences:
  it rounds an int operand to a float to compare it with float values
  (visible only beyond ``2**53``), and it truncates a float operand to an int
  to compare it with int values, so there ``{"n": 2.5}`` matches ``n == 2``
  and ``{"n": {"$lt": 2.5}}`` does not (chroma-core/chroma issue 7491; the
  fixes proposed for it adopt the exact rule used here).
* ``{"k": {"$exists": True}}`` matches when ``k`` is a key of the metadata,
  whatever its value -- including ``None`` and ``other`` values;
  ``{"$exists": False}`` matches the rest (no such key, or no metadata).
* Only top-level keys are addressed: ``"a.b"`` is the key ``"a.b"``, not a
  path into a nested dict.  A document whose metadata is ``None`` has no keys.

Not supported, though Chroma 1.5.9 accepts them: ``$contains`` /
``$not_contains`` on list-valued metadata (Chroma matches list items by exact
type there, unlike ``$eq``: ``{"$contains": 1}`` misses ``[1.0]``), and the
``"#document"`` key inside ``where`` (use ``where_document``).  Both are
rejected with a message saying so, never silently evaluated.

``where_document``
------------------
::

    doc_filter := {"$contains": TEXT} | {"$not_contains": TEXT}
                | {"$regex": PATTERN} | {"$not_regex": PATTERN}
                | {"$and": [doc_filter, doc_filter, ...]}     # >= 2
                | {"$or":  [doc_filter, doc_filter, ...]}     # >= 2

``TEXT`` and ``PATTERN`` are non-empty str.  ``$contains`` is a
case-sensitive substring test; ``$regex`` searches (unanchored) with Python's
``re``, whose dialect differs from Chroma's Rust ``regex`` crate in corners
(Python has backreferences and look-around, Rust does not; Python's
backtracking engine can take exponential time on a pathological pattern
where Rust's is linear, so a service exposing ``$regex`` to untrusted callers
should bound the pattern).  ``$not_*`` are
the negations.  A document without content counts as the empty string, as in
Chroma (``$not_contains`` matches it).  An invalid pattern is an
:class:`~mmwal.errors.InvalidInputError` at parse time.

Columns (the interface a fragment writer produces)
--------------------------------------------------
:func:`compile_columns` evaluates a filter over ``n`` rows stored as
:data:`Columns`: a mapping from metadata key to :data:`KeyColumns`, a dict
holding one entry per kind that occurs for that key in the fragment (a kind
that never occurs is simply absent, and a key absent from every row has no
entry at all).  Every array has length ``n``:

``"int"``: ``(values, present)``
    ``values`` int64, ``present`` bool; ``values[i]`` is meaningful where
    ``present[i]`` (the writer stores 0 elsewhere).
``"float"``: ``(values, present)``
    float64 and bool, likewise (NaN and infinities are stored as they are).
``"bool"``: ``(values, present)``
    bool and bool, likewise.
``"str"``: ``(codes, dictionary)``
    ``codes`` int32, ``-1`` where the row has no str value for the key;
    ``dictionary`` a sequence of the distinct strings, **sorted ascending and
    unique**, with ``codes[i]`` indexing it.  Sorted code-point order equals
    UTF-8 byte order, so a fragment may keep the dictionary as a UTF-8 blob
    plus an offsets array behind any object with ``__len__`` and
    ``__getitem__``: a lookup is a binary search (``O(log d)`` item reads).
``"other"``: ``present``
    bool, where the row has the key with a value of kind ``other``.

A row lacking the key (or whose metadata is ``None``) is absent from every
kind.  At most one kind is present per row and key.  The arrays may be
read-only memory maps; nothing is written into them.  :func:`build_columns`
(or a :class:`ColumnBuilder` fed chunk by chunk) produces exactly this layout
from Python metadata dicts.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import operator
import re
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from ..errors import InvalidInputError

__all__ = [
    "And",
    "Cmp",
    "ColumnBuilder",
    "Columns",
    "Contains",
    "DocAnd",
    "DocExpr",
    "DocOr",
    "Exists",
    "Expr",
    "In",
    "KeyColumns",
    "Or",
    "Regex",
    "build_columns",
    "compile_columns",
    "keys_of",
    "matches",
    "matches_document",
    "parse",
    "parse_document",
]

Scalar = str | int | float | bool

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_DEPTH = 64

_ORDER_OPS = ("$gt", "$gte", "$lt", "$lte")
_EQ_OPS = ("$eq", "$ne")
_SET_OPS = ("$in", "$nin")
_OPERATORS = (*_EQ_OPS, *_ORDER_OPS, *_SET_OPS, "$exists")
_DOC_TEXT_OPS = ("$contains", "$not_contains", "$regex", "$not_regex")

_PY_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
    "eq": operator.eq,
}


# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Cmp:
    """``key`` compared with ``value`` by ``op`` (``eq ne gt gte lt lte``)."""

    key: str
    op: str
    value: Scalar


@dataclass(frozen=True)
class In:
    """``key`` equal to one of ``values`` (``$in``), or to none of them (``negate``: ``$nin``)."""

    key: str
    values: tuple[Scalar, ...]
    negate: bool = False


@dataclass(frozen=True)
class Exists:
    """``key`` is (``present=True``) or is not a key of the metadata."""

    key: str
    present: bool


@dataclass(frozen=True)
class And:
    """Every child matches."""

    children: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    """At least one child matches."""

    children: tuple[Expr, ...]


Expr = Cmp | In | Exists | And | Or


@dataclass(frozen=True)
class Contains:
    """The content holds ``text`` (or, with ``negate``, does not)."""

    text: str
    negate: bool = False


@dataclass(frozen=True)
class Regex:
    """``pattern`` is found in the content (or, with ``negate``, is not)."""

    pattern: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)
    negate: bool = False


@dataclass(frozen=True)
class DocAnd:
    """Every child matches the content."""

    children: tuple[DocExpr, ...]


@dataclass(frozen=True)
class DocOr:
    """At least one child matches the content."""

    children: tuple[DocExpr, ...]


DocExpr = Contains | Regex | DocAnd | DocOr


# --------------------------------------------------------------------------- parsing


def _render(path: Sequence[object]) -> str:
    root, *rest = path
    parts = [str(root)]
    for p in rest:
        parts.append(f"[{json.dumps(p, ensure_ascii=False)}]" if isinstance(p, str)
                     else f"[{p!r}]")
    return "".join(parts)


def _show(v: object) -> str:
    text = json.dumps(v, ensure_ascii=False) if isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: Sequence[object], what: str, got: object = None) -> InvalidInputError:
    where = _render(path)
    return InvalidInputError(f"{where}: {what}", path=where, got=type(got).__name__)


def _kind_of(v: object) -> str:
    """The kind of a metadata value: ``str int float bool`` or ``other``."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if INT64_MIN <= v <= INT64_MAX else "other"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    return "other"


def _scalar(v: object, path: Sequence[object], op: str) -> Scalar:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise _fail(path, f"{op} takes ints in the signed 64-bit range, got {_show(v)}", v)
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _fail(path, f"{op} takes finite numbers, got {_show(v)}", v)
        return float(v)
    if isinstance(v, str):
        return str(v)
    raise _fail(path, f"{op} takes a str, int, float or bool, got {type(v).__name__} "
                      f"{_show(v)}", v)


def _one_item(d: dict[Any, Any], path: Sequence[object], what: str, example: str) -> Any:
    if len(d) == 1:
        return next(iter(d.items()))
    if not d:
        raise _fail(path, f"{what} is empty; it must hold exactly one {example}", d)
    keys = ", ".join(_show(k) for k in list(d)[:4])
    raise _fail(path, f"{what} has {len(d)} keys ({keys}); it must hold exactly one "
                      f"{example}", d)


def parse(where: Any, name: str = "where") -> Expr:
    """Check a Chroma-style ``where`` filter and return its expression tree.

    Parameters
    ----------
    where : dict
        The filter document (grammar in the module docstring).
    name : str
        How messages name the argument (the root of every error path).

    Returns
    -------
    Expr
        An immutable tree to pass to :func:`matches` or :func:`compile_columns`.

    Raises
    ------
    mmwal.errors.InvalidInputError
        If the filter is malformed; ``path`` names the offending part.

    Examples
    --------
    >>> parse({"page": {"$gte": 3}})
    Cmp(key='page', op='gte', value=3)
    >>> parse({"$or": [{"source": "a.pdf"}, {"page": {"$in": [1, 2]}}]})  # doctest: +ELLIPSIS
    Or(children=(Cmp(key='source', op='eq', value='a.pdf'), In(key='page', values=(1, 2), ...
    """
    return _parse(where, [name], 0)


def _parse(node: Any, path: list[object], depth: int) -> Expr:
    if depth > MAX_DEPTH:
        raise _fail(path, f"filters may nest at most {MAX_DEPTH} levels deep")
    if not isinstance(node, dict):
        raise _fail(path, "a filter must be a dict such as {\"source\": \"a.pdf\"} or "
                          f"{{\"$and\": [...]}}, got {type(node).__name__} {_show(node)}", node)
    key, value = _one_item(node, path, "a filter", 'condition; combine several with '
                                                   '{"$and": [{...}, {...}]}')
    here = [*path, key]
    if not isinstance(key, str):
        raise _fail(here, f"metadata keys are str, got {type(key).__name__} {_show(key)}", key)
    if key in ("$and", "$or"):
        if not isinstance(value, list):
            raise _fail(here, f"{key} takes a list of filters, got {type(value).__name__} "
                              f"{_show(value)}", value)
        if len(value) < 2:
            raise _fail(here, f"{key} takes a list of at least two filters, got "
                              f"{len(value)}; use the filter itself instead", value)
        children = tuple(_parse(c, [*here, i], depth + 1) for i, c in enumerate(value))
        return And(children) if key == "$and" else Or(children)
    if key.startswith("$"):
        raise _fail(here, f"unknown operator {_show(key)} at the top of a filter; only "
                          "$and and $or combine filters, and metadata keys starting with "
                          "'$' cannot be filtered on", key)
    if isinstance(value, dict):
        return _parse_op(key, value, here)
    if isinstance(value, (str, int, float)):  # bool is an int
        return Cmp(key, "eq", _scalar(value, here, "$eq"))
    raise _fail(here, "expected a str, int, float or bool to compare with, or an operator "
                      f"dict such as {{\"$gt\": 3}}, got {type(value).__name__} "
                      f"{_show(value)}", value)


def _parse_op(key: str, value: dict[Any, Any], path: list[object]) -> Expr:
    op, operand = _one_item(value, path, "an operator dict", "operator, e.g. {\"$gt\": 3}")
    here = [*path, op]
    if op not in _OPERATORS:
        hint = ""
        if op in ("$contains", "$not_contains"):
            hint = (" (Chroma's operators on list-valued metadata are not supported; to test "
                    "the content use where_document)")
        elif op in _DOC_TEXT_OPS:
            hint = " (text operators belong in where_document)"
        raise _fail(here, f"unknown operator {_show(op)}{hint}; expected one of "
                          f"{', '.join(_OPERATORS)}", op)
    if op in _EQ_OPS:
        return Cmp(key, op[1:], _scalar(operand, here, op))
    if op in _ORDER_OPS:
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            raise _fail(here, f"{op} compares numbers only: expected an int or float, got "
                              f"{type(operand).__name__} {_show(operand)}", operand)
        return Cmp(key, op[1:], _scalar(operand, here, op))
    if op in _SET_OPS:
        if not isinstance(operand, list) or not operand:
            raise _fail(here, f"{op} takes a non-empty list of str, int, float or bool, got "
                              f"{type(operand).__name__} {_show(operand)}", operand)
        items = tuple(_scalar(v, [*here, i], op) for i, v in enumerate(operand))
        kinds = [_kind_of(v) for v in items]
        for i, k in enumerate(kinds):
            if k != kinds[0]:
                raise _fail([*here, i], f"{op} takes items of one kind (all str, all bool, "
                                        f"all int or all float); item 0 is {kinds[0]}, this "
                                        f"one is {k} {_show(items[i])}", items[i])
        return In(key, items, negate=op == "$nin")
    # $exists
    if not isinstance(operand, bool):
        raise _fail(here, f"$exists takes true or false, got {type(operand).__name__} "
                          f"{_show(operand)}", operand)
    return Exists(key, operand)


def parse_document(where_document: Any, name: str = "where_document") -> DocExpr:
    """Check a Chroma-style ``where_document`` filter and return its expression tree.

    Parameters
    ----------
    where_document : dict
        ``{"$contains": text}``, ``{"$not_contains": text}``, ``{"$regex": pattern}``,
        ``{"$not_regex": pattern}``, or ``$and`` / ``$or`` lists of at least two of them.
    name : str
        How messages name the argument.

    Raises
    ------
    mmwal.errors.InvalidInputError
        If it is malformed or a pattern does not compile; ``path`` names the part.

    Examples
    --------
    >>> expr = parse_document({"$and": [{"$contains": "mmap"}, {"$not_regex": "^draft"}]})
    >>> matches_document(expr, "mmap'd checkpoints"), matches_document(expr, "draft: mmap")
    (True, False)
    """
    return _parse_doc(where_document, [name], 0)


def _parse_doc(node: Any, path: list[object], depth: int) -> DocExpr:
    if depth > MAX_DEPTH:
        raise _fail(path, f"filters may nest at most {MAX_DEPTH} levels deep")
    if not isinstance(node, dict):
        raise _fail(path, "a document filter must be a dict such as {\"$contains\": "
                          f"\"text\"}}, got {type(node).__name__} {_show(node)}", node)
    op, operand = _one_item(node, path, "a document filter", 'operator; combine several '
                                                             'with {"$and": [{...}, {...}]}')
    here = [*path, op]
    if op in ("$and", "$or"):
        if not isinstance(operand, list):
            raise _fail(here, f"{op} takes a list of document filters, got "
                              f"{type(operand).__name__} {_show(operand)}", operand)
        if len(operand) < 2:
            raise _fail(here, f"{op} takes a list of at least two document filters, got "
                              f"{len(operand)}; use the filter itself instead", operand)
        children = tuple(_parse_doc(c, [*here, i], depth + 1) for i, c in enumerate(operand))
        return DocAnd(children) if op == "$and" else DocOr(children)
    if op not in _DOC_TEXT_OPS:
        raise _fail(here, f"unknown document operator {_show(op)}; expected one of "
                          f"{', '.join(_DOC_TEXT_OPS)}, $and, $or", op)
    if not isinstance(operand, str) or not operand:
        raise _fail(here, f"{op} takes a non-empty str, got {type(operand).__name__} "
                          f"{_show(operand)}", operand)
    negate = op.startswith("$not_")
    if op.endswith("contains"):
        return Contains(str(operand), negate)
    try:
        compiled = re.compile(operand)
    except (re.error, RecursionError, OverflowError) as e:
        raise _fail(here, f"{op} pattern {_show(operand)} does not compile: {e}",
                    operand) from None
    return Regex(str(operand), compiled, negate)


def keys_of(expr: Expr) -> frozenset[str]:
    """The metadata keys a filter reads (the columns a fragment must open)."""
    if isinstance(expr, (And, Or)):
        return frozenset().union(*(keys_of(c) for c in expr.children))
    return frozenset((expr.key,))


# --------------------------------------------------------------------------- one document


def _eq(v: object, q: Scalar) -> bool:
    kv = _kind_of(v)
    if isinstance(q, bool):
        return kv == "bool" and v is q
    if isinstance(q, str):
        return kv == "str" and v == q
    return kv in ("int", "float") and v == q


def matches(expr: Expr, metadata: Mapping[str, Any] | None) -> bool:
    """Whether one document's metadata satisfies a parsed filter.

    Parameters
    ----------
    expr : Expr
        A tree from :func:`parse`.
    metadata : dict or None
        The document's metadata; ``None`` has no keys.

    Examples
    --------
    >>> where = parse({"page": {"$ne": 1}})
    >>> matches(where, {"page": 2}), matches(where, {"page": 1.0}), matches(where, None)
    (True, False, True)
    >>> matches(parse({"flag": 1}), {"flag": True})   # bool is not a number
    False
    """
    if isinstance(expr, And):
        return all(matches(c, metadata) for c in expr.children)
    if isinstance(expr, Or):
        return any(matches(c, metadata) for c in expr.children)
    present = metadata is not None and expr.key in metadata
    if isinstance(expr, Exists):
        return present is expr.present
    v = metadata[expr.key] if present else None  # type: ignore[index]
    if isinstance(expr, In):
        hit = present and any(_eq(v, q) for q in expr.values)
        return hit is not expr.negate
    if expr.op == "eq":
        return present and _eq(v, expr.value)
    if expr.op == "ne":
        return not (present and _eq(v, expr.value))
    return present and _kind_of(v) in ("int", "float") and _PY_CMP[expr.op](v, expr.value)


def matches_document(expr: DocExpr, content: str | None) -> bool:
    """Whether a document's content satisfies a parsed ``where_document`` filter.

    ``None`` content counts as the empty string.
    """
    text = content or ""
    if isinstance(expr, DocAnd):
        return all(matches_document(c, text) for c in expr.children)
    if isinstance(expr, DocOr):
        return any(matches_document(c, text) for c in expr.children)
    if isinstance(expr, Contains):
        hit = expr.text in text
    else:
        hit = expr.compiled.search(text) is not None
    return hit is not expr.negate


# --------------------------------------------------------------------------- columns

class KeyColumns(TypedDict, total=False):
    """The columns of one metadata key in a fragment (layout in the module docstring)."""

    int: tuple[np.ndarray, np.ndarray]
    float: tuple[np.ndarray, np.ndarray]
    bool: tuple[np.ndarray, np.ndarray]
    str: tuple[np.ndarray, Sequence[str]]
    other: np.ndarray

Columns = Mapping[str, KeyColumns]
"""Metadata key -> its :data:`KeyColumns`; keys absent from every row have no entry."""


class _KeyBuilder:
    """Per key and kind: the rows that hold it and their values, appended compactly."""

    __slots__ = ("bool_rows", "bool_vals", "float_rows", "float_vals", "int_rows", "int_vals",
                 "other_rows", "str_codes", "str_ids", "str_rows")

    def __init__(self) -> None:
        self.int_rows = array("q")
        self.int_vals = array("q")
        self.float_rows = array("q")
        self.float_vals = array("d")
        self.bool_rows = array("q")
        self.bool_vals = array("b")
        self.str_rows = array("q")
        self.str_codes = array("i")  # provisional codes (str_ids), ranked by finish()
        self.str_ids: dict[str, int] = {}
        self.other_rows = array("q")


class _Absent:
    """The value of a key a row does not hold (distinct from every stored value)."""


_ABSENT = _Absent()
_NO_KEYS: dict[str, Any] = {}
_DICT_OR_NONE = frozenset((dict, type(None)))
_STR_ONLY = frozenset((str,))
_CONTAINERS = frozenset((list, dict))
#: Exact types whose values are of kind "other" (no column, only the mask).
_OTHER_TYPES = frozenset((list, dict, type(None), bytes))


def _append_kind(kb: _KeyBuilder, t: type, rows: np.ndarray, vals: list[Any]) -> bool:
    """Append ``vals`` (all of exact type ``t``) at ``rows``; False if ``t`` needs the slow way."""
    r = rows.astype(np.int64, copy=False).tobytes()
    if t is str:
        ids = kb.str_ids
        new = set(vals).difference(ids)  # each string not seen before, once
        if new:  # (provisional codes: finish() ranks the strings)
            ids.update(zip(new, itertools.count(len(ids))))
        kb.str_rows.frombytes(r)
        kb.str_codes.extend(array("i", map(ids.__getitem__, vals)))
        return True
    if t is int:
        try:
            got = array("q", vals)  # OverflowError beyond int64: those are "other"
        except OverflowError:
            return False
        kb.int_rows.frombytes(r)
        kb.int_vals.extend(got)
        return True
    if t is float:
        kb.float_rows.frombytes(r)
        kb.float_vals.extend(array("d", vals))
        return True
    if t is bool:
        kb.bool_rows.frombytes(r)
        kb.bool_vals.extend(array("b", vals))
        return True
    if t in _OTHER_TYPES:
        kb.other_rows.frombytes(r)
        return True
    return False


def _append_one(kb: _KeyBuilder, row: int, v: Any) -> None:
    """Append one value of a key at ``row``, by its kind (:func:`_kind_of`)."""
    kind = _kind_of(v)
    if kind == "str":
        code = kb.str_ids.setdefault(v, len(kb.str_ids))
        kb.str_rows.append(row)
        kb.str_codes.append(code)
    elif kind == "int":
        kb.int_rows.append(row)
        kb.int_vals.append(v)
    elif kind == "float":
        kb.float_rows.append(row)
        kb.float_vals.append(v)
    elif kind == "bool":
        kb.bool_rows.append(row)
        kb.bool_vals.append(v)
    else:
        kb.other_rows.append(row)


def _values_of(key: str, rows_of: list[dict[str, Any]]) -> tuple[list[Any], bool]:
    """The values of ``key`` in every row (:data:`_ABSENT` where a row lacks it), and
    whether some row lacks it."""
    try:  # every row holds the key (the common case): no marker to look for
        return list(map(operator.itemgetter(key), rows_of)), False
    except KeyError:
        return list(map(operator.methodcaller("get", key, _ABSENT), rows_of)), True


def _same_keys(rows_of: list[dict[str, Any]]) -> list[tuple[Any, list[Any], bool]] | None:
    """``(key, values, False)`` per key when every row holds the keys of the first row
    and no other (the common case: rows of one shape), in that order; else None.

    Every row holding the first row's ``k`` keys and ``k`` keys in all has
    exactly those keys, so they are the keys in first-seen order.
    """
    first = rows_of[0] if rows_of else _NO_KEYS
    k = len(first)
    if not k:
        return None
    try:
        out = [(key, list(map(operator.itemgetter(key), rows_of)), False) for key in first]
    except KeyError:
        return None
    if sum(map(len, rows_of)) != k * len(rows_of):
        return None
    return out


class ColumnBuilder:
    """Builds :data:`Columns` from metadata dicts fed in chunks.

    Only the rows that hold a key are remembered while feeding (about 16 bytes
    per present value, plus each distinct string once), so a checkpoint can
    stream its documents through :meth:`add` and call :meth:`finish` once; the
    dense arrays are allocated only there.

    Examples
    --------
    >>> b = ColumnBuilder()
    >>> b.add([{"page": 3}, None])  # True: every metadata seen was flat
    True
    >>> b.add([{"page": "iv", "draft": True}])
    True
    >>> cols = b.finish()
    >>> sorted(cols), sorted(cols["page"]), b.n
    (['draft', 'page'], ['int', 'str'], 3)
    """

    def __init__(self) -> None:
        self.n = 0
        self._keys: dict[str, _KeyBuilder] = {}

    def add(self, metadatas: Iterable[Mapping[str, Any] | None]) -> bool:
        """Append rows (one metadata dict, or ``None``, per row).

        Returns True when it found on its way that every metadata is nil or a
        dict of str keys whose values are no arrays or maps (flat: what
        ``mmwal._format.metas_problem`` accepts without looking deeper), False
        when it did not find that out.
        """
        metas = metadatas if type(metadatas) is list else list(metadatas)
        if _DICT_OR_NONE.issuperset(map(type, metas)):
            return self.add_plain(metas)  # type: ignore[arg-type]
        keys = self._keys
        row = self.n
        for m in metas:
            if m is not None:
                if not isinstance(m, Mapping):
                    raise InvalidInputError(
                        f"metadatas[{row - self.n}] must be a dict or None, got "
                        f"{type(m).__name__}", got=type(m).__name__)
                for k, v in m.items():
                    kb = keys.get(k)
                    if kb is None:
                        kb = keys[k] = _KeyBuilder()
                    t = type(v)  # exact types first: stored metadata is plain msgpack
                    if t is str:
                        code = kb.str_ids.get(v)  # type: ignore[arg-type]
                        if code is None:
                            code = kb.str_ids[v] = len(kb.str_ids)  # type: ignore[index]
                        kb.str_rows.append(row)
                        kb.str_codes.append(code)
                        continue
                    if t is int and INT64_MIN <= v <= INT64_MAX:  # type: ignore[operator]
                        kb.int_rows.append(row)
                        kb.int_vals.append(v)  # type: ignore[arg-type]
                        continue
                    if t is float:
                        kb.float_rows.append(row)
                        kb.float_vals.append(v)  # type: ignore[arg-type]
                        continue
                    _append_one(kb, row, v)
            row += 1
        self.n = row
        return False

    def add_plain(self, metas: list[dict[str, Any] | None]) -> bool:
        """:meth:`add` of a list whose entries are all dicts or None (checked already).

        For a caller that checked the types on its way (a decoder): the same
        rows and return value as :meth:`add`, without checking them again, in
        a few C-level passes per key (what a checkpoint feeds).  Per key, its
        values are gathered in row order; a key whose values all have one kind
        (str, int in int64, float, bool; or only containers, bytes and nil,
        kind "other") is appended as arrays in one step, any other key value
        by value as :meth:`add` does.  Returns whether every key is a str and
        no value an array or a map (see :meth:`add`).
        """
        n0, n = self.n, len(metas)
        rows_of = [m or _NO_KEYS for m in metas]
        columns = _same_keys(rows_of)
        if columns is None:
            keys = dict.fromkeys(itertools.chain.from_iterable(rows_of))  # first-seen order
            columns = [(key, *_values_of(key, rows_of)) for key in keys]
        flat = _STR_ONLY.issuperset(type(c[0]) for c in columns)
        every_row: np.ndarray | None = None
        for key, vals, some_absent in columns:
            kb = self._keys.get(key)
            if kb is None:
                kb = self._keys[key] = _KeyBuilder()
            kinds = set(map(type, vals))
            kinds.discard(_Absent)
            if flat and not kinds.isdisjoint(_CONTAINERS):
                flat = False
            if len(kinds) == 1 or _OTHER_TYPES.issuperset(kinds):
                t = kinds.pop() if len(kinds) == 1 else list
                if some_absent:  # some rows lack the key: keep the rest
                    mask = list(map(operator.is_not, vals, itertools.repeat(_ABSENT, n)))
                    rows = np.flatnonzero(np.array(mask, dtype=np.bool_)) + n0
                    held = list(itertools.compress(vals, mask))
                else:
                    if every_row is None:
                        every_row = np.arange(n0, n0 + n, dtype=np.int64)
                    rows = every_row
                    held = vals
                if _append_kind(kb, t, rows, held):
                    continue
            for row, v in enumerate(vals, n0):
                if v is not _ABSENT:
                    _append_one(kb, row, v)
        self.n = n0 + n
        return flat

    def finish(self) -> dict[str, KeyColumns]:
        """The dense columns of every row added so far."""
        n = self.n
        out: dict[str, KeyColumns] = {}
        for key, kb in self._keys.items():
            kc: KeyColumns = {}
            for kind, rows, vals, dtype in (("int", kb.int_rows, kb.int_vals, np.int64),
                                            ("float", kb.float_rows, kb.float_vals, np.float64),
                                            ("bool", kb.bool_rows, kb.bool_vals, np.bool_)):
                if rows:
                    idx = np.frombuffer(rows, dtype=np.int64)
                    values = np.zeros(n, dtype=dtype)
                    values[idx] = np.frombuffer(vals, dtype=vals.typecode).astype(dtype)
                    present = np.zeros(n, dtype=np.bool_)
                    present[idx] = True
                    kc[kind] = (values, present)  # type: ignore[literal-required]
            if kb.str_rows:
                dictionary = sorted(kb.str_ids)
                # provisional code -> rank in the sorted dictionary
                remap = np.empty(len(dictionary), dtype=np.int32)
                remap[np.fromiter(kb.str_ids.values(), dtype=np.int64, count=len(kb.str_ids))] \
                    = np.fromiter((bisect.bisect_left(dictionary, s) for s in kb.str_ids),
                                  dtype=np.int32, count=len(kb.str_ids))
                codes = np.full(n, -1, dtype=np.int32)
                codes[np.frombuffer(kb.str_rows, dtype=np.int64)] = \
                    remap[np.frombuffer(kb.str_codes, dtype=np.int32)]
                kc["str"] = (codes, dictionary)
            if kb.other_rows:
                other = np.zeros(n, dtype=np.bool_)
                other[np.frombuffer(kb.other_rows, dtype=np.int64)] = True
                kc["other"] = other
            out[key] = kc
        return out


def build_columns(metadatas: Iterable[Mapping[str, Any] | None]) -> dict[str, KeyColumns]:
    """The :data:`Columns` of a list of metadata dicts (``None`` for a row without).

    Examples
    --------
    >>> cols = build_columns([{"src": "b"}, {"src": "a", "page": 2}, None])
    >>> codes, dictionary = cols["src"]["str"]
    >>> codes.tolist(), dictionary
    ([1, 0, -1], ['a', 'b'])
    """
    b = ColumnBuilder()
    b.add(metadatas)
    return b.finish()


def _int_const(values: np.ndarray, op: str, c: int) -> np.ndarray:
    """``values OP c`` for int64 values and any Python int ``c`` (clamped, never wrapped)."""
    if c > INT64_MAX:
        return np.full(len(values), op in ("lt", "lte"))
    if c < INT64_MIN:
        return np.full(len(values), op in ("gt", "gte"))
    result: np.ndarray = _NP_CMP[op](values, np.int64(c))
    return result


_NP_CMP: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal,
    "eq": np.equal,
}


def _int_cmp(values: np.ndarray, op: str, q: int | float) -> np.ndarray:
    """Exact ``values OP q`` for int64 values (numpy would round them to float64)."""
    if isinstance(q, int):
        return _int_const(values, op, q)
    # q is a finite float: an int x satisfies x > q iff x > floor(q), x >= q iff x >= ceil(q)...
    if op == "eq":
        if q.is_integer():
            return _int_const(values, "eq", int(q))
        return np.zeros(len(values), dtype=np.bool_)
    bound = math.floor(q) if op in ("gt", "lte") else math.ceil(q)
    return _int_const(values, op, bound)


def _float_cmp(values: np.ndarray, op: str, q: int | float) -> np.ndarray:
    """Exact ``values OP q`` for float64 values and an int or float ``q``."""
    f = float(q)
    if isinstance(q, float) or int(f) == q:
        result: np.ndarray = _NP_CMP[op](values, np.float64(f))
        return result
    # An int q that float64 cannot hold: no float equals it, and f (its nearest float)
    # is on one side of it with no float strictly between them.
    if op == "eq":
        return np.zeros(len(values), dtype=np.bool_)
    if op in ("gt", "gte"):
        return (values >= f) if f > q else (values > f)  # type: ignore[no-any-return]
    return (values < f) if f > q else (values <= f)  # type: ignore[no-any-return]


def _str_code(dictionary: Sequence[str], s: str) -> int:
    i = bisect.bisect_left(dictionary, s)
    return i if i < len(dictionary) and dictionary[i] == s else -1


def _eq_mask(kc: KeyColumns, q: Scalar, n: int) -> np.ndarray:
    if isinstance(q, bool):
        if "bool" not in kc:
            return np.zeros(n, dtype=np.bool_)
        values, present = kc["bool"]
        return present & (values == q)  # type: ignore[no-any-return]
    if isinstance(q, str):
        if "str" not in kc:
            return np.zeros(n, dtype=np.bool_)
        codes, dictionary = kc["str"]
        code = _str_code(dictionary, q)
        if code < 0:
            return np.zeros(n, dtype=np.bool_)
        return codes == code  # type: ignore[no-any-return]
    return _num_mask(kc, "eq", q, n)


def _num_mask(kc: KeyColumns, op: str, q: int | float, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.bool_)
    if "int" in kc:
        values, present = kc["int"]
        out |= present & _int_cmp(values, op, q)
    if "float" in kc:
        values, present = kc["float"]
        out |= present & _float_cmp(values, op, q)
    return out


def _in_mask(kc: KeyColumns, items: tuple[Scalar, ...], n: int) -> np.ndarray:
    first = items[0]
    if isinstance(first, bool):
        if "bool" not in kc:
            return np.zeros(n, dtype=np.bool_)
        values, present = kc["bool"]
        wanted = set(items)
        if len(wanted) == 2:
            both: np.ndarray = present.copy()
            return both
        return present & (values == first)  # type: ignore[no-any-return]
    if isinstance(first, str):
        if "str" not in kc:
            return np.zeros(n, dtype=np.bool_)
        codes, dictionary = kc["str"]
        found = sorted({c for s in items if (c := _str_code(dictionary, str(s))) >= 0})
        if not found:
            return np.zeros(n, dtype=np.bool_)
        if len(found) == 1:
            return codes == found[0]  # type: ignore[no-any-return]
        result: np.ndarray = np.isin(codes, np.array(found, dtype=np.int32))
        return result
    numbers = [q for q in items if isinstance(q, (int, float))]
    out = np.zeros(n, dtype=np.bool_)
    if "int" in kc:
        # the ints the items equal exactly; a float item only if it is integral and in range
        ints = sorted({int(q) for q in numbers if isinstance(q, int) or (
            q.is_integer() and INT64_MIN <= q <= INT64_MAX)})
        if ints:
            values, present = kc["int"]
            out |= present & np.isin(values, np.array(ints, dtype=np.int64))
    if "float" in kc:
        # the floats the items equal exactly; an int item only if float64 holds it
        floats = sorted({float(q) for q in numbers if isinstance(q, float) or int(float(q)) == q})
        if floats:
            values, present = kc["float"]
            out |= present & np.isin(values, np.array(floats, dtype=np.float64))
    return out


def _exists_mask(kc: KeyColumns | None, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.bool_)
    if kc is None:
        return out
    for kind in ("int", "float", "bool"):
        if kind in kc:
            out |= kc[kind][1]  # type: ignore[literal-required]
    if "str" in kc:
        out |= kc["str"][0] >= 0
    if "other" in kc:
        out |= kc["other"]
    return out


def compile_columns(expr: Expr, columns: Columns, n: int) -> np.ndarray:
    """Evaluate a parsed filter over ``n`` rows of column data, vectorised.

    Parameters
    ----------
    expr : Expr
        A tree from :func:`parse`.
    columns : Columns
        The layout in the module docstring (e.g. from :func:`build_columns`).
    n : int
        The number of rows.

    Returns
    -------
    numpy.ndarray
        A new bool array of length ``n``, ``True`` where the row matches --
        element for element what :func:`matches` says of the row's metadata.

    Examples
    --------
    >>> metas = [{"page": 1}, {"page": 5.5}, {"page": "5"}, None]
    >>> compile_columns(parse({"page": {"$gt": 2}}), build_columns(metas), 4).tolist()
    [False, True, False, False]
    """
    if isinstance(expr, (And, Or)):
        masks = [compile_columns(c, columns, n) for c in expr.children]
        out = masks[0]
        for m in masks[1:]:
            if isinstance(expr, And):
                out &= m
            else:
                out |= m
        return out
    kc = columns.get(expr.key)
    if isinstance(expr, Exists):
        present = _exists_mask(kc, n)
        return present if expr.present else ~present
    if isinstance(expr, In):
        hit = _in_mask(kc, expr.values, n) if kc is not None else np.zeros(n, dtype=np.bool_)
        return ~hit if expr.negate else hit
    if kc is None:
        return np.full(n, expr.op == "ne")
    if expr.op in ("eq", "ne"):
        hit = _eq_mask(kc, expr.value, n)
        return ~hit if expr.op == "ne" else hit
    return _num_mask(kc, expr.op, expr.value, n)  # type: ignore[arg-type]
