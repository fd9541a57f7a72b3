"""keep_checkpoints keeps exactly the newest N checkpoints (the current one included)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mmwal


@pytest.mark.parametrize("keep", [0, 1, 2, 3, 5])
def test_keep_checkpoints_counts(tmp_path, keep):
    cfg = mmwal.Config(keep_checkpoints=keep)
    with mmwal.Store(tmp_path / "s", dim=2, durability="os", config=cfg) as s:
        for i in range(6):
            s.add(f"d{i}", np.full(2, i, dtype=np.float32))
            info = s.checkpoint()
            kept = sorted(int(n) for n in os.listdir(tmp_path / "s" / "checkpoints")
                          if n.isdigit())
            want = max(keep, 1)
            assert kept == list(range(max(1, info.id - want + 1), info.id + 1)), (i, kept)
    with mmwal.Reader(tmp_path / "s") as r:
        assert len(r) == 6
