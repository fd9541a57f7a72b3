"""The oracle: what must, may and must not be in the store, and the checks that say so.

Three checkers share it:

* :class:`VisibleState` - inside every reader process, after each ``refresh()``:
  per-writer prefix, batch atomicity, exact values, nothing vanishes, nothing
  appears out of order;
* :class:`LogAuditor` - in the coordinator, following the log with
  :func:`mmwal.replay`: every record once, in per-writer call order, at the seq
  its writer was told, with exact values;
* :func:`final_verification` - after every role stopped: the whole state
  against the journals (no acknowledged write lost, no phantom, no duplicate),
  the seqs the writers were told, ``mmwal.verify``, then once more after a final
  checkpoint.

The churners' keys (replaced and removed over and over, see
:mod:`~mmwal.stress._workload`) have their own rules, in :class:`ChurnLedger`
and :class:`ChurnView`: a key shows the value of the last acknowledged op on
it or of a later one, never an older one (no resurrection after a remove or a
replace), and is absent only when a remove explains it.

Every finding is reported as ``report(kind, detail, count)``; the kinds are
listed in :data:`KINDS`.
"""

from __future__ import annotations

import errno
import itertools
import random
import time
from array import array
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mmwal

from ..errors import StorageIOError
from ._journal import DURABILITIES, JournalReader, WriterHistory
from ._workload import (
    churn_doc,
    churn_id,
    churn_op,
    doc_content,
    doc_id,
    doc_metadata,
    parse_churn_id,
    parse_id,
    vectors,
)

__all__ = ["KINDS", "ChurnLedger", "ChurnView", "FinalResult", "LogAuditor", "Report",
           "VisibleState", "final_verification"]

Report = Callable[[str, str, int], None]

#: Every kind of violation, with what it means.
KINDS = {
    "lost": "an acknowledged document is missing at the end",
    "phantom": "a document that no writer ever attempted",
    "duplicate": "a document written twice, listed twice, or a seq handed out twice",
    "order": "a writer's records are not in the order of its calls",
    "prefix": "a reader sees an op of a writer but not an earlier acknowledged op",
    "torn-batch": "part of an add_many is visible without the rest",
    "data": "a vector, content or metadata differs from its seeded value",
    "zero-vector": "an all-zero vector",
    "vanished": "a document a reader saw disappeared",
    "seq-regress": "a reader's seq went backwards",
    "stale-read": "a Reader opened or refreshed after a write was acknowledged misses it",
    "seq-mismatch": "a record is not at the seq its writer was told",
    "unexpected-op": "a remove or clear in the log of a writer's document (writers never "
                     "remove; only churners do, on their own keys)",
    "resurrected": "a churn key shows a value older than an acknowledged replace or remove "
                   "of it (or older than one the same reader already saw)",
    "churn-lost": "an acknowledged upsert of a churn key is gone and no later remove of the "
                  "key explains it",
    "unaccounted": "log records explained by no document, duplicate or remove",
    "consistency": "the Reader's own views disagree (len, ids, embeddings, search)",
    "verify": "mmwal.verify() found a problem",
    "checkpoint-fold": "a final checkpoint changed the documents",
    "journal": "a journal breaks its own rules",
    "crash": "a role raised an unexpected exception",
}


class _Batch:
    """Expected values of one op: vectors computed once, the rest per document."""

    __slots__ = ("k", "n", "seed", "vecs", "w")

    def __init__(self, seed: int, dim: int, w: int, k: int, n: int) -> None:
        self.seed, self.w, self.k, self.n = seed, w, k, n
        self.vecs = vectors(seed, w, k, np.arange(n), dim)

    def content(self, j: int) -> str:
        return doc_content(self.seed, self.w, self.k, j)

    def metadata(self, j: int) -> dict[str, Any] | None:
        return doc_metadata(self.seed, self.w, self.k, j, self.n)


def _check_doc(report: Report, where: str, key: str, emb: Any, content: Any, meta: Any,
               batch: _Batch, j: int) -> None:
    e = np.asarray(emb)
    if e.dtype != np.float32 or e.tobytes() != batch.vecs[j].tobytes():
        # Seeded vectors are never all-zero, so only a wrong vector can be.
        if not e.any():
            report("zero-vector", f"{where}: {key}: all-zero vector", 1)
        else:
            report("data", f"{where}: {key}: the vector differs from its seeded value", 1)
    if content != batch.content(j):
        report("data", f"{where}: {key}: content {str(content)[:40]!r} differs", 1)
    if meta != batch.metadata(j):
        report("data", f"{where}: {key}: metadata {meta!r:.60} differs", 1)


def _history_arrays(h: WriterHistory) -> tuple[np.ndarray, np.ndarray]:
    # Copies: a numpy view would pin the array's buffer and break its growth.
    return np.array(h.count, dtype=np.int64), np.array(h.ack, dtype=np.int64)


@dataclass
class Scan:
    """What a full scan of a Reader found."""

    docs: int = 0
    present: list[np.ndarray] = field(default_factory=list)  # per writer: docs per op
    phantom_ids: set[str] = field(default_factory=set)
    duplicate_ids: int = 0
    ids: list[str] = field(default_factory=list)
    churn_docs: int = 0  # churners' documents (checked by ChurnView, not here)


