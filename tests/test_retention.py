"""keep_checkpoints keeps exactly the newest N checkpoints (the current one included)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mmwal


@pytest.mark.parametrize("keep", [0, 1, 2, 3, 5])
def test_keep_checkpoints_counts(tmp_path, keep):
    cfg = mmwal.Config(keep_checkpoints=keep, auto_compact=False)
    with mmwal.Store(tmp_path / "s", dim=2, durability="os", config=cfg) as s:
        for i in range(6):
            s.add(f"d{i}", np.full(2, i, dtype=np.float32))
            info = s.checkpoint()
            names = os.listdir(tmp_path / "s" / "checkpoints")
            kept = sorted(int(n[:8]) for n in names if n.endswith(".version"))
            want = max(keep, 1)
            assert kept == list(range(max(1, info.id - want + 1), info.id + 1)), (i, kept)
            # Every version lists every fragment so far: none is retired.
            assert sorted(int(n) for n in names if n.isdigit()) == list(range(1, i + 2))
    with mmwal.Reader(tmp_path / "s") as r:
        assert len(r) == 6
