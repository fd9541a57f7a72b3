"""The expected-state journal: what each writer attempted and what was acknowledged.

Modelled on RocksDB's ``expected_state``: every writer process appends text
lines to its own file, ``journal/w<writer>.log``::

    S <incarnation> <durability> <pid>   a writer process started
    P <op> <n>                           op <op> (n documents) is about to be called
    A <op> <first seq>                   the call returned this seq: acknowledged
    F <op> <error>                       the call raised (nothing acknowledged)

A line ending in "~" is void (see :class:`JournalWriter`).

Each line goes out with one ``os.write`` on an ``O_APPEND`` descriptor.  A
SIGKILL cannot lose a completed ``write`` (the data is in the page cache), so
the order on disk is the order of the calls: "P" before the store call, "A"
after it returned.  The oracle reads that as

* acknowledged ("P" and "A"): the documents MUST exist, exactly once;
* pending ("P" alone, the writer died during the call): they MAY exist (all of
  them or none: a batch is atomic);
* never attempted (no "P"): they must NOT exist (a phantom).

A restarted writer continues after the highest op of its journal, so every op
number is attempted at most once and "the records of a writer appear in the
order of its calls" is well defined.  Journals live outside the store.
"""

from __future__ import annotations

import os
from array import array

__all__ = ["DURABILITIES", "JournalReader", "JournalWriter", "WriterHistory"]

DURABILITIES = ("os", "fsync", "interval")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class JournalWriter:
    """The writing end of one writer's journal (one process at a time)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.next_op = 0
        size = 0
        last = b"\n"
        try:
            with open(path, "rb") as f:
                data = f.read()
            size = len(data)
            if data:
                last = data[-1:]
            hist = WriterHistory()
            hist.feed(data)
            self.next_op = hist.attempted
        except FileNotFoundError:
            pass
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_CLOEXEC, 0o644)
        if size and last != b"\n":
            # A torn last line (not from a kill: a write of a few bytes is not cut
            # by SIGKILL; from a full disk, say) is closed with "~", which marks
            # it void: completing it could turn "A 1 45" into "A 1 4".
            os.write(self.fd, b"~\n")

    def _line(self, text: str) -> None:
        data = text.encode("ascii")
        if os.write(self.fd, data) != len(data):  # pragma: no cover - regular files
            raise OSError(f"short write to the journal {self.path}")

    def start(self, incarnation: int, durability: str) -> None:
        self._line(f"S {incarnation} {durability} {os.getpid()}\n")

    def pending(self, op: int, n: int) -> None:
        self._line(f"P {op} {n}\n")

    def ack(self, op: int, first_seq: int) -> None:
        self._line(f"A {op} {first_seq}\n")

    def failed(self, op: int, error: str) -> None:
        self._line(f"F {op} {error.replace(chr(10), ' ')[:200]}\n")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class WriterHistory:
    """What one journal says, in compact arrays indexed by op number.

    ``count[k]`` documents of op ``k`` (0: never attempted); ``ack[k]`` its first
    seq (-1: not acknowledged); ``durability[k]`` an index into
    :data:`DURABILITIES`; ``failed`` the ops whose call raised.  ``anomalies``
    lists lines that break the journal's own rules (a checker bug or a
    scribbled file - reported, never ignored).
    """

    def __init__(self) -> None:
        self.count = array("l")
        self.ack = array("q")
        self.durability = bytearray()
        self.failed: set[int] = set()
        self.starts = 0
        self.torn_lines = 0
        self.acked_end = 0  # the highest seq of any acknowledged op
        self.anomalies: list[str] = []
        self._dur = 0
        self._rest = b""

    @property
    def attempted(self) -> int:
        """One more than the highest op number attempted."""
        return len(self.count)

    def feed(self, data: bytes) -> None:
        """Parse new bytes; an unterminated last line waits for the next call."""
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        for raw in data[:cut].split(b"\n"):
            if raw:
                self._parse(raw)

    def _parse(self, raw: bytes) -> None:
        if raw.endswith(b"~"):
            self.torn_lines += 1  # voided by the writer's next incarnation
            return
        parts = raw.split(b" ", 2)
        tag = parts[0]
        try:
            if tag == b"P":
                k, n = int(parts[1]), int(parts[2])
                if k != len(self.count):
                    self.anomalies.append(f"pending op {k} after {len(self.count)} ops")
                while len(self.count) <= k:
                    self.count.append(0)
                    self.ack.append(-1)
                    self.durability.append(self._dur)
                self.count[k] = n
                self.durability[k] = self._dur
            elif tag == b"A":
                k, s = int(parts[1]), int(parts[2])
                if not 0 <= k < len(self.count) or self.count[k] == 0:
                    self.anomalies.append(f"acknowledgement of op {k}, never pending")
                elif self.ack[k] >= 0:
                    self.anomalies.append(f"op {k} acknowledged twice")
                else:
                    self.ack[k] = s
                    self.acked_end = max(self.acked_end, s + self.count[k] - 1)
            elif tag == b"F":
                self.failed.add(int(parts[1]))
            elif tag == b"S":
                self.starts += 1
                mode = parts[2].split(b" ")[0].decode("ascii")
                self._dur = DURABILITIES.index(mode) if mode in DURABILITIES else 0
            else:
                self.anomalies.append(f"unknown journal line {raw[:40]!r}")
        except (IndexError, ValueError):
            self.anomalies.append(f"unreadable journal line {raw[:40]!r}")


class JournalReader:
    """Follows one journal file incrementally (readers, the auditor, the verifier)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.history = WriterHistory()

    def poll(self) -> WriterHistory:
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return self.history
        try:
            while True:
                data = os.pread(fd, 1 << 20, self.offset)
                if not data:
                    break
                self.offset += len(data)
                self.history.feed(data)
        finally:
            os.close(fd)
        return self.history