def scan_reader(r: mmwal.Reader, seed: int, dim: int, histories: Sequence[WriterHistory],
                report: Report, where: str, *, content_sample: int | None = 64,
                search_checks: int = 2, rng: random.Random | None = None) -> Scan:
    """Check everything a Reader shows against the journals; count docs per op.

    ``content_sample`` documents get their content and metadata compared (None:
    all of them); every vector is compared, vectorised.
    """
    rng = rng or random.Random()
    out = Scan()
    n = len(r)
    ids = list(r.ids)
    out.ids = ids
    out.docs = len(ids)
    if len(ids) != n:
        report("consistency", f"{where}: len(reader) is {n}, reader.ids has {len(ids)}", 1)
    W = np.empty(len(ids), dtype=np.int64)
    K = np.empty(len(ids), dtype=np.int64)
    J = np.empty(len(ids), dtype=np.int64)
    ok = np.ones(len(ids), dtype=bool)
    foreign = np.zeros(len(ids), dtype=bool)  # not even a workload id
    nw = len(histories)
    counts = [_history_arrays(h)[0] for h in histories]
    churn = np.zeros(len(ids), dtype=bool)  # a churner's key: ChurnView's business
    for i, s in enumerate(ids):
        p = parse_id(s)
        if p is None or p[0] >= nw:
            ok[i] = False
            foreign[i] = True
            W[i] = K[i] = J[i] = 0
            if s.startswith("c") and parse_churn_id(s) is not None:
                churn[i] = True
            continue
        w, k, j = p
        W[i], K[i], J[i] = w, k, j
        c = counts[w]
        if k >= len(c) or j >= c[k]:
            ok[i] = False
    out.churn_docs = int(churn.sum())
    out.docs = len(ids) - out.churn_docs
    for i in np.flatnonzero(~ok & ~churn).tolist():
        out.phantom_ids.add(ids[i])
    if out.phantom_ids:
        some = sorted(out.phantom_ids)[:5]
        report("phantom", f"{where}: {len(out.phantom_ids)} documents no writer attempted, "
               f"e.g. {some}", len(out.phantom_ids))
    keys = (W << 44) | (K << 16) | J
    keys[foreign] = -1 - np.flatnonzero(foreign)  # distinct: counted by set(ids) below
    if len(keys):
        _uniq, cnt = np.unique(keys, return_counts=True)
        dups = int((cnt - 1).sum())
        if dups or len(set(ids)) != len(ids):
            out.duplicate_ids = max(dups, len(ids) - len(set(ids)))
            report("duplicate", f"{where}: {out.duplicate_ids} ids listed more than once",
                   out.duplicate_ids)
    # Every vector, exactly, in bounded chunks.
    E = r.embeddings
    if E.shape != (len(ids), dim):
        report("consistency", f"{where}: embeddings shape {E.shape}, {len(ids)} ids", 1)
    else:
        bad_rows: list[int] = []
        zero_rows = 0
        step = 1 << 16
        for a in range(0, len(ids), step):
            b = min(len(ids), a + step)
            got = np.asarray(E[a:b])
            want = vectors(seed, W[a:b], K[a:b], J[a:b], dim)
            diff = ~(got == want).all(axis=1) & ok[a:b]
            if diff.any():
                bad_rows.extend((np.flatnonzero(diff) + a).tolist()[:5])
            zero_rows += int((~got.any(axis=1)).sum())
        if bad_rows:
            report("data", f"{where}: rows of reader.embeddings differ from their seeded "
                   f"vectors, e.g. {[ids[i] for i in bad_rows[:5]]}", len(bad_rows))
        if zero_rows:
            report("zero-vector", f"{where}: {zero_rows} all-zero rows in reader.embeddings",
                   zero_rows)
        valid = np.flatnonzero(ok)
        for _ in range(search_checks if len(valid) else 0):
            i = int(valid[rng.randrange(len(valid))])
            hits = r.search(np.asarray(E[i]), k=1, metric="l2")
            if not hits or hits[0].id != ids[i]:
                report("consistency", f"{where}: search for the exact vector of {ids[i]} "
                       f"returned {hits[:1]}", 1)
    # Content and metadata.
    valid = np.flatnonzero(ok)
    if content_sample is None:
        rows: Any = valid.tolist()
    else:
        rows = sorted(rng.sample(valid.tolist(), min(content_sample, len(valid))))
    # (Vectors were compared above: get() must agree with reader.embeddings.)
    shape_ok = E.shape == (len(ids), dim)
    bad_get = 0
    for i in rows:
        w, k, j = int(W[i]), int(K[i]), int(J[i])
        key = ids[i]
        d = r.get(key)
        if d is None:
            report("consistency", f"{where}: {key} is in reader.ids but get() says None", 1)
            continue
        if shape_ok and np.asarray(d.embedding).tobytes() != np.asarray(E[i]).tobytes():
            bad_get += 1
            if bad_get <= 3:
                report("consistency", f"{where}: get({key!r}).embedding differs from its row "
                       "of reader.embeddings", 1)
        if d.content != doc_content(seed, w, k, j):
            report("data", f"{where}: {key}: content {str(d.content)[:40]!r} differs", 1)
        if d.metadata != doc_metadata(seed, w, k, j, int(counts[w][k])):
            report("data", f"{where}: {key}: metadata {d.metadata!r:.60} differs", 1)
    for w in range(nw):
        m = ok & np.equal(W, w)
        out.present.append(np.bincount(K[m], minlength=len(counts[w])).astype(np.int64))
    return out


# ============================================================================ readers
#: Documents probed inside a batch besides its two ends, after each refresh.
PROBE_SAMPLE = 14
#: Acknowledged ops per writer a restarted reader probes at once (the rest: next full scan).
START_SAMPLE = 64
# Per-op states of a reader's model.
_UNSEEN, _SEEN, _SKIPPED, _ASSUMED = 0, 1, 2, 3


