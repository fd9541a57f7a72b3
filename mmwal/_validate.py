"""Checks of user input, done before anything is written (bad input writes nothing)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._format import MAX_ID_BYTES
from .errors import DimensionError, InvalidInputError

_F4 = np.dtype("<f4")
_ndarray = np.ndarray


def check_id(id: Any, where: str = "id") -> None:
    if type(id) is not str:
        if isinstance(id, str):
            return
        raise InvalidInputError(f"{where} must be a str, got {type(id).__name__} {id!r:.60}",
                                got=type(id).__name__)
    if not id:
        raise InvalidInputError(f"{where} must be a non-empty str", got=id)
    if len(id) > MAX_ID_BYTES // 4 and len(id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidInputError(f"{where} is longer than {MAX_ID_BYTES} UTF-8 bytes", got=len(id))


def check_text(x: Any, where: str) -> None:
    if type(x) is not str and not isinstance(x, str):
        raise InvalidInputError(f"{where} must be a str, got {type(x).__name__}",
                                got=type(x).__name__)


def _bad_key(where: str, key: Any) -> InvalidInputError:
    return InvalidInputError(
        f"{where}: metadata keys must be str (JSON-like), got {type(key).__name__} {key!r:.40}",
        got=type(key).__name__)


def _walk(v: Any, where: str, depth: int) -> None:
    if depth > 64:
        raise InvalidInputError(f"{where}: metadata nested deeper than 64 levels")
    t = type(v)
    if t is dict:
        for k, x in v.items():
            if type(k) is not str:
                raise _bad_key(where, k)
            if type(x) in (dict, list, tuple):
                _walk(x, where, depth + 1)
    elif t in (list, tuple):
        for x in v:
            if type(x) in (dict, list, tuple):
                _walk(x, where, depth + 1)


def check_metadata(m: Any, where: str = "metadata") -> None:
    """None or a dict with str keys whose values msgpack can hold (checked when packing)."""
    if m is None:
        return
    if type(m) is not dict:
        raise InvalidInputError(f"{where} must be a dict or None, got {type(m).__name__}",
                                got=type(m).__name__)
    for k, x in m.items():
        if type(k) is not str:
            raise _bad_key(where, k)
        if type(x) in (dict, list, tuple):
            _walk(x, where, 1)


def _nonfinite(arr: np.ndarray, where: str) -> InvalidInputError:
    bad = np.argwhere(~np.isfinite(arr))
    first = tuple(int(i) for i in bad[0]) if len(bad) else ()
    return InvalidInputError(
        f"{where} holds a non-finite value (NaN, inf, or outside the float32 range) at "
        f"index {first[0] if len(first) == 1 else first}", index=first)


def as_vectors(x: Any, dim: int, n: int | None, where: str) -> np.ndarray:
    """``x`` as a C-contiguous little-endian float32 array of shape (dim,) or (n, dim).

    Accepts any numeric array-like that casts to float32 within ``same_kind``
    (float64, ints); refuses strings, objects, complex, wrong shapes and
    non-finite values.
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
    # Fast finiteness check: a dot product is non-finite if any element is; it
    # may also overflow for huge finite values, so confirm before refusing.
    if n is None:
        # np.vdot, not arr.dot: dot checks the FPU flags and emits "RuntimeWarning:
        # overflow encountered in dot" for valid huge finite vectors (an exception
        # under -W error); vdot and einsum do not (guarded by test_store_input.py).
        s = float(np.vdot(arr, arr))
    else:
        s = float(np.einsum("ij,ij->", arr, arr)) if arr.size else 0.0
    if not math.isfinite(s) and not np.isfinite(arr).all():
        raise _nonfinite(arr, where)
    return arr


def check_sequence(x: Any, n: int, where: str) -> Sequence[Any]:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        raise InvalidInputError(f"{where} must be a sequence of length {n}, got "
                                f"{type(x).__name__}")
    if len(x) != n:
        raise InvalidInputError(f"{where} has {len(x)} items, expected {n} (one per id)",
                                expected=n, got=len(x))
    return x  # type: ignore[no-any-return]
