#!/usr/bin/env python
"""Recovery walk-through: kill -9 a writer, see what survived, then repair real damage.

1. A writer process appends documents with ``durability="fsync"`` and, after
   each ``add`` returns (= acknowledged), notes the id in a journal.
2. We ``kill -9`` it in mid-stream.
3. ``mmwal.verify``: the store is clean - at most a torn, *unacknowledged*
   frame at the end, which is a note, not a problem.
4. A Reader sees every acknowledged document (and perhaps the one being written
   when the kill came: written, not yet acknowledged).
5. A new writer carries on: its first seq follows the last one in the log; the
   torn bytes are simply overwritten.  No recovery step was needed.
6. Now real damage, as a failing disk would do it: a byte flipped in the
   middle of the log.  ``verify`` reports it with file and offset; a strict
   Reader refuses to guess; ``Reader(recovery="skip-bad")`` reads around it.
7. ``mmwal repair --mode skip-bad`` explains what it would drop, and with
   ``--yes`` repairs (keeping a backup of every file it changes).  ``verify``
   is clean again and writers carry on.

Run it::

    python examples/recovery_after_kill.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from _embed import DIM, embed

import mmwal

# Small log segments, so that the log has several (one is damaged in step 6).
CONFIG = mmwal.Config(segment_bytes=64 << 10)


def writer(store_path: str, journal_path: str) -> None:
    """Append forever (until killed); journal each acknowledged id."""
    with mmwal.Store(store_path, durability="fsync", config=CONFIG) as store, \
            open(journal_path, "a", encoding="utf-8") as journal:
        i = 0
        while True:
            text = f"sensor reading {i}: temperature {20 + i % 7} humidity {40 + i % 11}"
            store.add(f"reading-{i}", embed([text])[0], content=text, metadata={"i": i})
            journal.write(f"reading-{i}\n")  # written only after add() returned
            journal.flush()
            i += 1


def step(n: int, text: str) -> None:
    print(f"\n{n}. {text}")


def mmwal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The mmwal command line, as you would type it in a shell."""
    cmd = [sys.executable, "-m", "mmwal", *args]
    print("   $ mmwal " + " ".join(args))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    for line in (p.stdout + p.stderr).rstrip().splitlines():
        print(f"   | {line}")
    print(f"   (exit code {p.returncode})")
    return p


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="mmwal-recovery-")
    store_path = os.path.join(tmp, "store")
    journal_path = os.path.join(tmp, "journal.txt")
    try:
        with mmwal.Store(store_path, dim=DIM, config=CONFIG):
            pass

        step(1, "a writer process appends with durability='fsync' ...")
        proc = mp.Process(target=writer, args=(store_path, journal_path))
        proc.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(journal_path) and os.path.getsize(journal_path) > 6_000:
                break
            time.sleep(0.02)

        step(2, "... and is killed with SIGKILL in mid-stream")
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        with open(journal_path, encoding="utf-8") as f:
            acked = [line.strip() for line in f if line.strip()]
        print(f"   killed (exit code {proc.exitcode}) after {len(acked):,} acknowledged adds")

        step(3, "mmwal.verify(store)")
        report = mmwal.verify(store_path)
        print(f"   ok={report.ok}: {report.records:,} records in {report.segments} log segments")
        for note in report.notes:
            print(f"   note: {note}")
        assert report.ok

        step(4, "a Reader sees every acknowledged document")
        with mmwal.Reader(store_path) as reader:
            missing = [i for i in acked if i not in reader]
            print(f"   {len(reader):,} documents, seq {reader.seq:,}; acknowledged but "
                  f"missing: {len(missing)}")
            assert not missing
            extra = len(reader) - len(acked)
            if extra:
                print(f"   ({extra} more: written when the kill came, never acknowledged)")
            last_seq = reader.seq

        step(5, "a new writer carries on where the log ends")
        with mmwal.Store(store_path) as store:
            seq = store.add("after-the-kill", embed(["after the kill"])[0], content="hello")
            print(f"   its first add got seq {seq:,} (the log ended at {last_seq:,})")
            assert seq == last_seq + 1

        step(6, "real damage: one byte flipped inside the log (what a bad disk does)")
        segments = sorted(os.listdir(os.path.join(store_path, "wal")))
        victim = os.path.join(store_path, "wal", segments[len(segments) // 2])
        # 64-byte segment header, 32-byte frame header: offset 100 is inside the
        # payload of the segment's first frame, which has valid frames after it.
        with open(victim, "r+b") as f:
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0x55]))
        print(f"   flipped a byte at offset 100 of wal/{os.path.basename(victim)}")
        report = mmwal.verify(store_path)
        for p in report.problems:
            print(f"   verify: {p}")
        assert not report.ok
        try:
            mmwal.Reader(store_path)
        except mmwal.CorruptionError as exc:
            print(f"   Reader(store) refuses: CorruptionError at {os.path.basename(exc.path)}"
                  f" offset {exc.offset}")
        with mmwal.Reader(store_path, recovery="skip-bad") as reader:
            print(f"   Reader(store, recovery='skip-bad') reads around it: "
                  f"{len(reader):,} documents")

        step(7, "mmwal repair: explain first, then repair with --yes")
        assert mmwal_cli("repair", store_path, "--mode", "skip-bad").returncode == 1
        assert mmwal_cli("repair", store_path, "--mode", "skip-bad", "--yes").returncode == 0
        with mmwal.Store(store_path) as store:
            seq = store.add("after-the-repair", embed(["repaired"])[0])
        with mmwal.Reader(store_path) as reader:
            print(f"   after the repair: {len(reader):,} documents; the next add got seq "
                  f"{seq:,}, and verify says ok={mmwal.verify(store_path).ok}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