class _View:
    """One writer as one reader sees it: per op unseen, seen, skipped or assumed.

    "Skipped": absent while a later op of the writer is visible, never
    acknowledged (a call interrupted by a kill).  "Assumed": acknowledged and
    below a visible op, so visible by the prefix rule; not probed yet.
    """

    __slots__ = ("dead", "hi", "lo", "vis")

    def __init__(self) -> None:
        self.vis = bytearray()
        self.lo = 0  # every op below is visible or skipped
        self.hi = -1  # the highest visible op
        self.dead: set[int] = set()  # skipped ops (absent while a later op is visible)


class VisibleState:
    """A reader's running model of what it has seen, checked after every refresh.

    The invariant is "a reader sees a prefix of the log" turned into per-writer
    terms: a writer's records enter the log in the order of its calls, so a
    reader that sees op ``k`` of writer ``w`` sees every acknowledged op of ``w``
    before ``k``; an op it did not see while a later op was visible is skipped
    for good (it may reappear only by breaking the order); what it saw once it
    sees forever (the workload never removes).  The journals are read *after*
    each refresh, so every visible op is already journaled as pending.
    """

    def __init__(self, seed: int, dim: int, journals: Sequence[JournalReader],
                 report: Report) -> None:
        self.seed, self.dim = seed, dim
        self.journals = journals
        self.report = report
        self.views = [_View() for _ in journals]
        self.rng = random.Random(seed ^ 0x5EED)

    def _probe(self, r: mmwal.Reader, w: int, k: int, n: int) -> int:
        """Documents of op k visible to ``r`` (checking their values); -1 when torn.

        A batch is probed at both ends and at up to :data:`PROBE_SAMPLE` documents
        in between; the full scans count every document of every batch.
        """
        first = r.get(doc_id(w, k, 0))
        last = first if n == 1 else r.get(doc_id(w, k, n - 1))
        if first is None and last is None:
            return 0
        if first is None or last is None:
            self.report("torn-batch", f"reader: op {k} of writer {w}: document "
                        f"{0 if last is None else n - 1} of {n} visible, the other end not", 1)
            return -1
        batch = _Batch(self.seed, self.dim, w, k, n)
        inner = range(1, n - 1)
        picks = [0, *(inner if len(inner) <= PROBE_SAMPLE
                      else sorted(self.rng.sample(inner, PROBE_SAMPLE))), n - 1][: n]
        for j in picks:
            d = first if j == 0 else last if j == n - 1 else r.get(doc_id(w, k, j))
            if d is None:
                self.report("torn-batch", f"reader: op {k} of writer {w}: document {j} of {n} "
                            "missing, both ends visible", 1)
                return -1
            _check_doc(self.report, "reader", doc_id(w, k, j), d.embedding, d.content,
                       d.metadata, batch, j)
        return n

    def _settle(self, w: int, view: _View, new_hi: int, h: WriterHistory) -> None:
        vis = view.vis
        for k in range(view.lo, new_hi):
            if vis[k] == _UNSEEN:
                if h.ack[k] >= 0:
                    self.report("prefix", f"reader: sees op {new_hi} of writer {w} but not its "
                                f"acknowledged op {k} (seq {h.ack[k]})", h.count[k])
                vis[k] = _SKIPPED
                if h.count[k]:
                    view.dead.add(k)
        view.hi = max(view.hi, new_hi)
        while view.lo < len(vis) and vis[view.lo]:
            view.lo += 1

    def _revived(self, w: int, view: _View, k: int) -> None:
        self.report("order", f"reader: op {k} of writer {w} became visible after its later "
                    f"op {view.hi} was already visible", 1)
        view.dead.discard(k)

    def incremental(self, r: mmwal.Reader) -> int:
        """Probe the ops not yet seen (new ones and skipped ones); return documents checked."""
        checked = 0
        for w, jr in enumerate(self.journals):
            h = jr.history
            view = self.views[w]
            att = h.attempted
            if len(view.vis) < att:
                view.vis.extend(bytes(att - len(view.vis)))
            new_hi = view.hi
            for k in range(view.lo, att):
                if view.vis[k]:
                    continue
                n = h.count[k]
                if n == 0:
                    view.vis[k] = _SKIPPED
                    continue
                got = self._probe(r, w, k, n)
                if got:
                    view.vis[k] = _SEEN
                    checked += max(got, 0)
                    new_hi = max(new_hi, k)
            for k in sorted(view.dead):
                got = self._probe(r, w, k, h.count[k])
                if got:
                    self._revived(w, view, k)
                    view.vis[k] = _SEEN
                    checked += max(got, 0)
            self._settle(w, view, new_hi, h)
        return checked

    def start(self, r: mmwal.Reader) -> int:
        """Build the model of a freshly opened Reader cheaply; return documents checked.

        Per writer: the highest visible op (probed from the top), then every
        op below it that was never acknowledged (probed: present or skipped).
        The acknowledged ops below it must be visible (prefix): a random sample
        is probed now, the rest is *assumed* until the next full scan confirms
        it - so a restarted reader costs O(ops in doubt), not O(documents).
        """
        checked = 0
        for w, jr in enumerate(self.journals):
            h = jr.history
            view = self.views[w] = _View()
            att = h.attempted
            view.vis = bytearray(att)
            hi = -1
            for k in range(att - 1, -1, -1):
                n = h.count[k]
                if n == 0:
                    continue
                got = self._probe(r, w, k, n)
                if got:
                    view.vis[k] = _SEEN
                    checked += max(got, 0)
                    hi = k
                    break
            for k in range(hi):
                if h.count[k] == 0:
                    view.vis[k] = _SKIPPED
                elif h.ack[k] >= 0:
                    view.vis[k] = _ASSUMED
                else:
                    got = self._probe(r, w, k, h.count[k])
                    if got:
                        view.vis[k] = _SEEN
                        checked += max(got, 0)
                    else:
                        view.vis[k] = _SKIPPED
                        view.dead.add(k)
            for k in sorted(self.rng.sample(range(max(hi, 0)), min(START_SAMPLE, max(hi, 0)))):
                if view.vis[k] != _ASSUMED:
                    continue
                got = self._probe(r, w, k, h.count[k])
                if got:
                    view.vis[k] = _SEEN
                    checked += max(got, 0)
                else:
                    self.report("prefix", f"reader: sees op {hi} of writer {w} but not its "
                                f"acknowledged op {k} (seq {h.ack[k]})", h.count[k])
            view.hi = hi
            while view.lo < att and view.vis[view.lo]:
                view.lo += 1
        return checked

    def full_check(self, r: mmwal.Reader) -> int:
        """Scan everything the Reader shows; reconcile with the running model."""
        hists = [jr.history for jr in self.journals]
        scan = scan_reader(r, self.seed, self.dim, hists, self.report, "reader",
                           rng=self.rng)
        for w, h in enumerate(hists):
            view = self.views[w]
            cnt, _ack = _history_arrays(h)
            att = len(cnt)
            if len(view.vis) < att:
                view.vis.extend(bytes(att - len(view.vis)))
            present = scan.present[w][:att]
            full = (present == cnt) & (cnt > 0)
            torn = np.flatnonzero((present > 0) & (present < cnt))
            for k in torn.tolist()[:5]:
                self.report("torn-batch", f"reader: op {k} of writer {w}: {present[k]} of "
                            f"{cnt[k]} documents visible", 1)
            vis = np.frombuffer(bytes(view.vis[:att]), dtype=np.uint8)
            gone = np.flatnonzero((vis == _SEEN) & ~full)
            if len(gone):
                self.report("vanished", f"reader: {len(gone)} ops of writer {w} it saw are "
                            f"gone, e.g. ops {gone[:5].tolist()}", int(cnt[gone].sum()))
            missing = np.flatnonzero((vis == _ASSUMED) & ~full)
            if len(missing):
                self.report("prefix", f"reader: {len(missing)} acknowledged ops of writer {w} "
                            f"below its visible op {view.hi} are missing, e.g. ops "
                            f"{missing[:5].tolist()}", int(cnt[missing].sum()))
                for k in missing.tolist():
                    view.vis[k] = _SKIPPED  # reappearing later would break the order
                    view.dead.add(k)
            for k in np.flatnonzero(full & (vis == _SKIPPED)).tolist():
                if k in view.dead:
                    self._revived(w, view, k)
            new = np.flatnonzero(full & (vis != _SEEN))
            for k in new.tolist():
                view.vis[k] = _SEEN
            new_hi = int(np.flatnonzero(full)[-1]) if full.any() else -1
            self._settle(w, view, max(new_hi, view.hi), h)
        return scan.docs


