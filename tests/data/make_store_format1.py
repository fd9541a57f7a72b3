"""Build tests/data/store_format1.tar.gz: a store written by the release before versions.

The fixture is committed; this script documents how it was made and is not run
by the tests.  It was made with the code of commit 5c8f3b7 (format 1: the
MANIFEST names one checkpoint directory; no version files, no deletion
vectors)::

    git worktree add /tmp/mmwal-v1 5c8f3b7
    cd /tmp && PYTHONPATH=/tmp/mmwal-v1 python /path/to/tests/data/make_store_format1.py \
        /path/to/tests/data
    git worktree remove /tmp/mmwal-v1

(run from a directory without an ``mmwal`` package in it: the current
directory comes before PYTHONPATH on ``sys.path``).  It writes two files:

- ``store_format1.tar.gz``: the store (``store/`` inside);
- ``mmwal_5c8f3b7.tar.xz``: the modules of that release a Store and a Reader
  load (``mmwal/`` inside, unchanged), so that the test can run the previous
  release in a subprocess without git, and see it refuse an upgraded store.

The store: 20 adds and a remove, checkpoint 1 (kept as the older checkpoint,
keep_checkpoints=2), adds, a replace and a remove, checkpoint 2 (current), then
a log tail after it that removes and replaces rows of checkpoint 2 (so the
upgrade writes a deletion vector for it), adds a batch, removes one of its
own adds.  :func:`expected` is the state every reader must see; the test
imports it (it needs numpy only, not mmwal).
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import tempfile

import numpy as np

DIM = 4


def vec(k: int, gen: int = 0) -> np.ndarray:
    """Document ``k``'s vector (``gen`` > 0: a replacement); exact in float32."""
    return np.array([k + 1, (k % 3) - 1, gen + 0.5, 0.25 * (k % 4)], dtype=np.float32)


def content(k: int, gen: int = 0) -> str:
    return f"doc {k} gen {gen}" + " and more" * (k % 3)


def meta(k: int, gen: int = 0) -> dict[str, object] | None:
    return None if k % 4 == 0 else {"k": k, "gen": gen, "tags": ["x", k % 5], "f": k / 8}


#: (op, key, generation); "ckpt" is a checkpoint, "batch" adds ``key`` (a list) at once.
OPS: list[tuple[str, object, int]] = [
    *[("add", k, 0) for k in range(20)],
    ("remove", 3, 0),
    ("ckpt", None, 0),                       # checkpoint 1: the older one kept
    *[("add", k, 0) for k in range(20, 25)],
    ("add", 5, 1),                           # replace doc-5
    ("remove", 7, 0),
    ("ckpt", None, 0),                       # checkpoint 2: the current one
    # the log tail, not checkpointed:
    ("batch", [25, 26, 27, 28, 29], 0),
    ("remove", 1, 0),                        # rows of checkpoint 2 die
    ("remove", 2, 0),
    ("add", 10, 1),                          # a replace: the old row dies too
    ("remove", 22, 0),
    ("remove", 26, 0),                       # one of the tail's own adds
    ("add", 3, 2),                           # re-added after its remove in checkpoint 1
]


def expected() -> dict[str, tuple[np.ndarray, str, dict[str, object] | None]]:
    """id -> (vector, content, metadata) after every op (what readers must serve)."""
    state: dict[str, tuple[np.ndarray, str, dict[str, object] | None]] = {}
    for op, key, gen in OPS:
        if op == "add":
            assert isinstance(key, int)
            state.pop(f"doc-{key}", None)
            state[f"doc-{key}"] = (vec(key, gen), content(key, gen), meta(key, gen))
        elif op == "batch":
            assert isinstance(key, list)
            for k in key:
                state[f"doc-{k}"] = (vec(k, gen), content(k, gen), meta(k, gen))
        elif op == "remove":
            del state[f"doc-{key}"]
    return state


def build(root: str) -> None:
    import mmwal  # the old release, from PYTHONPATH

    cfg = mmwal.Config(keep_checkpoints=2, chunk_documents=4)
    with mmwal.Store(root, dim=DIM, durability="os", config=cfg) as s:
        for op, key, gen in OPS:
            if op == "add":
                assert isinstance(key, int)
                s.add(f"doc-{key}", vec(key, gen), content=content(key, gen),
                      metadata=meta(key, gen))
            elif op == "batch":
                assert isinstance(key, list)
                s.add_many([f"doc-{k}" for k in key], np.stack([vec(k, gen) for k in key]),
                           contents=[content(k, gen) for k in key],
                           metadatas=[meta(k, gen) for k in key])
            elif op == "remove":
                s.remove(f"doc-{key}")
            else:
                s.checkpoint()


#: The modules of the old release that ``import mmwal`` and a Store or Reader load.
OLD_MODULES = ("__init__.py", "_checkpoint.py", "_format.py", "_fsutil.py", "_handle.py",
               "_io.py", "_lock.py", "_reader.py", "_repair.py", "_replay.py",
               "_search/__init__.py", "_search/where.py", "_snapshot.py", "_store.py",
               "_types.py", "_validate.py", "_verify.py", "_wal.py", "errors.py")


def main(out_dir: str) -> None:
    import importlib.util

    import mmwal

    # The release before versions: no _version module.
    assert importlib.util.find_spec("mmwal._version") is None, mmwal.__file__
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "store")
        build(root)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
            tar.add(root, arcname="store")
        with open(os.path.join(out_dir, "store_format1.tar.gz"), "wb") as f:
            f.write(buf.getvalue())
    pkg = os.path.dirname(mmwal.__file__)
    with tarfile.open(os.path.join(out_dir, "mmwal_5c8f3b7.tar.xz"), mode="w:xz",
                      preset=9) as tar:
        for name in OLD_MODULES:
            tar.add(os.path.join(pkg, name), arcname=f"mmwal/{name}")


if __name__ == "__main__":
    main(sys.argv[1])
