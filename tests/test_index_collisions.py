"""The id -> row index of a checkpoint over ids crafted to collide.

CRC-32 is linear, so ids with one CRC-32 are easy to build (``colliding_ids``
below does it by Gaussian elimination over GF(2)).  Linear probing over them is
quadratic, and more ids than a partition has slots made the old build loop
forever.  The build must end for any input: CRC-32 within a probe budget, else a
keyed hash with a random key (docs/format.md, "Index").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from typing import Any

import numpy as np
import pytest

import mmwal
from mmwal import _checkpoint
from mmwal import _format as F
from mmwal._fsutil import Paths
from mmwal.errors import FormatVersionError

DIM = 4


def colliding_ids(n: int, prefix: str = "id-", length: int = 24) -> list[str]:
    """``n`` distinct printable ASCII ids of one length that all have the same CRC-32.

    Free bits: bits 0 and 1 of each of ``length`` characters drawn from "defg".
    For messages of one length CRC-32 is affine in these bits, so every
    combination of vectors of the kernel of the linear part leaves it unchanged.
    """
    base = bytearray(prefix.encode() + b"d" * length)
    c0 = zlib.crc32(bytes(base))
    positions = [(i, bit) for i in range(len(prefix), len(base)) for bit in (0, 1)]
    pivots: dict[int, tuple[int, int]] = {}
    kernel: list[int] = []
    for j, (i, bit) in enumerate(positions):
        m = bytearray(base)
        m[i] ^= 1 << bit
        v, mask = zlib.crc32(bytes(m)) ^ c0, 1 << j
        while v:
            top = v.bit_length() - 1
            if top not in pivots:
                pivots[top] = (v, mask)
                break
            pv, pm = pivots[top]
            v, mask = v ^ pv, mask ^ pm
        if not v:
            kernel.append(mask)
    need = max(1, (n - 1).bit_length())
    assert len(kernel) >= need, "make the ids longer"
    out = []
    for k in range(n):
        mask = 0
        for b in range(need):
            if k >> b & 1:
                mask ^= kernel[b]
        msg = bytearray(base)
        for j, (i, bit) in enumerate(positions):
            if mask >> j & 1:
                msg[i] ^= 1 << bit
        out.append(msg.decode("ascii"))
    return out


def test_colliding_ids_collide() -> None:
    ids = colliding_ids(1000)
    assert len(set(ids)) == 1000
    assert len({zlib.crc32(x.encode()) for x in ids}) == 1


def _child(path: str, n: int, partition_slots: int) -> dict[str, Any]:
    """Store n colliding ids, checkpoint, look every one of them up, verify."""
    if partition_slots:
        _checkpoint.PARTITION_SLOTS = partition_slots  # partitions at a test's size
    ids = colliding_ids(n)
    with mmwal.Store(path, dim=DIM, durability="os") as store:
        for a in range(0, n, 4096):
            part = ids[a:a + 4096]
            store.add_many(part, np.arange(len(part) * DIM, dtype=np.float32).reshape(-1, DIM)
                           + a * DIM + 1)
        store.checkpoint()
    r = mmwal.Reader(path)
    try:
        found = sum(x in r for x in ids)
        absent = sum(x in r for x in colliding_ids(n + 50)[n:])
        first = r.get(ids[n // 2])
        row_ok = first is not None and first.id == ids[n // 2]
        ckpt = r._state.ckpt
        assert ckpt is not None
        desc = {k: ckpt.parts[0].view.descriptor[k] for k in ("hash", "index_partitions")}
    finally:
        r.close()
    report = mmwal.verify(path)
    return {"found": found, "absent": absent, "row_ok": row_ok, "ok": report.ok, **desc}


@pytest.mark.parametrize(("n", "partition_slots"), [
    (40_000, 0),  # one home slot for all: quadratic probing (about 8e8 probes)
    (300, 64),    # more ids than one partition has slots: the old build never ended
], ids=["one-slot", "partition-overflow"])
def test_checkpoint_over_colliding_ids_ends(tmp_path: Any, n: int, partition_slots: int) -> None:
    path = str(tmp_path / "s")
    # A child process: on a build that does not end, the test fails by the
    # timeout instead of hanging the suite.
    try:
        out = subprocess.run([sys.executable, __file__, path, str(n), str(partition_slots)],
                             capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"checkpoint of {n} colliding ids did not finish in 90 s")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["found"] == n and got["absent"] == 0 and got["row_ok"] and got["ok"]
    assert got["hash"] == _checkpoint.HASH_KEYED
    if partition_slots:
        assert got["index_partitions"] > 1


def _index_inputs(tmp_path: Any, ids: list[str]) -> str:
    """A directory holding ``ids.bin`` and ``ids_offsets.npy`` as a checkpoint build has them."""
    path = str(tmp_path / "store")
    with mmwal.Store(path, dim=DIM, durability="os") as store:
        store.add_many(ids, np.ones((len(ids), DIM), dtype=np.float32))
        info = store.checkpoint()
    src = Paths(path).checkpoint(info.id)
    dst = str(tmp_path / "build")
    os.mkdir(dst)
    for name in ("ids.bin", "ids_offsets.npy"):
        shutil.copy(os.path.join(src, name), dst)
    return dst


def test_index_build_probes_are_bounded(tmp_path: Any) -> None:
    n = 3000
    bad = _checkpoint.build_index(_index_inputs(tmp_path / "a", colliding_ids(n)), n)
    assert bad.key is not None  # CRC-32 gave up within its budget; a keyed hash took over
    budget = _checkpoint.PROBE_BUDGET * n + 64
    assert bad.probes <= 2 * budget + 2, "near-linear: one failed budget, then one success"
    ordinary = [f"doc-{k}" for k in range(n)]
    good = _checkpoint.build_index(_index_inputs(tmp_path / "b", ordinary), n)
    assert good.key is None and good.probes <= 2 * n  # CRC-32 as before: same bytes on disk



def _descriptor_version(path: str, ckpt_id: int) -> int:
    with open(os.path.join(Paths(path).checkpoint(ckpt_id), "DESCRIPTOR"), "rb") as f:
        return int(F.MANIFEST_HEADER.unpack(f.read(F.MANIFEST_HEADER.size))[1])


def test_keyed_index_is_refused_by_a_version_1_reader(tmp_path: Any, monkeypatch: Any) -> None:
    ordinary, crafted = str(tmp_path / "o"), str(tmp_path / "c")
    for path, ids in ((ordinary, [f"doc-{k}" for k in range(500)]), (crafted, colliding_ids(3000))):
        with mmwal.Store(path, dim=DIM, durability="os") as store:
            store.add_many(ids, np.ones((len(ids), DIM), dtype=np.float32))
            store.checkpoint()
    assert _descriptor_version(ordinary, 1) == 1  # ordinary ids: version-1 bytes, as before
    assert _descriptor_version(crafted, 1) == F.DESCRIPTOR_KEYED_VERSION
    # A reader that knows only version 1 refuses the keyed index rather than
    # looking ids up with CRC-32 and missing them.
    monkeypatch.setattr(F, "DESCRIPTOR_KEYED_VERSION", 1)
    with pytest.raises(FormatVersionError, match="upgrade"):
        mmwal.Reader(crafted)
    r = mmwal.Reader(ordinary)
    assert "doc-7" in r
    r.close()


if __name__ == "__main__":  # the child of test_checkpoint_over_colliding_ids_ends
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
