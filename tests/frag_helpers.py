"""Child processes and checks of the fragment tests (``import frag_helpers``).

``conftest.py`` puts ``tests/`` on ``sys.path`` and a ``spawn`` child inherits
it, so every child target here is importable by name.  Children report plain
data (JSON through ``ckpt_helpers.child_main``), never a pickled mmwal object.

* ``frag_writer``: writes its own ids ``w{n}-{i}`` (adds, batches, replaces,
  removes) and returns what it was acknowledged: ``{id: key}``.
* ``frag_publisher``: loops ``checkpoint()`` / ``compact()`` until told to stop.
* ``orphans``: files in ``checkpoints/`` that no version file on disk lists.
* ``publish_child``: ``checkpoint()`` then ``compact()`` under a ``KillLayer``.
"""

from __future__ import annotations

import os
import random
from typing import Any

from ckpt_helpers import KillLayer, key_vec, key_vecs, should_stop

from mmwal import _io
from mmwal._fsutil import Paths
from mmwal._store import open_manifest
from mmwal._version import list_versions, load_version

DIM = 8
#: key -> (writer, index) is ``divmod(key, KEY_SPAN)`` after dropping the version digits
KEY_SPAN = 1_000_000


def wmeta(key: int) -> dict[str, Any] | None:
    if key % 6 == 0:
        return None
    return {"key": key, "mod": key % 4, "tag": ["x", key % 3]}


def wcontent(key: int) -> str:
    return f"c{key}"


def frag_writer(path: str, writer: int, n_ops: int, seed: int) -> dict[str, Any]:
    """Adds (single and batched), replaces and removes of this writer's own ids.

    Each write's data is a fresh key ``writer * KEY_SPAN + k``: its vector,
    content and metadata are functions of the key, so the parent checks any
    row it sees.  Returns the acknowledged final state (``{"state": {id: key}}``)
    and every id it ever wrote (``"ids"``), removed ones included.
    """
    import mmwal

    rng = random.Random(seed)
    cfg = mmwal.Config(segment_bytes=8192, chunk_documents=4, max_fragments=3)
    state: dict[str, int] = {}
    nxt = 0  # next new id index
    k = 0  # next key
    with mmwal.Store(path, durability="os", config=cfg) as s:
        for _ in range(n_ops):
            r = rng.random()
            if r < 0.45 or not state:
                key = writer * KEY_SPAN + k
                k += 1
                name = f"w{writer}-{nxt}"
                nxt += 1
                s.add(name, key_vec(key), content=wcontent(key), metadata=wmeta(key))
                state[name] = key
            elif r < 0.6:
                names = [f"w{writer}-{nxt + j}" for j in range(3)]
                nxt += 3
                keys = [writer * KEY_SPAN + k + j for j in range(3)]
                k += 3
                s.add_many(names, key_vecs(keys), contents=[wcontent(x) for x in keys],
                           metadatas=[wmeta(x) for x in keys])
                state.update(zip(names, keys))
            elif r < 0.8:
                name = rng.choice(sorted(state))
                key = writer * KEY_SPAN + k
                k += 1
                s.add(name, key_vec(key), content=wcontent(key), metadata=wmeta(key))
                state[name] = key
            else:
                name = rng.choice(sorted(state))
                s.remove(name)
                del state[name]
    return {"state": state, "ids": [f"w{writer}-{i}" for i in range(nxt)]}


def frag_publisher(path: str, stop_path: str, parent: int, seed: int) -> dict[str, int]:
    """``checkpoint()`` then ``compact()``, in a loop until ``stop_path`` exists."""
    import time

    import mmwal

    rng = random.Random(seed)
    cfg = mmwal.Config(segment_bytes=8192, chunk_documents=4, max_fragments=4,
                       keep_checkpoints=1, compact_dead_fraction=0.9)
    deadline = time.monotonic() + 100
    done = {"checkpoints": 0, "compactions": 0, "merged": 0}
    with mmwal.Store(path, durability="os", config=cfg) as s:
        # At least two rounds whatever the timing (a spawned child may start
        # after the writers are done), then until told to stop.
        while ((done["compactions"] < 2 and time.monotonic() < deadline)
               or not should_stop(stop_path, parent, deadline)):
            s.checkpoint()
            done["checkpoints"] += 1
            # full, or tiered leaving dead rows behind (deletion vectors stay in use)
            target, min_dead = rng.choice([(None, None), (2, 0.9), (3, 0.9), (3, 0.3)])
            info = s.compact(target_fragments=target, min_dead_fraction=min_dead)
            done["compactions"] += 1
            done["merged"] += info.fragments_merged
            time.sleep(0.005)
        s.checkpoint()  # what the writers did last, as deletion vectors
        done["checkpoints"] += 1
    return done


def orphans(path: str) -> list[str]:
    """Files in checkpoints/ that no version file on disk lists, and temporary files."""
    paths = Paths(path)
    m = open_manifest(paths)
    listed: set[str] = set()
    vids = list_versions(paths)
    for vid in vids:
        v = load_version(paths, vid, m["dim"])
        listed.add(f"{vid:08d}.version")
        for e in v.entries:
            listed.add(f"{e.fid:08d}")
            if e.dv:
                listed.add(f"{e.fid:08d}-{e.dv:08d}.deleted")
    bad = [n for n in os.listdir(paths.checkpoints) if n not in listed]
    if m["checkpoint"] and m["checkpoint"] not in vids:
        bad.append(f"the MANIFEST names version {m['checkpoint']}, which is missing")
    return sorted(bad)


def publish_child(path: str, kill_at: int, cfg_kwargs: dict[str, Any],
                  compact_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint()`` then ``compact(**compact_kwargs)`` under ``KillLayer(kill_at)``."""
    import mmwal

    layer = KillLayer(kill_at)
    _io.set_layer(layer)  # before the Store binds it
    try:
        with mmwal.Store(path, config=mmwal.Config(**cfg_kwargs)) as store:
            opened = layer.count
            ck = store.checkpoint()
            after_ck = layer.count
            co = store.compact(**compact_kwargs)
    finally:
        _io.set_layer(None)
    return {"count": layer.count, "opened": opened, "after_checkpoint": after_ck,
            "trace": layer.trace, "checkpoint": [ck.id, ck.fragments, ck.fragments_merged],
            "compact": [co.id, co.fragments_before, co.fragments, co.fragments_merged]}


def compact_child(path: str, go_path: str) -> list[int]:
    """Wait for ``go_path``, then ``compact()``; returns (merged, written, id)."""
    import time

    import mmwal

    deadline = time.monotonic() + 30
    with mmwal.Store(path) as s:
        while not os.path.exists(go_path) and time.monotonic() < deadline:
            time.sleep(0.001)
        info = s.compact()
    return [info.fragments_merged, info.fragments_written, info.id]