# ============================================================================ churn
class ChurnLedger:
    """One churner's ops as its journal says, indexed by key for the checks.

    ``last_acked[key]``: the highest op on ``key`` acknowledged when
    :meth:`note_acked` last ran (-1: none) - a reader calls it right after the
    poll it makes *before* a refresh, so these ops must be reflected by what
    the refresh shows.  ``last_remove[key]``: the highest remove of ``key``
    attempted as of the last :meth:`extend` (a reader calls it after the refresh).
    """

    def __init__(self, seed: int, dim: int, c: int, keys: int, journal: JournalReader) -> None:
        self.seed, self.dim, self.c, self.keys = seed, dim, c, keys
        self.journal = journal
        self.key = array("l")
        self.remove = bytearray()
        self.last_acked = [-1] * keys
        self.last_remove = [-1] * keys
        self._final = 0  # ops below this one are acknowledged or never will be

    def extend(self) -> WriterHistory:
        """Plan the ops attempted so far (journal as last polled); return the history."""
        h = self.journal.history
        for k in range(len(self.key), h.attempted):
            op = churn_op(self.seed, self.c, k, self.keys)
            self.key.append(op.key)
            self.remove.append(op.remove)
            if op.remove:
                self.last_remove[op.key] = k
        return h

    def note_acked(self) -> None:
        """Take the acknowledgements of the journal as last polled into ``last_acked``."""
        h = self.extend()
        for k in range(self._final, h.attempted):
            if h.ack[k] >= 0 and h.count[k]:
                key = self.key[k]
                self.last_acked[key] = max(self.last_acked[key], k)
        # A churner acknowledges op k (or dies) before it attempts op k + 1.
        self._final = max(self._final, h.attempted - 1)

    def value_of(self, report: Report, where: str, key: int, d: Any) -> int:
        """The op whose value ``d`` (a visible document of ``key``) holds, checked; -1: bad."""
        meta = d.metadata
        v = meta.get("op") if isinstance(meta, dict) else None
        name = churn_id(self.c, key)
        if type(v) is not int or not 0 <= v < len(self.key) or self.key[v] != key \
                or self.remove[v]:
            report("phantom", f"{where}: {name} holds {meta!r:.80}, not the value of an "
                   f"upsert of this key churner {self.c} attempted ({len(self.key)} ops)", 1)
            return -1
        vec, content, want = churn_doc(self.seed, self.c, v, key, self.dim)
        if np.asarray(d.embedding).tobytes() != vec.tobytes():
            report("data", f"{where}: {name}: the vector of op {v} differs", 1)
        if d.content != content or meta != want:
            report("data", f"{where}: {name}: content {d.content!r:.40} / metadata "
                   f"{meta!r:.60} differ from op {v}'s", 1)
        return int(v)


