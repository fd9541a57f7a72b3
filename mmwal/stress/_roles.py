"""The roles of a stress run, each one a real process the killer may SIGKILL at any moment.

* writer ``w``: calls ``add``/``add_many`` for ops ``k, k+1, ...`` of the seeded
  workload, journaling "pending" before and "acknowledged" after each call;
  its durability rotates with every restart when ``--durability mixed``;
* reader ``i``: an :class:`mmwal.Reader` refreshed in a loop, checked after
  every refresh by :class:`~mmwal.stress._oracle.VisibleState`;
* checkpointer: ``Store.checkpoint()`` every ``--checkpoint-interval`` seconds,
  with ``max_fragments`` small and ``auto_compact`` and ``keep_checkpoints``
  drawn per incarnation;
* compactor: ``Store.compact()`` with random arguments every
  ``--compact-interval`` seconds;
* churner ``c``: upserts and removes over a small key space (replaced and
  removed rows: deletion vectors, fragments that die, compactions that drop
  rows), journaled like a writer.

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

import numpy as np

import mmwal

from . import _scenarios
from ._journal import JournalReader, JournalWriter
from ._oracle import ChurnLedger, ChurnView, VisibleState, snapshot_churn
from ._settings import Settings
from ._status import (
    AUTO_COMPACT,
    CHECKED,
    CHECKPOINTS,
    CHURN_CHECKED,
    CKPT_MICROS,
    CKPT_SEQ,
    COMPACT_MICROS,
    COMPACT_PUBLISHED,
    COMPACTIONS,
    DOCS,
    FRAGMENTS,
    FULL_CHECKS,
    INJECTED,
    KEEP,
    LAST_SEQ,
    MAX_SEQ,
    MERGED,
    OPS,
    PHASE,
    PHASE_SINCE,
    PID,
    REFRESHES,
    ROWS_COPIED,
    ROWS_DROPPED,
    SNAP_CHECKS,
    VIOLATIONS,
    Board,
    Phase,
)
from ._workload import OpPlan, churn_doc, churn_op, doc_id, op_plan

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
#: A reader keeps an old snapshot this many seconds (checkpoints, compactions and
#: retirements run meanwhile), then checks it still shows what it showed.
HOLD_SNAPSHOT = 3.0
#: Churn keys a reader checks after each refresh (all of them at each full scan).
CHURN_SAMPLE = 48


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

    def churn_journal(self, churner: int) -> str:
        return os.path.join(self.journals, f"c{churner}.log")

    def violation_log(self, role: str) -> str:
        return os.path.join(self.violations, f"{role}.jsonl")


def store_config(s: Settings, rng: random.Random | None = None) -> mmwal.Config:
    """The Config of a role; ``rng`` (checkpointer, compactor) draws keep and auto_compact."""
    keep = s.keep_checkpoints if rng is None else s.keep_of(rng)
    auto = True if rng is None else rng.random() < 0.5
    return mmwal.Config(segment_bytes=s.segment_bytes, keep_checkpoints=keep,
                        lock_timeout=120.0, max_fragments=s.max_fragments,
                        auto_compact=auto, sync_every_records=64, sync_every_ms=20.0)


@dataclass
class RoleSpec:
    """What a role process needs to start (picklable, for the spawn start method)."""

    kind: str  # one of ROLE_KINDS
    index: int
    slot: int
    roles: int  # rows of the status board
    incarnation: int
    root: str
    settings: Settings
    parent: int

    @property
    def name(self) -> str:
        return role_name(self.kind, self.index)


def role_name(kind: str, index: int) -> str:
    """"checkpointer", "compactor" (one of each), or "writer-0", "churner-1", ..."""
    return kind if kind in ("checkpointer", "compactor") else f"{kind}-{index}"


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
        elif spec.kind == "compactor":
            _compactor(spec, paths, board, vlog)
        elif spec.kind == "churner":
            _churner(spec, paths, board, vlog)
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


def _idle(spec: RoleSpec, board: Board, seconds: float) -> bool:
    """Wait ``seconds`` in short naps while the role should run; whether it still should."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _alive(spec, board):
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return _alive(spec, board)


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
            next_t = _pace(next_t, period)
    wr.store.close()
    wr.journal.close()


