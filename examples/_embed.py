"""A stand-in for a real embedding model, so that the examples run anywhere.

``embed(texts)`` returns one unit vector per text: the normalised sum of a
fixed pseudo-random vector per word (the "hashing trick").  Texts that share
words get similar vectors, which is all the examples need to show search.
Replace it with your model, e.g. ``SentenceTransformer(...).encode(texts)``.
"""

from __future__ import annotations

import functools
import re
import zlib

import numpy as np

DIM = 384
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is",
                   "it", "of", "on", "or", "the", "to", "with"])


@functools.lru_cache(maxsize=65536)
def _word_vector(word: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(word.encode("utf-8")))
    return rng.standard_normal(DIM).astype(np.float32)


def embed(texts: list[str]) -> np.ndarray:
    """(len(texts), DIM) float32, each row of norm 1."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            if word not in _STOP:
                out[i] += _word_vector(word)
        if not out[i].any():
            out[i] = _word_vector(text)  # no content words: still a valid vector
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