class ChurnView:
    """What one reader saw of one churner's keys; :meth:`check` after each refresh.

    Per key: a visible value must come from the last op acknowledged before
    the refresh or a later one, and never go back to one older than a value
    this reader saw (a replaced or removed row brought back by a fragment,
    a deletion vector or a compaction is a resurrection).  An absent key needs
    a remove attempted after whatever the reader or the journal last knew.
    """

    def __init__(self, ledger: ChurnLedger, report: Report) -> None:
        self.ledger = ledger
        self.report = report
        self.seen = [-1] * ledger.keys  # the highest op whose value this reader saw
        self.floor = [0] * ledger.keys  # values older than this op must not show again

    def check(self, get: Callable[[str], Any], keys: Sequence[int] | range,
              where: str = "reader") -> int:
        """Check ``keys`` through ``get`` (a Reader's or a snapshot's); return keys checked."""
        lg = self.ledger
        report = self.report
        for key in keys:
            name = churn_id(lg.c, key)
            d = get(name)
            a = lg.last_acked[key]
            if d is not None:
                v = lg.value_of(report, where, key, d)
                if v < 0:
                    continue
                if a >= 0 and v < a:
                    how = "removed" if lg.remove[a] else "replaced"
                    report("resurrected", f"{where}: {name} shows the value of op {v}, "
                           f"{how} by op {a} acknowledged before the refresh", 1)
                elif v < self.floor[key]:
                    report("resurrected", f"{where}: {name} shows the value of op {v} again "
                           f"after this reader saw it replaced or removed (op >= "
                           f"{self.floor[key]})", 1)
                self.seen[key] = max(self.seen[key], v)
                self.floor[key] = max(self.floor[key], v)
                continue
            last = max(a, self.seen[key])
            if last >= 0 and not lg.remove[last] and lg.last_remove[key] < last:
                kind = "churn-lost" if last == a else "vanished"
                report(kind, f"{where}: {name} is absent; op {last} wrote it "
                       f"({'acknowledged' if last == a else 'seen by this reader'}) and no "
                       "later remove of it was attempted", 1)
            if self.seen[key] >= 0:
                self.floor[key] = max(self.floor[key], self.seen[key] + 1)
        return len(keys)


def snapshot_churn(get: Callable[[str], Any], ledgers: Sequence[ChurnLedger]) -> list[int]:
    """The op each churn key shows through ``get`` (-1: absent, -2: no op number)."""
    out = []
    for lg in ledgers:
        for key in range(lg.keys):
            d = get(churn_id(lg.c, key))
            meta = None if d is None else d.metadata
            out.append(-1 if d is None else meta.get("op", -2) if isinstance(meta, dict)
                       else -2)
    return out


@dataclass
class ChurnResult:
    """The final check of the churners' keys."""

    ops: int = 0
    acknowledged: int = 0
    removes_acknowledged: int = 0
    pending: int = 0  # attempted, never acknowledged (may or may not have landed)
    keys_present: int = 0
    lost: int = 0
    resurrected: int = 0


def final_churn(r: Any, ledgers: Sequence[ChurnLedger], report: Report,
                must_survive: Callable[[str], bool]) -> ChurnResult:
    """Every churn key against its journal, on the stopped store.

    A key must show the result of its last acknowledged op, or of an op after
    it that was attempted and never acknowledged (it may have landed); with no
    acknowledged op, absence or any attempted op's result.
    """
    res = ChurnResult()
    for lg in ledgers:
        h = lg.journal.poll()
        lg.note_acked()
        cnt, ack = _history_arrays(h)
        att = len(cnt)
        res.ops += att
        acked = (ack >= 0) & (cnt > 0)
        res.acknowledged += int(acked.sum())
        rem = np.frombuffer(bytes(lg.remove[:att]), dtype=np.uint8).astype(bool)
        res.removes_acknowledged += int((acked & rem).sum())
        res.pending += int(((cnt > 0) & (ack < 0)).sum())
        later: dict[int, list[int]] = {}  # unacknowledged ops after the last acknowledged
        for k in np.flatnonzero((cnt > 0) & (ack < 0)).tolist():
            key = lg.key[k]
            if k > lg.last_acked[key]:
                later.setdefault(key, []).append(k)
        survive = [must_survive(name) for name in DURABILITIES]
        for key in range(lg.keys):
            name = churn_id(lg.c, key)
            a = lg.last_acked[key]
            if a >= 0 and not survive[min(h.durability[a], len(DURABILITIES) - 1)]:
                continue  # the scenario lets this write go
            allowed = {-1 if a < 0 or lg.remove[a] else a}
            allowed.update(-1 if lg.remove[k] else k for k in later.get(key, []))
            d = r.get(name)
            if d is None:
                got = -1
            else:
                res.keys_present += 1
                got = lg.value_of(report, "final", key, d)
                if got < 0:
                    continue
            if got in allowed:
                continue
            if got < 0:
                res.lost += 1
                report("churn-lost", f"final: {name} is absent; its last acknowledged op {a} "
                       f"wrote it and no later remove was attempted", 1)
            else:
                res.resurrected += 1
                report("resurrected", f"final: {name} shows op {got}; allowed: "
                       f"{sorted(allowed)} (last acknowledged op {a})", 1)
    return res


