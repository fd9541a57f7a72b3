"""The stress harness's compaction half: churn keys, their oracle, the compactor's arguments.

Like tests/test_stress.py, the checks must be able to fail: a churn history
is driven by hand against a real store, then broken on purpose (an old value
written back, an acknowledged upsert removed behind the journal's back) and
each break must be reported - by a reader's :class:`ChurnView` and by the
final check - while a clean history through checkpoints and compactions
passes.  Whole runs of ``--scenario compaction`` are in tests/test_stress.py.
"""

from __future__ import annotations

import argparse
import random

import numpy as np

import mmwal
import mmwal.stress
from mmwal.stress._journal import JournalReader, JournalWriter
from mmwal.stress._oracle import (
    ChurnLedger,
    ChurnView,
    LogAuditor,
    final_churn,
    final_verification,
    snapshot_churn,
)
from mmwal.stress._roles import compact_args
from mmwal.stress._settings import Settings
from mmwal.stress._workload import (
    CHURN_REMOVE_PERCENT,
    churn_doc,
    churn_id,
    churn_op,
    parse_churn_id,
    parse_id,
)

SEED = 4321
DIM = 8
KEYS = 16


def test_churn_ids_and_ops_are_their_own_space():
    assert parse_churn_id(churn_id(3, 511)) == (3, 511)
    for bad in ("c", "c1", "c01-2", "c1-02", "c1-2-3", "w1-2-3", "cx-1", "c1-", ""):
        assert parse_churn_id(bad) is None
    assert parse_id(churn_id(0, 5)) is None  # writers' checks never claim a churn key
    ops = [churn_op(SEED, 1, k, KEYS) for k in range(4000)]
    assert ops[17].key == churn_op(SEED, 1, 17, KEYS).key  # a pure function
    assert {o.key for o in ops} == set(range(KEYS))
    removes = sum(o.remove for o in ops) / len(ops)
    assert abs(removes - CHURN_REMOVE_PERCENT / 100) < 0.05
    vec, content, meta = churn_doc(SEED, 1, 17, 3, DIM)
    assert vec.dtype == np.float32 and vec.any() and meta == {"churn": 1, "key": 3, "op": 17}
    assert content == "c1-3 op 17"


def test_compactor_arguments_stay_in_their_ranges():
    rng = random.Random(5)
    seen = set()
    for _ in range(400):
        args = compact_args(rng)
        seen.add(tuple(sorted(args)))
        assert 1 <= args.get("target_fragments", 1) <= 4
        assert 0.05 <= args.get("min_dead_fraction", 0.05) <= 0.5
    assert seen == {(), ("target_fragments",), ("min_dead_fraction",),
                    ("min_dead_fraction", "target_fragments")}


def test_settings_of_the_compaction_scenario():
    p = argparse.ArgumentParser()
    mmwal.stress.add_arguments(p)
    s = Settings.from_namespace(p.parse_args(["--scenario", "compaction", "--churners", "1"]))
    mmwal.stress._scenarios.get(s.scenario).configure(s)
    assert (s.compact_interval, s.checkpoint_interval, s.max_fragments) == (1.0, 1.0, 4)
    assert s.churners == 1 and s.verify_compactions and s.vary_keep  # --churners wins
    assert s.kill_weights["compactor"] > 0
    assert {s.keep_of(random.Random(i)) for i in range(50)} == {1, 2, 3}
    s2 = Settings.from_namespace(p.parse_args(["--scenario", "compaction",
                                               "--keep-checkpoints", "2"]))
    assert {s2.keep_of(random.Random(i)) for i in range(20)} == {2}  # an explicit value wins


class Churn:
    """A store and churner 0's journal driven by hand."""

    def __init__(self, tmp_path):
        self.store = str(tmp_path / "store")
        self.jpath = str(tmp_path / "c0.log")
        self.st = mmwal.Store(self.store, dim=DIM, durability="os",
                              config=mmwal.Config(max_fragments=4, auto_compact=False))
        self.jw = JournalWriter(self.jpath)
        self.jw.start(1, "os")
        self.k = 0
        self.found: list[tuple[str, str]] = []

    def report(self, kind, detail, count=1):
        self.found.append((kind, detail))

    def kinds(self):
        return {k for k, _ in self.found}

    def apply(self, k):
        op = churn_op(SEED, 0, k, KEYS)
        if op.remove:
            return self.st.remove(op.id)
        vec, content, meta = churn_doc(SEED, 0, k, op.key, DIM)
        return self.st.add(op.id, vec, content, meta)

    def op(self, *, write=True, ack=True):
        k = self.k
        self.k += 1
        self.jw.pending(k, 1)
        seq = self.apply(k) if write else self.st.seq + 1
        if ack:
            self.jw.ack(k, seq)
        return k

    def ledger(self):
        return ChurnLedger(SEED, DIM, 0, KEYS, JournalReader(self.jpath))

    def last_upsert_superseded(self, lg):
        """(key, an older upsert op u, the acknowledged op a > u that superseded it)."""
        for key in range(KEYS):
            a = lg.last_acked[key]
            ups = [k for k in range(a) if lg.key[k] == key and not lg.remove[k]]
            if a >= 0 and ups:
                return key, ups[0], a
        raise AssertionError("no key was written twice")


def _check(run, lg, view, r):
    lg.journal.poll()
    lg.note_acked()
    r.refresh()
    lg.extend()
    view.check(r.get, range(KEYS))