def _pace(next_t: float, period: float) -> float:
    """Sleep until the next operation's time (``next_t + period``); the time it was.

    A role that fell more than a second behind starts again from now instead
    of bursting to catch up.
    """
    next_t += period
    delay = next_t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    elif delay < -1.0:
        next_t = time.monotonic()
    return next_t


# ============================================================================ checkpointer
def _maintainer(spec: RoleSpec, paths: RunPaths, board: Board, salt: int,
                ) -> tuple[Any, random.Random, mmwal.Store]:
    """A checkpointer's or compactor's board row, its random stream and its open Store.

    The row shows the store's retention and automatic compaction, and the
    phase moves from OPEN to IDLE once the Store is open.
    """
    s = spec.settings
    row = board.row(spec.slot)
    rng = random.Random(s.seed * salt + spec.incarnation)
    cfg = store_config(s, rng)
    row[KEEP] = cfg.keep_checkpoints
    row[AUTO_COMPACT] = int(cfg.auto_compact)
    _set_phase(row, Phase.OPEN)
    st = mmwal.Store(paths.store, config=cfg, durability="os")
    _set_phase(row, Phase.IDLE)
    return row, rng, st


def _checkpointer(spec: RoleSpec, paths: RunPaths, board: Board) -> None:
    s = spec.settings
    row, rng, st = _maintainer(spec, paths, board, 31)
    with st:
        while _idle(spec, board, s.checkpoint_interval * rng.uniform(0.5, 1.5)):
            _set_phase(row, Phase.CHECKPOINT)
            t0 = time.perf_counter()
            info = st.checkpoint()
            dt = time.perf_counter() - t0
            _set_phase(row, Phase.IDLE)
            # Duration and seq first, the count last: the coordinator reads the first two
            # when it sees the count move.
            row[CKPT_MICROS] = int(dt * 1e6)
            row[CKPT_SEQ] = int(info.seq)
            row[FRAGMENTS] = int(info.fragments)
            if info.fragments_merged:  # an automatic compaction ran inside the checkpoint
                row[COMPACT_PUBLISHED] += 1
                row[MERGED] += int(info.fragments_merged)
            row[CHECKPOINTS] += 1


# ============================================================================ compactor
def compact_args(rng: random.Random) -> dict[str, Any]:
    """Random arguments of one ``Store.compact()`` call (one time in four: none, a full one)."""
    pick = rng.randrange(4)
    args: dict[str, Any] = {}
    if pick in (1, 3):
        args["target_fragments"] = rng.randint(1, 4)
    if pick in (2, 3):
        args["min_dead_fraction"] = round(rng.uniform(0.05, 0.5), 3)
    return args