# ============================================================================ the auditor
class _LogFollower:
    """``mmwal.replay(after_seq=...)``, but with one cursor kept open between calls.

    ``replay`` starts each call at the beginning of the segment holding
    ``after_seq`` and re-reads every frame before it: following a growing
    64 MiB segment that way is quadratic.  This keeps the library's own
    ``LogCursor`` (the reading path of ``replay`` and ``Reader``) and re-seeks,
    as ``replay`` does, only when a checkpoint retired the segment under it.
    """

    def __init__(self, store: str, dim: int) -> None:
        from .._fsutil import Paths
        from .._replay import LogSeeker

        self.paths = Paths(store)
        self.dim = dim
        self.cur: Any = None
        self.seeker = LogSeeker(self.paths)

    def reset(self) -> None:
        from .._replay import close_cursor

        cur, self.cur = self.cur, None
        if cur is not None:
            close_cursor(cur)

    def ops(self, after_seq: int) -> Generator[mmwal.Op, None, None]:
        """Every op with seq > ``after_seq`` written so far (a frame at a time)."""
        from .._replay import iter_ops
        from .._wal import Retired

        for _ in range(100):
            try:
                if self.cur is None:
                    self.cur = self.seeker.cursor(after_seq)
                for frame in self.cur.frames():
                    if frame.first_seq + frame.count - 1 <= after_seq:
                        continue
                    for op in iter_ops(frame, self.dim):
                        if op.seq > after_seq:
                            yield op
                            after_seq = op.seq
                return
            except Retired:
                # A checkpoint folded the segments under us: seek again where
                # the log now starts (the same rule replay follows).
                self.seeker.retired(self.cur.seg_id, after_seq)
                self.reset()
            except StorageIOError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                self.reset()  # idem, noticed while opening a segment
        raise mmwal.CorruptionError("the log kept vanishing under the auditor",
                                    path=self.paths.wal, offset=0)


class LogAuditor:
    """Follows the log with ``mmwal.replay``, checking every record once.

    Runs in the coordinator, which is never killed, so what it learned lasts the
    whole run.  Per writer it keeps the seq of each op (8 bytes per op).  When a
    checkpoint retires a segment before the auditor read it, the records are
    skipped (counted in ``skipped``): the final accounting covers them.
    """

    def __init__(self, store: str, seed: int, dim: int, journals: Sequence[JournalReader],
                 report: Report) -> None:
        self.store, self.seed, self.dim = store, seed, dim
        self.journals = journals
        self.report = report
        nw = len(journals)
        self.last = 0
        self.records = 0
        self.skipped = 0
        self.gaps = 0
        self.duplicates = 0
        self.removes = 0
        self.churn_records = 0  # churners' upserts and removes (their own checks)
        self.phantom_ids: set[str] = set()
        self.absent_seen: set[str] = set()  # filled by the verifier
        self.op_seq = [array("q") for _ in range(nw)]
        self.last_op = [-1] * nw
        self._frame: tuple[int, int, int, bool] = (-1, -1, -1, False)  # w, k, first seq, dup
        self._batch: tuple[int, int, _Batch | None] = (-1, -1, None)
        self.errors = 0
        self.follower = _LogFollower(store, dim)

    def step(self, budget: float | None = 0.05) -> int:
        """Audit new records for about ``budget`` seconds (None: to the end); return count."""
        deadline = None if budget is None else time.monotonic() + budget
        n = 0
        gen = self.follower.ops(self.last)
        try:
            for op in gen:
                self._audit(op)
                n += 1
                if deadline is not None and n % 64 == 0 and time.monotonic() > deadline:
                    break
        except mmwal.MmwalError as exc:
            self.errors += 1
            self.follower.reset()
            self.report("crash", f"auditor: reading the log raised {type(exc).__name__}: "
                        f"{exc}", 1)
        finally:
            gen.close()
        return n

    def close(self) -> None:
        self.follower.reset()

    def _audit(self, op: mmwal.Op) -> None:
        seq = op.seq
        if seq != self.last + 1:
            if seq <= self.last:
                self.report("order", f"auditor: replay went back from seq {self.last} to {seq}",
                            1)
                return
            self.gaps += 1
            self.skipped += seq - self.last - 1
        self.last = seq
        self.records += 1
        if op.id and op.id.startswith("c") and parse_churn_id(op.id) is not None:
            self.churn_records += 1
            return
        if op.kind != "add":
            self.removes += 1
            self.report("unexpected-op", f"auditor: {op.kind} of {op.id!r} at seq {seq}", 1)
            return
        key = op.id or ""
        p = parse_id(key)
        nw = len(self.journals)
        if p is None or p[0] >= nw:
            self._phantom(key, seq, "is not a workload id")
            return
        w, k, j = p
        h = self.journals[w].history
        if k >= h.attempted or j >= h.count[k]:
            # Not journaled yet as far as we read: read on.  A writer journals
            # "pending" before its call, so after this poll a real op is there.
            h = self.journals[w].poll()
        if k >= h.attempted or j >= h.count[k]:
            self._phantom(key, seq, f"was never attempted (writer {w} attempted "
                          f"{h.attempted} ops)")
            return
        seqs = self.op_seq[w]
        if len(seqs) <= k:
            seqs.extend([-1] * (k + 1 - len(seqs)))
        fw, fk, first, dup = self._frame
        if j == 0:
            dup = seqs[k] >= 0
            self._frame = (w, k, seq, dup)
            if dup:
                self.duplicates += 1
                self.report("duplicate", f"auditor: op {k} of writer {w} written again at seq "
                            f"{seq} (first at seq {seqs[k]})", h.count[k])
                return
            if k < self.last_op[w]:
                self.report("order", f"auditor: op {k} of writer {w} at seq {seq} comes after "
                            f"its later op {self.last_op[w]} (seq {seqs[self.last_op[w]]})", 1)
            seqs[k] = seq
            self.last_op[w] = max(self.last_op[w], k)
        elif (fw, fk) != (w, k) or seq != first + j:
            self.report("torn-batch", f"auditor: document {j} of op {k} of writer {w} at seq "
                        f"{seq} is not contiguous with its batch", 1)
            return
        elif dup:
            self.duplicates += 1
            return
        bw, bk, batch = self._batch
        if batch is None or (bw, bk) != (w, k):
            batch = _Batch(self.seed, self.dim, w, k, h.count[k])
            self._batch = (w, k, batch)
        _check_doc(self.report, "auditor", key, op.embedding, op.content, op.metadata, batch,
                   j)

    def _phantom(self, key: str, seq: int, why: str) -> None:
        self.phantom_ids.add(key)
        self.report("phantom", f"auditor: {key!r} at seq {seq} {why}", 1)


