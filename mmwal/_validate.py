"""Checks of user input, done before anything is written (bad input writes nothing).

The rule (docs/concepts.md, "What a document may hold"): whatever ``add`` and
``add_many`` accept, replay, a Reader and verify give back equal; everything
else raises :class:`~mmwal.errors.InvalidInputError` before a byte is written.
Accepted values are normalised here to the plain types a reader gives back
(str subclasses to str, dict subclasses to dict, tuples and list subclasses to
list, int and float subclasses to int and float), so that the document a caller
wrote and the one it reads back compare equal.  The limits shared with the
readers live in ``_format`` (one constant each).
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np

from ._format import (
    MAX_ID_BYTES,
    MAX_METADATA_DEPTH,
    MAX_VECTOR_NORM,
    METADATA_INT_MAX,
    METADATA_INT_MIN,
    id_problem,
)
from .errors import DimensionError, InvalidInputError

_F4 = np.dtype("<f4")
_ndarray = np.ndarray
_MAX_NORM_SQ = MAX_VECTOR_NORM * MAX_VECTOR_NORM
_plain_str = str.__str__  # the str itself for a str, an exact copy for a subclass


def _type_name(x: Any) -> str:
    t = type(x)
    mod = t.__module__
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def as_id(id: Any, where: str = "id") -> str:
    """``id`` as a plain str after checking it (non-empty, UTF-8, bounded length)."""
    key: str
    if type(id) is str:
        key = id
    else:
        if not isinstance(id, str):
            raise InvalidInputError(f"{where} must be a str, got {_type_name(id)} {id!r:.60}",
                                    got=type(id).__name__)
        key = _plain_str(id)  # numpy.str_ and other subclasses: stored and read back as str
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"{where} is not valid UTF-8: it holds the lone surrogate "
                f"{key[exc.start]!r} at position {exc.start}; ids are stored as UTF-8 text",
                position=exc.start) from None
    why = id_problem(key)
    if why:
        if not key:
            raise InvalidInputError(f"{where} must be a non-empty str", got=key)
        raise InvalidInputError(f"{where}: {why.replace('an id', 'the id')}",
                                got=len(key))
    return key


def as_text(x: Any, where: str) -> str:
    """``x`` (content) as a plain str."""
    if type(x) is str:
        return x
    if not isinstance(x, str):
        raise InvalidInputError(f"{where} must be a str, got {_type_name(x)}",
                                got=type(x).__name__)
    return _plain_str(x)


# ---------------------------------------------------------------------- metadata
_ALLOWED = ("None, bool, int (64-bit), finite float, str, bytes, list or tuple, and dict "
            "with str keys")


def _bad_key(where: str, key: Any) -> InvalidInputError:
    return InvalidInputError(
        f"{where}: metadata keys must be str (JSON-like), got {_type_name(key)} {key!r:.40}",
        got=type(key).__name__)


def _refuse(where: str, v: Any, why: str) -> InvalidInputError:
    return InvalidInputError(f"{where}: cannot encode {_type_name(v)} {v!r:.40} in metadata: "
                             f"{why}", got=type(v).__name__)


def _utf8(v: str, where: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{where}: cannot encode the metadata str {v!r:.40}: it is not valid UTF-8 (the "
            f"lone surrogate {v[exc.start]!r} at position {exc.start}); text is stored as "
            "UTF-8") from None
    return v


def _value(v: Any, where: str, depth: int) -> Any:
    """The plain value a reader gives back for ``v``; refuses what it cannot."""
    t = type(v)
    if t is str:
        return v if v.isascii() else _utf8(v, where)
    if t is bool or v is None or t is bytes:
        return v
    if t is int:
        if METADATA_INT_MIN <= v <= METADATA_INT_MAX:
            return v
        raise _refuse(where, v, "ints must fit the 64-bit range -2**63 .. 2**64-1 of msgpack")
    if t is float:
        if math.isfinite(v):
            return v
        raise _refuse(where, v, "floats must be finite (NaN and infinities do not compare "
                      "equal or fit in JSON); store None or a string instead")
    if t is dict or t is list or t is tuple:
        return _container(v, where, depth + 1)
    # Subclasses of the accepted types are stored as their base type.  Tuple
    # subclasses (namedtuples, msgpack's ExtType) are not: their fields would
    # be lost silently.
    if isinstance(v, str):
        return _value(_plain_str(v), where, depth)
    if isinstance(v, int):
        return _value(int.__int__(v), where, depth)  # IntEnum, IntFlag: their int value
    if isinstance(v, float):
        return _value(float.__float__(v), where, depth)  # numpy.float64
    if isinstance(v, bytes):
        return bytes(memoryview(v))
    if isinstance(v, (dict, list)):
        return _container(v, where, depth + 1)
    raise _refuse(where, v, f"metadata values must be {_ALLOWED}")


def _container(v: Any, where: str, depth: int) -> Any:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInputError(f"{where}: metadata nested deeper than {MAX_METADATA_DEPTH} "
                                "levels (the limit every reader decodes)",
                                limit=MAX_METADATA_DEPTH)
    if isinstance(v, dict):
        return _dict(v, where, depth)
    return [_value(x, where, depth) for x in v]


def _dict(d: dict[Any, Any], where: str, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = 0
    for key, x in d.items():
        k = key
        if type(k) is not str:
            if not isinstance(k, str):
                raise _bad_key(where, k)
            k = _plain_str(k)
        if not k.isascii():
            _utf8(k, where)
        out[k] = _value(x, where, depth)
        n += 1
    if len(out) != n:
        raise InvalidInputError(f"{where}: a metadata key appears twice once its str "
                                "subclass is reduced to str; use distinct plain str keys")
    return out


_SCALAR_TYPES = frozenset((bool, type(None), bytes))
_CHECK_DEPTH = 8  # _plain checks this many levels; deeper metadata takes the full path


def _plain(v: Any, depth: int) -> bool:
    """Whether ``v`` (a dict or list) is already plain and passes every check.

    The fast path of :func:`normalize_metadata`: one loop, no copy.  True only
    when the full check would accept ``v`` and return an equal object of the
    same plain types (exact str/int/float/bool/None/bytes, dict with ASCII str
    keys, list); anything else - subclasses, tuples, non-ASCII text, a value
    out of range - answers False and takes the full path, which normalises or
    raises the precise error.
    """
    if type(v) is dict:
        for k in v:
            if type(k) is not str or not k.isascii():
                return False
        items: Any = v.values()
    else:
        items = v
    for x in items:
        t = type(x)
        if t is str:
            if not x.isascii():
                return False
        elif t is int:
            if not METADATA_INT_MIN <= x <= METADATA_INT_MAX:
                return False
        elif t is float:
            if x - x != 0.0:  # NaN or an infinity (inf - inf is NaN)
                return False
        elif t is dict or t is list:
            if depth >= _CHECK_DEPTH or not _plain(x, depth + 1):
                return False
        elif t not in _SCALAR_TYPES:
            return False
    return True


def normalize_metadata(m: Any, where: str = "metadata") -> dict[str, Any] | None:
    """``m`` as the plain dict a reader gives back (None stays None); refuses the rest.

    Accepted: a dict (or dict subclass) with str keys whose values are None,
    bool, int within 64 bits, finite float, str, bytes, list/tuple and dict,
    nested at most ``MAX_METADATA_DEPTH`` levels.  Normalised: str/int/float/
    bytes/dict/list subclasses to the base type, tuples to lists.
    """
    if m is None:
        return None
    if type(m) is dict and _plain(m, 0):
        return m  # already what a reader gives back: nothing to copy
    if not isinstance(m, dict):
        raise InvalidInputError(f"{where} must be a dict or None, got {_type_name(m)}",
                                got=type(m).__name__)
    return _dict(m, where, 0)


# ---------------------------------------------------------------------- vectors
def _nonfinite(arr: np.ndarray, where: str) -> InvalidInputError:
    bad = np.argwhere(~np.isfinite(arr))
    first = tuple(int(i) for i in bad[0]) if len(bad) else ()
    return InvalidInputError(
        f"{where} holds a non-finite value (NaN, inf, or outside the float32 range) at "
        f"index {first[0] if len(first) == 1 else first}", index=first)


def _too_long(where: str, norm: float) -> InvalidInputError:
    return InvalidInputError(
        f"{where} has Euclidean norm {norm:.3g}, above the limit 2**62 (about "
        f"{MAX_VECTOR_NORM:.2g}) beyond which float32 search scores overflow; scale it "
        "down (cosine scores do not depend on the length)", norm=norm)


def _check_norms(arr: np.ndarray, where: str, single: bool) -> None:
    """Refuse non-finite values and norms above MAX_VECTOR_NORM (exactly, in float64)."""
    if not np.isfinite(arr).all():
        raise _nonfinite(arr, where)
    a64 = arr.astype(np.float64).reshape(-1, arr.shape[-1] if arr.ndim else 1)
    sq = np.einsum("ij,ij->i", a64, a64)
    bad = np.flatnonzero(sq > _MAX_NORM_SQ)
    if len(bad):
        i = int(bad[0])
        raise _too_long(where if single else f"{where}[{i}]", math.sqrt(float(sq[i])))


def as_vectors(x: Any, dim: int, n: int | None, where: str) -> np.ndarray:
    """``x`` as a C-contiguous little-endian float32 array of shape (dim,) or (n, dim).

    Accepts any numeric array-like that casts to float32 within ``same_kind``
    (float64, ints); refuses strings, objects, complex, wrong shapes,
    non-finite values and vectors whose norm exceeds ``MAX_VECTOR_NORM``.
    """
    if type(x) is _ndarray and x.dtype == _F4 and x.flags.c_contiguous:
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"{where} is not an array of numbers ({exc})") from None
        if arr.dtype.kind not in "fiub" or not np.can_cast(arr.dtype, _F4, "same_kind"):
            raise InvalidInputError(
                f"{where} has dtype {arr.dtype}, which does not cast safely to float32; "
                "pass numbers (e.g. np.float32)", dtype=str(arr.dtype))
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.ascontiguousarray(arr, dtype=_F4)
    shape = (dim,) if n is None else (n, dim)
    if arr.shape != shape:
        got = arr.shape[-1] if arr.ndim >= 1 else 0
        if arr.ndim == len(shape) and got != dim:
            raise DimensionError(f"{where} has dimension {got}, the store has {dim}",
                                 expected=dim, got=got)
        raise InvalidInputError(f"{where} has shape {arr.shape}, expected {shape}",
                                expected=shape, got=arr.shape)
    # Fast check: the float32 sum of squares is NaN/inf if any element is, and
    # exceeds half the limit if any row's squared norm exceeds the limit (the
    # terms are non-negative; float32 rounding is far below a factor of 2).
    # Only then is the exact float64 check run, to refuse or to accept.
    if n is None:
        # np.vdot, not arr.dot: dot checks the FPU flags and emits "RuntimeWarning:
        # overflow encountered in dot" (an exception under -W error); vdot and
        # einsum do not (guarded by test_store_input.py).
        s = float(np.vdot(arr, arr))
    else:
        s = float(np.einsum("ij,ij->", arr, arr)) if arr.size else 0.0
    if not s <= _MAX_NORM_SQ * 0.5:
        _check_norms(arr, where, n is None)
    return arr


# ---------------------------------------------------------------------- sequences
_UNORDERED = (AbstractSet, Mapping, KeysView, ValuesView, ItemsView)


def as_list(x: Any, n: int | None, where: str) -> list[Any]:
    """``x`` (an ordered sequence: list, tuple, array...) as a list of ``n`` items.

    Sets, dicts and dict views are refused: their order is arbitrary (or not
    the one a caller means), and the order decides which id gets which vector.
    Iterators are refused: they have no length to check before consuming them.
    """
    if isinstance(x, (str, bytes, *_UNORDERED)) or not hasattr(x, "__len__") \
            or not hasattr(x, "__iter__"):
        kind = "unordered " if isinstance(x, _UNORDERED) else ""
        want = "" if n is None else f" of length {n}"
        raise InvalidInputError(
            f"{where} must be an ordered sequence{want} (list, tuple, array), got "
            f"{kind}{_type_name(x)}", got=type(x).__name__)
    if n is not None and len(x) != n:
        raise InvalidInputError(f"{where} has {len(x)} items, expected {n} (one per id)",
                                expected=n, got=len(x))
    out = list(x)
    if n is not None and len(out) != n:
        raise InvalidInputError(f"{where} yielded {len(out)} items, expected {n}",
                                expected=n, got=len(out))
    return out



# ---------------------------------------------------------------------- batches
_STR_ONLY = frozenset((str,))


def as_ids(x: Any) -> list[str]:
    """``x`` (the ids of a batch) as a list of plain str after checking every one.

    The common batch - plain ASCII str ids, none empty or too long - is checked
    in one pass over the list (their types, lengths and one ``isascii`` of the
    joined ids); any other batch is checked id by id, for the precise error.
    """
    ids = as_list(x, None, "ids")
    if ids and _STR_ONLY.issuperset(map(type, ids)):
        lens = list(map(len, ids))
        if min(lens) > 0 and max(lens) <= MAX_ID_BYTES and "".join(ids).isascii():
            return ids  # ASCII: one byte per character, within MAX_ID_BYTES
    return [as_id(key, f"ids[{i}]") for i, key in enumerate(ids)]


def as_texts(x: Any, n: int, where: str) -> list[str]:
    """``x`` (the contents of a batch) as a list of ``n`` plain str."""
    texts = as_list(x, n, where)
    if _STR_ONLY.issuperset(map(type, texts)):
        return texts
    return [as_text(c, f"{where}[{i}]") for i, c in enumerate(texts)]


def normalize_metadatas(x: Any, n: int, where: str) -> list[dict[str, Any] | None]:
    """``x`` (the metadatas of a batch) as a list of ``n`` plain dicts or None."""
    metas = as_list(x, n, where)
    plain = _plain
    todo = [i for i, m in enumerate(metas)
            if m is not None and not (type(m) is dict and plain(m, 0))]
    for i in todo:  # subclasses, tuples, non-ASCII text, or an error to raise
        metas[i] = normalize_metadata(metas[i], f"{where}[{i}]")
    return metas