def _compactor(spec: RoleSpec, paths: RunPaths, board: Board, vlog: ViolationLog) -> None:
    s = spec.settings
    row, rng, st = _maintainer(spec, paths, board, 37)
    with st:
        while _idle(spec, board, s.compact_interval * rng.uniform(0.5, 1.5)):
            args = compact_args(rng)
            _set_phase(row, Phase.COMPACT)
            t0 = time.perf_counter()
            info = st.compact(**args)
            dt = time.perf_counter() - t0
            _set_phase(row, Phase.IDLE)
            if info.fragments > info.fragments_before or (
                    not args and info.fragments_merged and info.fragments > 1):
                vlog("consistency", f"compactor: compact({args}) went from "
                     f"{info.fragments_before} to {info.fragments} fragments", 1)
            row[COMPACT_MICROS] = int(dt * 1e6)
            row[FRAGMENTS] = int(info.fragments)
            if info.fragments_merged:
                row[MERGED] += int(info.fragments_merged)
                row[ROWS_COPIED] += int(info.rows_copied)
                row[ROWS_DROPPED] += int(info.rows_dropped)
                row[COMPACT_PUBLISHED] += 1
            row[COMPACTIONS] += 1  # last: the coordinator reads the rest when it moves
            if s.verify_compactions and info.fragments_merged:
                # verify() right after a publish, beside writers, checkpoints and
                # readers: a compaction that left a version naming a missing or
                # damaged fragment or deletion vector shows here.
                _set_phase(row, Phase.CHECK)
                report = mmwal.verify(paths.store)
                _set_phase(row, Phase.IDLE)
                for problem in report.problems[:5]:
                    vlog("verify", f"compactor: verify() after compact({args}): {problem}", 1)


# ============================================================================ churners
def _churner(spec: RoleSpec, paths: RunPaths, board: Board, vlog: ViolationLog) -> None:
    s = spec.settings
    c = spec.index
    row = board.row(spec.slot)
    journal = JournalWriter(paths.churn_journal(c))
    durability = s.durability_of(s.writers + c, spec.incarnation)
    _set_phase(row, Phase.OPEN)
    st = mmwal.Store(paths.store, durability=durability, config=store_config(s))
    _set_phase(row, Phase.IDLE)
    journal.start(spec.incarnation, durability)
    k = journal.next_op
    last = 0
    period = 1.0 / s.churn_rate if s.churn_rate else 0.0
    next_t = time.monotonic()
    try:
        while _alive(spec, board):
            op = churn_op(s.seed, c, k, s.churn_keys)
            journal.pending(k, 1)
            _set_phase(row, Phase.APPEND)
            if op.remove:
                seq = st.remove(op.id)
            else:
                vec, content, meta = churn_doc(s.seed, c, k, op.key, s.dim)
                seq = st.add(op.id, vec, content, meta)
            _set_phase(row, Phase.IDLE)
            if seq <= last:
                vlog("order", f"churner {c}: op {k} was given seq {seq} after an earlier call "
                     f"of this process was given {last}", 1)
            last = seq
            journal.ack(k, seq)
            row[OPS] += 1
            row[LAST_SEQ] = seq
            k += 1
            if period:
                next_t = _pace(next_t, period)
    finally:
        st.close()
        journal.close()


