"""The roles of a stress run, each one a real process the killer may SIGKILL at any moment.

* writer ``w``: calls ``add``/``add_many`` for ops ``k, k+1, ...`` of the seeded
  workload, journaling "pending" before and "acknowledged" after each call;
  its durability rotates with every restart when ``--durability mixed``;
* reader ``i``: an :class:`mmwal.Reader` refreshed in a loop, checked after
  every refresh by :class:`~mmwal.stress._oracle.VisibleState`;
* checkpointer: ``Store.checkpoint()`` every ``--checkpoint-interval`` seconds.

A role never trusts its own survival: everything it knows that matters is in
its journal (writers) or re-derived from the store (readers).  Findings go to
``violations/<role>.jsonl``, one JSON line per ``os.write``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import mmwal

from . import _scenarios
from ._journal import JournalReader, JournalWriter
from ._oracle import VisibleState
from ._settings import Settings
from ._status import (
    CHECKED,
    CHECKPOINTS,
    CKPT_MICROS,
    CKPT_SEQ,
    DOCS,
    FULL_CHECKS,
    INJECTED,
    LAST_SEQ,
    MAX_SEQ,
    OPS,
    PHASE,
    PHASE_SINCE,
    PID,
    REFRESHES,
    VIOLATIONS,
    Board,
    Phase,
)
from ._workload import OpPlan, doc_id, op_plan

__all__ = ["RoleSpec", "RunPaths", "role_main", "store_config"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Writer 0 plants its injected violation at this op (early, so short runs have it).
INJECT_AT = 40
#: An op number no writer reaches in a test run: the phantom's.
PHANTOM_OFFSET = 1_000_000
#: Violations a role writes out in full; later ones are only counted.
MAX_LOGGED = 200
#: A reader's full scan runs at most every FULL_EVERY seconds and at most
#: 1 / FULL_SPACING of its time; incremental checks run after every refresh.
FULL_EVERY = 2.0
FULL_SPACING = 8.0


class RunPaths:
    """Where a run keeps its store, journals, violation logs and status board."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.store = os.path.join(root, "store")
        self.journals = os.path.join(root, "journal")
        self.violations = os.path.join(root, "violations")
        self.board = os.path.join(root, "status.bin")

    def journal(self, writer: int) -> str:
        return os.path.join(self.journals, f"w{writer}.log")

    def violation_log(self, role: str) -> str:
        return os.path.join(self.violations, f"{role}.jsonl")


def store_config(s: Settings) -> mmwal.Config:
    return mmwal.Config(segment_bytes=s.segment_bytes, keep_checkpoints=s.keep_checkpoints,
                        lock_timeout=120.0,
                        sync_every_records=64, sync_every_ms=20.0)


@dataclass
class RoleSpec:
    """What a role process needs to start (picklable, for the spawn start method)."""

    kind: str  # "writer" | "reader" | "checkpointer"
    index: int
    slot: int
    roles: int  # rows of the status board
    incarnation: int
    root: str
    settings: Settings
    parent: int

    @property
    def name(self) -> str:
        return "checkpointer" if self.kind == "checkpointer" else f"{self.kind}-{self.index}"


class ViolationLog:
    """``report(kind, detail, count)`` for a role: a JSON line per finding."""

    def __init__(self, path: str, board: Board, slot: int, role: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_CLOEXEC, 0o644)
        self.board, self.slot, self.role = board, slot, role
        self.n = 0
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, kind: str, detail: str, count: int = 1) -> None:
        if (kind, detail) in self._seen:
            return  # the same finding on every refresh is one finding
        self._seen.add((kind, detail))
        self.board.add(self.slot, VIOLATIONS)
        self.n += 1
        if self.n <= MAX_LOGGED:
            line = json.dumps({"kind": kind, "source": self.role, "detail": detail,
                               "count": int(count), "time": time.time()}) + "\n"
            os.write(self.fd, line.encode("utf-8"))


def role_main(spec: RoleSpec) -> None:
    """Entry point of every role process."""
    # Ctrl-C reaches the whole process group: only the coordinator handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    paths = RunPaths(spec.root)
    board = Board(paths.board, spec.roles)
    board.set(spec.slot, PID, os.getpid())
    vlog = ViolationLog(paths.violation_log(spec.name), board, spec.slot, spec.name)
    scenario = _scenarios.get(spec.settings.scenario)
    try:
        scenario.role_setup(spec.name, spec.settings)
        if spec.kind == "writer":
            _writer(spec, paths, board, vlog, scenario)
        elif spec.kind == "reader":
            _reader(spec, paths, board, vlog)
        else:
            _checkpointer(spec, paths, board)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        vlog("crash", f"{spec.name} (incarnation {spec.incarnation}): {type(exc).__name__}: "
             f"{exc}\n{traceback.format_exc(limit=8)}", 1)
        sys.exit(3)
    finally:
        board.set(spec.slot, PHASE, Phase.IDLE)


def _alive(spec: RoleSpec, board: Board) -> bool:
    return not board.stop and os.getppid() == spec.parent