# ============================================================================ the end
@dataclass
class FinalResult:
    """The numbers of the final verification (the report's headline)."""

    last_seq: int = 0
    documents: int = 0
    acknowledged: int = 0  # documents
    acknowledged_ops: int = 0
    acknowledged_by_durability: dict[str, int] = field(default_factory=dict)
    pending_ops: int = 0  # ops journaled pending and never acknowledged
    pending_present: int = 0  # ... whose documents exist
    lost: int = 0
    phantoms: int = 0
    duplicates: int = 0
    verify_ok: bool = False
    verify_problems: list[str] = field(default_factory=list)
    verify_notes: list[str] = field(default_factory=list)
    audited: int = 0
    audit_skipped: int = 0
    final_checkpoint: dict[str, Any] = field(default_factory=dict)
    churn: ChurnResult = field(default_factory=ChurnResult)


def final_verification(store: str, seed: int, dim: int, journals: Sequence[JournalReader],
                       auditor: LogAuditor, report: Report,
                       must_survive: Callable[[str], bool],
                       log: Callable[[str], None] = lambda s: None,
                       churn: Sequence[ChurnLedger] = ()) -> FinalResult:
    """Compare the stopped store with the journals; run verify(); checkpoint; compare again."""
    res = FinalResult()
    hists = [jr.poll() for jr in journals]
    for w, h in enumerate(hists):
        for a in h.anomalies[:5]:
            report("journal", f"journal of writer {w}: {a}", 1)
    log("final: reading the tail")
    with mmwal.Store(store) as st:
        tail_seq = st.seq  # takes the append lock; rebuilds the tail record if a writer died
    auditor.step(None)
    auditor.close()
    log("final: scanning every document")
    with mmwal.Reader(store) as r:
        res.last_seq = r.seq
        if r.seq != tail_seq:
            report("consistency", f"final: Reader.seq {r.seq}, Store.seq {tail_seq}", 1)
        scan = scan_reader(r, seed, dim, hists, report, "final", content_sample=None,
                           search_checks=5, rng=random.Random(seed))
        res.churn = final_churn(r, churn, report, must_survive)
        churn_values = snapshot_churn(r.get, churn)
        if scan.churn_docs != res.churn.keys_present:
            report("consistency", f"final: reader.ids lists {scan.churn_docs} churn documents, "
                   f"get() finds {res.churn.keys_present}", 1)
    res.documents = scan.docs
    # Records after the auditor's position were retired by the final checkpoint
    # of a stopping checkpointer before it read them: skipped as well.
    res.audited = auditor.records
    res.audit_skipped = auditor.skipped + max(0, res.last_seq - auditor.last)
    phantoms = set(scan.phantom_ids) | auditor.phantom_ids
    res.phantoms = len(phantoms)
    res.duplicates = auditor.duplicates + scan.duplicate_ids
    ranges: list[tuple[int, int, int, int]] = []  # (first seq, last seq, writer, op)
    absent_seen = 0
    for w, h in enumerate(hists):
        cnt, ack = _history_arrays(h)
        present = scan.present[w][: len(cnt)]
        dur = np.frombuffer(bytes(h.durability), dtype=np.uint8)[: len(cnt)]
        acked = (ack >= 0) & (cnt > 0)
        res.acknowledged_ops += int(acked.sum())
        res.acknowledged += int(cnt[acked].sum())
        for di, name in enumerate(DURABILITIES):
            got = int(cnt[acked & (dur == di)].sum())
            if got:
                res.acknowledged_by_durability[name] = \
                    res.acknowledged_by_durability.get(name, 0) + got
        survive = np.array([must_survive(name) for name in DURABILITIES], dtype=bool)
        must = acked & survive[np.minimum(dur, len(DURABILITIES) - 1)]
        missing = must & (present < cnt)
        if missing.any():
            lost_docs = int((cnt - present)[missing].sum())
            res.lost += lost_docs
            eg = np.flatnonzero(missing)[:5].tolist()
            report("lost", f"final: {lost_docs} acknowledged documents of writer {w} are "
                   f"missing, e.g. ops {eg} (seqs {[int(ack[k]) for k in eg]})", lost_docs)
        torn = np.flatnonzero((present > 0) & (present < cnt) & ~missing)
        if len(torn):
            report("torn-batch", f"final: ops {torn[:5].tolist()} of writer {w} are partly "
                   "present", len(torn))
        pend = (cnt > 0) & (ack < 0)
        res.pending_ops += int(pend.sum())
        res.pending_present += int((pend & (present == cnt)).sum())
        # The seqs the writer was told: increasing in call order, inside the log.
        ks = np.flatnonzero(acked)
        firsts = ack[ks]
        ends = firsts + cnt[ks] - 1
        bad = np.flatnonzero(firsts[1:] <= ends[:-1])
        if len(bad):
            i = int(bad[0])
            report("order", f"final: writer {w} was told seq {firsts[i]} for op {ks[i]} and "
                   f"seq {firsts[i + 1]} for its later op {ks[i + 1]}", len(bad))
        beyond = np.flatnonzero(ends > res.last_seq)
        if len(beyond):
            report("lost", f"final: writer {w} was told seqs up to {int(ends.max())}, the log "
                   f"ends at {res.last_seq}", len(beyond))
        ranges.extend(zip(firsts.tolist(), ends.tolist(), [w] * len(ks), ks.tolist()))
        # Where the auditor saw each op against what the writer was told.
        seen = np.array(auditor.op_seq[w], dtype=np.int64)
        m = min(len(seen), len(ack))
        both = (seen[:m] >= 0) & (ack[:m] >= 0)
        wrong = np.flatnonzero(both & (seen[:m] != ack[:m]))
        if len(wrong):
            k = int(wrong[0])
            report("seq-mismatch", f"final: op {k} of writer {w} is at seq {seen[k]} in the "
                   f"log, the writer was told {ack[k]}", len(wrong))
        # Records the auditor saw whose documents are gone now (removed).
        gone = (seen[:m] >= 0) & (present[:m] < cnt[:m])
        absent_seen += int((cnt[:m] - present[:m])[gone].sum())
    ranges.sort()
    reuse = sum(1 for x, y in itertools.pairwise(ranges) if y[0] <= x[1])
    if reuse:
        report("duplicate", f"final: {reuse} seqs were handed out to two calls", reuse)
        res.duplicates += reuse
    # Accounting: every seq is a first write of a document present now, a first
    # write of a document gone now, a duplicate, or a remove/clear.  Records the
    # auditor skipped (retired before it read them) are only covered here.
    # A churner's op is one record: every acknowledged one, and any interrupted one may
    # have landed.
    explained = scan.docs + absent_seen + auditor.duplicates + auditor.removes + \
        res.churn.acknowledged
    if not explained <= res.last_seq <= explained + res.churn.pending:
        report("unaccounted", f"final: the log holds {res.last_seq} records; documents present "
               f"({scan.docs}), seen then gone ({absent_seen}), duplicates "
               f"({auditor.duplicates}), removes ({auditor.removes}) and churn ops "
               f"({res.churn.acknowledged} acknowledged, {res.churn.pending} interrupted) "
               f"explain {explained}..{explained + res.churn.pending}",
               abs(res.last_seq - explained))
    log("final: mmwal.verify()")
    rep = mmwal.verify(store)
    res.verify_ok = rep.ok
    res.verify_problems = [str(p) for p in rep.problems]
    res.verify_notes = list(rep.notes)
    for p in rep.problems[:10]:
        report("verify", f"final: {p}", 1)
    # Fold everything the chaos left into one last checkpoint: same documents.
    log("final: checkpoint and compare")
    t0 = time.perf_counter()
    with mmwal.Store(store) as st:
        info = st.checkpoint()
    res.final_checkpoint = {"id": info.id, "seq": info.seq, "documents": info.documents,
                            "seconds": round(time.perf_counter() - t0, 3)}
    with mmwal.Reader(store) as r2:
        after = scan_reader(r2, seed, dim, hists, report, "after final checkpoint",
                            content_sample=256, search_checks=3, rng=random.Random(seed + 1))
        before = snapshot_churn(r2.get, churn)
        if r2.seq != res.last_seq or after.docs != scan.docs or \
                sorted(after.ids) != sorted(scan.ids) or \
                info.documents != scan.docs + scan.churn_docs or before != churn_values:
            report("checkpoint-fold", f"final: after a checkpoint the store holds {after.docs} "
                   f"documents at seq {r2.seq} (checkpoint says {info.documents}), before "
                   f"{scan.docs} at seq {res.last_seq}"
                   + ("; churn keys changed" if before != churn_values else ""), 1)
    # And a full compaction: one fragment, no dead row, the same documents again.
    log("final: compact and compare")
    with mmwal.Store(store) as st:
        cinfo = st.compact()
    res.final_checkpoint["compaction"] = {
        "fragments_before": cinfo.fragments_before, "fragments": cinfo.fragments,
        "rows_copied": cinfo.rows_copied, "rows_dropped": cinfo.rows_dropped}
    with mmwal.Reader(store) as r3:
        after = scan_reader(r3, seed, dim, hists, report, "after final compaction",
                            content_sample=256, search_checks=3, rng=random.Random(seed + 2))
        if r3.seq != res.last_seq or sorted(after.ids) != sorted(scan.ids) or \
                snapshot_churn(r3.get, churn) != churn_values or \
                cinfo.documents != scan.docs + scan.churn_docs or cinfo.fragments > 1:
            report("checkpoint-fold", f"final: a full compaction left {cinfo.fragments} "
                   f"fragments and {after.docs} documents (+{after.churn_docs} churn) at seq "
                   f"{r3.seq}; before {scan.docs} (+{scan.churn_docs}) at seq {res.last_seq}", 1)
    rep2 = mmwal.verify(store)
    for p in rep2.problems[:10]:
        report("verify", f"after final checkpoint: {p}", 1)
    res.verify_ok = res.verify_ok and rep2.ok
    return res