# ============================================================================ readers
class Churn:
    """A reader's checks of the churn keys, and of an old snapshot it holds.

    The snapshot is the other half of the retirement story: a Reader keeps
    the files of the version it mapped, so a snapshot taken
    :data:`HOLD_SNAPSHOT` seconds ago - before checkpoints and compactions
    published newer versions and retired its fragments and deletion vectors -
    must still show exactly what it showed then, every page of it.
    """

    def __init__(self, spec: RoleSpec, ledgers: list[ChurnLedger], vlog: ViolationLog,
                 row: Any) -> None:
        self.spec, self.ledgers, self.vlog, self.row = spec, ledgers, vlog, row
        self.views = [ChurnView(lg, vlog) for lg in ledgers]
        self.rng = random.Random(spec.settings.seed ^ (spec.index + 1) * 0x9E37)
        self.held: tuple[Any, list[int], int, float, int] | None = None

    def acked(self) -> None:
        """Right after the journals were polled, before a refresh."""
        for lg in self.ledgers:
            lg.note_acked()

    def check(self, r: mmwal.Reader, *, full: bool) -> None:
        if not self.ledgers:
            return
        snap = r.snapshot()  # one consistent view for every key
        n = 0
        for lg, view in zip(self.ledgers, self.views):
            lg.journal.poll()  # after the refresh: any op that may be visible is planned
            lg.extend()
            keys = range(lg.keys) if full or lg.keys <= CHURN_SAMPLE \
                else self.rng.sample(range(lg.keys), CHURN_SAMPLE)
            n += view.check(snap.get, keys, f"reader {self.spec.index}")
        self.row[CHURN_CHECKED] += n

    def hold(self, r: mmwal.Reader) -> None:
        now = time.monotonic()
        if self.held is None:
            snap = r.snapshot()
            self.held = (snap, snapshot_churn(snap.get, self.ledgers), len(snap), now,
                         snap.seq)
            return
        snap, values, n, t0, seq = self.held
        if now - t0 < HOLD_SNAPSHOT:
            return
        self.held = None
        where = (f"reader {self.spec.index}: a snapshot at seq {seq} held {now - t0:.1f} s "
                 f"(the Reader is at seq {r.seq} now)")
        # Touch every mapped page of the old version: a retired file must still be
        # readable through the mapping (a truncated one would be SIGBUS).
        emb = np.asarray(snap.embeddings)
        ids = snap.ids
        if len(snap) != n or emb.shape != (n, self.spec.settings.dim) or len(ids) != n:
            self.vlog("consistency", f"{where}: now shows {len(snap)} documents, "
                      f"{emb.shape[0]} rows and {len(ids)} ids; it showed {n}", 1)
        elif n and not np.isfinite(emb).all():
            self.vlog("data", f"{where}: non-finite values in its embeddings", 1)
        elif n:
            i = self.rng.randrange(n)
            hits = snap.search(emb[i], k=1, metric="l2")
            if not hits or hits[0].id != ids[i]:
                self.vlog("consistency", f"{where}: search for the exact vector of "
                          f"{ids[i]} returned {hits[:1]}", 1)
        got = snapshot_churn(snap.get, self.ledgers)
        if got != values:
            diff = [i for i, (a, b) in enumerate(zip(got, values)) if a != b]
            self.vlog("consistency", f"{where}: {len(diff)} churn keys changed under it, e.g. "
                      f"key #{diff[0] if diff else '?'}: op {values[diff[0]] if diff else '?'} "
                      f"then, {got[diff[0]] if diff else '?'} now", 1)
        self.row[SNAP_CHECKS] += 1


def _acked_end(journals: list[JournalReader]) -> int:
    """The highest seq acknowledged to any writer so far (journals read now)."""
    return max((jr.poll().acked_end for jr in journals), default=0)


def _reader(spec: RoleSpec, paths: RunPaths, board: Board, vlog: ViolationLog) -> None:
    s = spec.settings
    row = board.row(spec.slot)
    journals = [JournalReader(paths.journal(w)) for w in range(s.writers)]
    state = VisibleState(s.seed, s.dim, journals, vlog)
    ledgers = [ChurnLedger(s.seed, s.dim, c, s.churn_keys, JournalReader(paths.churn_journal(c)))
               for c in range(s.churners)]
    churn = Churn(spec, ledgers, vlog, row)
    everyone = journals + [lg.journal for lg in ledgers]
    _set_phase(row, Phase.OPEN)
    acked = _acked_end(everyone)
    churn.acked()
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
        churn.check(r, full=True)
        next_full = time.monotonic() + FULL_EVERY
        verifying = s.verify_interval > 0 and spec.index == 0
        next_verify = time.monotonic() + s.verify_interval
        row[LAST_SEQ] = r.seq
        row[MAX_SEQ] = max(int(row[MAX_SEQ]), r.seq)
        while _alive(spec, board):
            seq0 = r.seq
            acked = _acked_end(everyone)  # before the refresh: it must show all of these
            churn.acked()
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
                churn.check(r, full=True)
                row[FULL_CHECKS] += 1
                full_cost = time.perf_counter() - t0
                next_full = time.monotonic() + max(FULL_EVERY, FULL_SPACING * full_cost)
            else:
                row[CHECKED] += state.incremental(r)
                churn.check(r, full=False)
            churn.hold(r)
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