def _set_phase(row: Any, phase: int) -> None:
    row[PHASE_SINCE] = time.monotonic_ns()
    row[PHASE] = phase


# ============================================================================ writers
class _Writer:
    def __init__(self, spec: RoleSpec, paths: RunPaths, board: Board, vlog: ViolationLog,
                 scenario: _scenarios.Scenario) -> None:
        self.spec, self.paths, self.vlog, self.scenario = spec, paths, vlog, scenario
        self.s = spec.settings
        self.w = spec.index
        self.row = board.row(spec.slot)
        self.journal = JournalWriter(paths.journal(self.w))
        self.durability = self.s.durability_of(self.w, spec.incarnation)
        self.last_first = 0
        self.store = self._open()
        self.journal.start(spec.incarnation, self.durability)

    def _open(self) -> mmwal.Store:
        _set_phase(self.row, Phase.OPEN)
        st = mmwal.Store(self.paths.store, durability=self.durability,
                         config=store_config(self.s))
        _set_phase(self.row, Phase.IDLE)
        return st

    def plan(self, k: int) -> tuple[OpPlan, Any, list[str], list[Any]]:
        p = op_plan(self.s.seed, self.w, k, self.s.batch_size, self.s.many_percent)
        return p, p.vectors(self.s.seed, self.s.dim), p.contents(self.s.seed), \
            p.metadatas(self.s.seed)

    def write(self, p: OpPlan, vecs: Any, contents: list[str], metas: list[Any],
              ids: list[str] | None = None) -> int:
        """One store call; the caller journals around it.  Returns the first seq."""
        ids = ids or p.ids()
        row = self.row
        _set_phase(row, Phase.APPEND)
        try:
            if p.many:
                got = self.store.add_many(ids, vecs, contents, metas)
                if len(got) != p.n:
                    self.vlog("consistency", f"writer {self.w}: add_many of {p.n} documents "
                              f"returned {got!r}", 1)
                first = got.start
            else:
                first = self.store.add(ids[0], vecs[0], contents[0], metas[0])
        finally:
            _set_phase(row, Phase.IDLE)
        if first <= self.last_first:
            self.vlog("order", f"writer {self.w}: op {p.k} was given seq {first} after an "
                      f"earlier call of this process was given {self.last_first}", 1)
        self.last_first = first
        return int(first)

    def acked(self, p: OpPlan, first: int) -> None:
        self.journal.ack(p.k, first)
        row = self.row
        row[OPS] += 1
        row[DOCS] += p.n
        row[LAST_SEQ] = first + p.n - 1

    def op(self, k: int) -> None:
        p, vecs, contents, metas = self.plan(k)
        self.journal.pending(k, p.n)
        try:
            first = self.write(p, vecs, contents, metas)
        except (mmwal.MmwalError, OSError) as exc:
            self.journal.failed(k, f"{type(exc).__name__}: {exc}")
            if not self.scenario.tolerated(self.spec.name, exc):
                raise
            try:
                self.store.close()
            except (mmwal.MmwalError, OSError):
                pass
            self.store = self._open()
            return
        self.acked(p, first)

    def inject(self, k: int, kind: str) -> int:
        """Plant one violation the oracle must catch; return the next op number."""
        if kind == "reorder":
            # Journal k then k+1, write k+1 then k: acknowledged out of call order.
            a, b = self.plan(k), self.plan(k + 1)
            self.journal.pending(k, a[0].n)
            self.journal.pending(k + 1, b[0].n)
            sb = self.write(*b)
            sa = self.write(*a)
            self.acked(a[0], sa)
            self.acked(b[0], sb)
            return k + 2
        if kind == "duplicate":
            a = self.plan(k)
            self.journal.pending(k, a[0].n)
            first = self.write(*a)
            self.write(*a)  # the same op again, not journaled
            self.acked(a[0], first)
            return k + 1
        # "phantom": a document of an op no journal will ever mention.
        ghost = op_plan(self.s.seed, self.w, k + PHANTOM_OFFSET, 1, 0)
        self.write(ghost, ghost.vectors(self.s.seed, self.s.dim), ghost.contents(self.s.seed),
                   ghost.metadatas(self.s.seed), [doc_id(self.w, k + PHANTOM_OFFSET, 0)])
        return k


def _writer(spec: RoleSpec, paths: RunPaths, board: Board, vlog: ViolationLog,
            scenario: _scenarios.Scenario) -> None:
    wr = _Writer(spec, paths, board, vlog, scenario)
    s = spec.settings
    k = wr.journal.next_op
    inject = s.inject if spec.index == 0 and s.inject in ("reorder", "duplicate",
                                                          "phantom") else None
    period = 1.0 / s.max_rate if s.max_rate else 0.0
    next_t = time.monotonic()
    while _alive(spec, board):
        if inject and k >= INJECT_AT and not board.get_global(INJECTED):
            k = wr.inject(k, inject)
            board.set_global(INJECTED, 1)
            continue
        wr.op(k)
        k += 1
        if period:
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_t = time.monotonic()  # fell behind: do not burst to catch up
    wr.store.close()
    wr.journal.close()