def test_churn_checks_pass_a_clean_history_through_checkpoints_and_compactions(tmp_path):
    run = Churn(tmp_path)
    lg = run.ledger()
    view = ChurnView(lg, run.report)
    with mmwal.Reader(run.store) as r:
        for step in range(12):
            for _ in range(25):
                run.op()
            if step % 3 == 2:
                run.st.checkpoint()
            if step % 4 == 3:
                run.st.compact(target_fragments=2)
            _check(run, lg, view, r)
        old = r.snapshot()
        before = snapshot_churn(old.get, [lg])
        run.op(ack=False)  # killed after the write: may or may not show
        run.op(write=False, ack=False)  # killed before it
        run.st.checkpoint()
        run.st.compact()
        _check(run, lg, view, r)
        assert snapshot_churn(old.get, [lg]) == before  # held across retirements
    assert run.found == []
    run.st.close()
    with mmwal.Reader(run.store) as r:
        res = final_churn(r, [run.ledger()], run.report, lambda d: True)
    assert run.found == []
    assert res.ops == 302 and res.acknowledged == 300 and res.pending == 2
    assert res.lost == res.resurrected == 0 and 0 < res.keys_present <= KEYS


def test_churn_checks_catch_a_resurrected_value(tmp_path):
    run = Churn(tmp_path)
    for _ in range(120):
        run.op()
    run.st.checkpoint()
    lg = run.ledger()
    lg.journal.poll()
    lg.note_acked()
    key, u, a = run.last_upsert_superseded(lg)
    # What a lost deletion vector or a compaction copying a dead row would show.
    vec, content, meta = churn_doc(SEED, 0, u, key, DIM)
    run.st.add(churn_id(0, key), vec, content, meta)
    view = ChurnView(lg, run.report)
    with mmwal.Reader(run.store) as r:
        view.check(r.get, range(KEYS))
    assert run.kinds() == {"resurrected"}, run.found
    run.found.clear()
    run.st.close()
    with mmwal.Reader(run.store) as r:
        res = final_churn(r, [run.ledger()], run.report, lambda d: True)
    assert res.resurrected == 1 and run.kinds() == {"resurrected"}


def test_churn_checks_catch_a_lost_upsert_and_a_value_going_back(tmp_path):
    run = Churn(tmp_path)
    for _ in range(80):
        run.op()
    lg = run.ledger()
    view = ChurnView(lg, run.report)
    with mmwal.Reader(run.store) as r:
        _check(run, lg, view, r)
        assert run.found == []
        live = [key for key in range(KEYS) if r.get(churn_id(0, key)) is not None]
        run.st.remove(churn_id(0, live[0]))  # behind the journal's back
        _check(run, lg, view, r)
        assert run.kinds() == {"churn-lost"}, run.found
        # A value this reader saw replaced coming back (not acknowledged-superseded:
        # the reader's own floor catches it).
        run.found.clear()
        key = live[1]
        seen = view.seen[key]
        older = [k for k in range(seen) if lg.key[k] == key and not lg.remove[k]]
        assert older, "the key was written once only"
        lg.last_acked[key] = -1  # as if the journal had not acknowledged `seen` yet
        vec, content, meta = churn_doc(SEED, 0, older[0], key, DIM)
        run.st.add(churn_id(0, key), vec, content, meta)
        r.refresh()
        view.check(r.get, [key])
    assert run.kinds() == {"resurrected"}, run.found
    run.st.close()


def test_final_verification_accounts_for_churn_records(tmp_path):
    run = Churn(tmp_path)
    for _ in range(60):
        run.op()
    run.op(ack=False)
    run.st.checkpoint()
    run.st.close()
    js: list[JournalReader] = []
    auditor = LogAuditor(run.store, SEED, DIM, js, run.report)
    res = final_verification(run.store, SEED, DIM, js, auditor, run.report, lambda d: True,
                             churn=[run.ledger()])
    assert run.found == [], run.found
    assert res.churn.acknowledged == 60 and res.churn.pending == 1 and res.verify_ok
    assert res.final_checkpoint["compaction"]["fragments"] <= 1
    # A record no churner attempted (a foreign remove) is not explained.
    with mmwal.Store(run.store) as st:
        st.remove("c0-9999")
    auditor = LogAuditor(run.store, SEED, DIM, js, run.report)
    final_verification(run.store, SEED, DIM, js, auditor, run.report, lambda d: True,
                       churn=[run.ledger()])
    assert "unaccounted" in run.kinds()


def test_interval_table_shows_fragments_compactions_and_new_roles():
    from mmwal.stress._report import interval_lines

    t = [0.5 * i for i in range(41)]
    rep = {"run_s": 20.0, "settings": {},
           "timeline": {"t": t, "docs": [10.0 * i for i in range(41)],
                        "docs_per_s": [20.0] * 41, "ops_per_s": [5.0] * 41,
                        "lag_max": [3.0] * 41, "lag_mean": [1.0] * 41,
                        "fragments": [1.0 + (i % 4) for i in range(40)] + [-1.0]},
           "events": {"kills": [[1.0, "compactor", "compact"], [2.0, "churner-1", "append"],
                                [3.0, "writer-0", "append"]],
                      "checkpoints": [4.0], "checkpoint_seconds": [0.2],
                      "compactions": [1.5, 2.5, 12.0]}}
    lines = interval_lines(rep)
    assert "w/r/c/x/u" in lines[0] and "compactor, churner" in lines[0]
    assert lines[1].split()[-2:] == ["frags", "compact"]
    rows = [line.split() for line in lines[2:]]
    assert rows[0][0] == "0-2" and rows[0][-2] == "2.5/4"  # mean/max fragments of the bin
    assert [int(r[-1]) for r in rows] == [1, 1, 0, 0, 0, 0, 1, 0, 0, 0]  # compact() calls
    old = dict(rep, timeline={k: v for k, v in rep["timeline"].items() if k != "fragments"})
    assert "frags" not in interval_lines(old)[1]  # an older report: no such column