# ============================================================================ checkpointer
def _checkpointer(spec: RoleSpec, paths: RunPaths, board: Board) -> None:
    s = spec.settings
    row = board.row(spec.slot)
    rng = random.Random(s.seed * 31 + spec.incarnation)
    _set_phase(row, Phase.OPEN)
    with mmwal.Store(paths.store, config=store_config(s), durability="os") as st:
        _set_phase(row, Phase.IDLE)
        while _alive(spec, board):
            deadline = time.monotonic() + s.checkpoint_interval * rng.uniform(0.5, 1.5)
            while time.monotonic() < deadline and _alive(spec, board):
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if not _alive(spec, board):
                break
            _set_phase(row, Phase.CHECKPOINT)
            t0 = time.perf_counter()
            info = st.checkpoint()
            dt = time.perf_counter() - t0
            _set_phase(row, Phase.IDLE)
            # Duration and seq first, the count last: the coordinator reads the first two
            # when it sees the count move.
            row[CKPT_MICROS] = int(dt * 1e6)
            row[CKPT_SEQ] = int(info.seq)
            row[CHECKPOINTS] += 1


# ============================================================================ readers
def _acked_end(journals: list[JournalReader]) -> int:
    """The highest seq acknowledged to any writer so far (journals read now)."""
    return max((jr.poll().acked_end for jr in journals), default=0)


def _reader(spec: RoleSpec, paths: RunPaths, board: Board, vlog: ViolationLog) -> None:
    s = spec.settings
    row = board.row(spec.slot)
    journals = [JournalReader(paths.journal(w)) for w in range(s.writers)]
    state = VisibleState(s.seed, s.dim, journals, vlog)
    _set_phase(row, Phase.OPEN)
    acked = _acked_end(journals)
    r = mmwal.Reader(paths.store)
    try:
        before = int(row[MAX_SEQ])
        if r.seq < before:
            vlog("seq-regress", f"reader {spec.index}: a new Reader opened at seq {r.seq}; an "
                 f"earlier incarnation had seen seq {before}", 1)
        if r.seq < acked:
            vlog("stale-read", f"reader {spec.index}: a new Reader opened at seq {r.seq} "
                 f"although seq {acked} was acknowledged before it was opened", 1)
        _set_phase(row, Phase.CHECK)
        for jr in journals:
            jr.poll()
        row[CHECKED] += state.start(r)  # cheap: a restart must not cost a full scan
        next_full = time.monotonic() + FULL_EVERY
        verifying = s.verify_interval > 0 and spec.index == 0
        next_verify = time.monotonic() + s.verify_interval
        row[LAST_SEQ] = r.seq
        row[MAX_SEQ] = max(int(row[MAX_SEQ]), r.seq)
        while _alive(spec, board):
            seq0 = r.seq
            acked = _acked_end(journals)  # before the refresh: it must show all of these
            _set_phase(row, Phase.REFRESH)
            try:
                r.refresh()
            except mmwal.MmwalError as exc:
                _set_phase(row, Phase.IDLE)
                vlog("crash", f"reader {spec.index}: refresh() raised {type(exc).__name__}: "
                     f"{exc}", 1)
                r.close()
                r = mmwal.Reader(paths.store)
                state = VisibleState(s.seed, s.dim, journals, vlog)
                state.start(r)
            _set_phase(row, Phase.CHECK)
            if r.seq < seq0:
                vlog("seq-regress", f"reader {spec.index}: refresh() moved seq from {seq0} to "
                     f"{r.seq}", 1)
            elif r.seq < acked:
                vlog("stale-read", f"reader {spec.index}: refresh() stopped at seq {r.seq} "
                     f"although seq {acked} was acknowledged before it was called", 1)
            row[LAST_SEQ] = r.seq
            row[MAX_SEQ] = max(int(row[MAX_SEQ]), r.seq)
            for jr in journals:
                jr.poll()  # after the refresh: every visible op is journaled by now
            if time.monotonic() >= next_full:
                t0 = time.perf_counter()
                row[CHECKED] += state.full_check(r)
                row[FULL_CHECKS] += 1
                full_cost = time.perf_counter() - t0
                next_full = time.monotonic() + max(FULL_EVERY, FULL_SPACING * full_cost)
            else:
                row[CHECKED] += state.incremental(r)
            row[REFRESHES] += 1
            if verifying and time.monotonic() >= next_verify:
                # verify() beside the retiring checkpointer: a file retired under
                # it must never be reported as damage.
                _set_phase(row, Phase.CHECK)
                report = mmwal.verify(paths.store)
                for problem in report.problems[:5]:
                    vlog("verify", f"reader {spec.index}: verify() during the run: {problem}", 1)
                next_verify = time.monotonic() + s.verify_interval
            _set_phase(row, Phase.IDLE)
            time.sleep(0.005)  # a polling query worker, not a spinning one
    finally:
        r.close()
