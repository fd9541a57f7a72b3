"""The stress harness (``mmwal stress`` / ``python -m mmwal.stress``) and its oracle.

Two halves:

* the checker must be able to fail: stores and journals broken on purpose,
  in-process (fast, exact), and whole runs with ``--inject`` planting a lost
  acknowledged write, a reordered pair, a phantom and a duplicate - each must
  be reported in the JSON and exit non-zero, keeping the store;
* a ``--quick`` run with kills and checkpoints must come out clean.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mmwal
import mmwal.stress
from mmwal.stress._journal import JournalReader, JournalWriter, WriterHistory
from mmwal.stress._oracle import LogAuditor, VisibleState, final_verification
from mmwal.stress._settings import Settings
from mmwal.stress._workload import doc_id, op_plan, parse_id, vectors

SEED = 1234
DIM = 8


# ============================================================================ pieces
def test_vectors_are_exact_per_document_and_never_zero():
    batch = vectors(SEED, 3, 17, np.arange(50), DIM)
    for j in range(50):
        assert np.array_equal(batch[j], vectors(SEED, 3, 17, j, DIM)[0])
    i = np.arange(4000)
    many = vectors(SEED, i % 4, i // 4, i % 7, DIM)  # 4000 distinct documents
    assert many.dtype == np.float32 and many.any(axis=1).all()
    assert len({row.tobytes() for row in many}) == 4000
    assert np.abs(many).max() <= 8.0  # bounded: exact search stays numerically stable
    assert not np.array_equal(vectors(SEED, 0, 0, 0, DIM), vectors(SEED + 1, 0, 0, 0, DIM))


def test_ids_round_trip_and_foreign_ids_are_rejected():
    assert parse_id(doc_id(2, 12345, 7)) == (2, 12345, 7)
    for bad in ("x", "w1-2", "w01-2-3", "w1-2-3-4", "w-1-2-3", "wa-b-c", "doc-1", ""):
        assert parse_id(bad) is None


def test_journal_round_trip_torn_line_and_anomalies(tmp_path):
    path = str(tmp_path / "w0.log")
    jw = JournalWriter(path)
    jw.start(1, "fsync")
    jw.pending(0, 3)
    jw.ack(0, 1)
    jw.pending(1, 1)
    jw.close()
    with open(path, "ab") as f:
        f.write(b"A 1 4")  # a line without its newline: not read yet
    h = JournalReader(path).poll()
    assert (h.attempted, list(h.count), list(h.ack)) == (2, [3, 1], [1, -1])
    jw = JournalWriter(path)  # a restart: continues after op 1 and voids the torn line
    assert jw.next_op == 2
    jw.pending(2, 2)
    jw.close()
    h = JournalReader(path).poll()
    assert (h.attempted, list(h.count), list(h.ack)) == (3, [3, 1, 2], [1, -1, -1])
    assert h.torn_lines == 1 and h.anomalies == []
    odd = WriterHistory()
    odd.feed(b"P 0 1\nA 0 1\nA 0 1\nA 5 9\nP 3 1\nZ\n")
    assert len(odd.anomalies) == 4


def test_settings_profiles_and_explicit_options():
    p = argparse.ArgumentParser()
    mmwal.stress.add_arguments(p)
    q = Settings.from_namespace(p.parse_args(["--quick", "--writers", "5", "--seed", "9"]))
    assert (q.quick, q.duration, q.writers, q.seed) == (True, 20.0, 5, 9)
    f = Settings.from_namespace(p.parse_args([]))
    assert f.duration == 120.0 and f.scenario == "default" and f.seed > 0
    assert Settings.from_namespace(argparse.Namespace(duration=3)).duration == 3
    with pytest.raises(ValueError, match="--writers"):
        Settings.from_namespace(p.parse_args(["--writers", "0"]))
    assert mmwal.stress.run(p.parse_args(["--dim", "2"])) == 2


def test_wires_into_a_subcommand_like_the_cli_does():
    root = argparse.ArgumentParser(prog="mmwal")
    sub = root.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("stress", help="prove the guarantees on this disk")
    mmwal.stress.add_arguments(sp)
    sp.set_defaults(func=mmwal.stress.run)
    ns = root.parse_args(["stress", "--quick", "--writers", "2", "--durability", "fsync"])
    assert ns.func is mmwal.stress.run
    s = Settings.from_namespace(ns)
    assert (s.quick, s.writers, s.durability, s.duration) == (True, 2, "fsync", 20.0)


def test_help_lists_every_option_and_hides_inject():
    out = subprocess.run([sys.executable, "-m", "mmwal.stress", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for opt in ("--dir", "--duration", "--writers", "--readers", "--durability",
                "--checkpoint-interval", "--kill-interval", "--seed", "--quick", "--json",
                "--plot", "--scenario", "--keep", "--segment-bytes", "--batch-size",
                "--compact-interval", "--max-fragments", "--churners", "--churn-keys",
                "--churn-rate"):
        assert opt in out
    assert "--inject" not in out


def test_plot_without_matplotlib_fails_before_starting(tmp_path):
    code = ("import sys, argparse; sys.modules['matplotlib'] = None\n"
            "import mmwal.stress as s\n"
            "p = argparse.ArgumentParser(); s.add_arguments(p)\n"
            f"sys.exit(s.run(p.parse_args(['--quick', '--dir', {str(tmp_path)!r}, "
            f"'--plot', {str(tmp_path / 'x.png')!r}])))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert "install mmwal[plot] for --plot" in res.stderr
    assert os.listdir(tmp_path) == []  # nothing started


# ============================================================================ the oracle, in-process
class Run:
    """A store and writer 0's journal, driven by hand: the oracle's input, broken at will."""

    def __init__(self, tmp_path):
        self.store = str(tmp_path / "store")
        self.jpath = str(tmp_path / "w0.log")
        self.st = mmwal.Store(self.store, dim=DIM, durability="os")
        self.jw = JournalWriter(self.jpath)
        self.jw.start(1, "os")
        self.found: list[tuple[str, str]] = []

    def report(self, kind, detail, count=1):
        self.found.append((kind, detail))

    def write(self, k, *, ids=None):
        p = op_plan(SEED, 0, k, 4, 50)
        vecs, cont, meta = p.vectors(SEED, DIM), p.contents(SEED), p.metadatas(SEED)
        ids = ids or p.ids()
        if p.many:
            return self.st.add_many(ids, vecs, cont, meta).start
        return self.st.add(ids[0], vecs[0], cont[0], meta[0])

    def op(self, k, *, write=True, ack=True, seq=None):
        self.jw.pending(k, op_plan(SEED, 0, k, 4, 50).n)
        first = self.write(k) if write else seq
        if ack:
            self.jw.ack(k, first)
        return first

    def journals(self):
        return [JournalReader(self.jpath)]

    def verify(self):
        self.st.close()
        js = self.journals()
        auditor = LogAuditor(self.store, SEED, DIM, js, self.report)
        res = final_verification(self.store, SEED, DIM, js, auditor, self.report, lambda d: True)
        return res, {k for k, _ in self.found}


def test_oracle_passes_a_clean_history(tmp_path):
    run = Run(tmp_path)
    for k in range(30):
        run.op(k)
    run.op(30, ack=False)  # killed after the write, before the ack: may exist
    run.op(31, write=False, ack=False)  # killed before the write: may be absent
    res, kinds = run.verify()
    assert kinds == set(), run.found
    n = sum(op_plan(SEED, 0, k, 4, 50).n for k in range(30))
    assert (res.acknowledged, res.acknowledged_ops, res.pending_ops, res.pending_present) == \
        (n, 30, 2, 1)
    assert res.lost == res.phantoms == res.duplicates == 0 and res.verify_ok


def test_oracle_catches_a_removed_acknowledged_document(tmp_path):
    run = Run(tmp_path)
    for k in range(10):
        run.op(k)
    run.st.remove(doc_id(0, 4, 0))
    res, kinds = run.verify()
    assert "lost" in kinds and res.lost == 1


def test_oracle_catches_an_acknowledgement_never_written(tmp_path):
    run = Run(tmp_path)
    for k in range(5):
        run.op(k)
    run.op(5, write=False, seq=run.st.seq + 1)  # "acknowledged", never written
    res, kinds = run.verify()
    assert "lost" in kinds and res.lost >= 1


def test_oracle_catches_a_phantom(tmp_path):
    run = Run(tmp_path)
    for k in range(5):
        run.op(k)
    run.write(77)  # never journaled
    res, kinds = run.verify()
    assert "phantom" in kinds and res.phantoms >= 1


def test_oracle_catches_a_duplicate(tmp_path):
    run = Run(tmp_path)
    for k in range(5):
        run.op(k)
    run.write(2)  # op 2 a second time
    res, kinds = run.verify()
    assert "duplicate" in kinds and res.duplicates >= 1


def test_oracle_catches_a_reordered_pair(tmp_path):
    run = Run(tmp_path)
    run.op(0)
    run.jw.pending(1, op_plan(SEED, 0, 1, 4, 50).n)
    run.jw.pending(2, op_plan(SEED, 0, 2, 4, 50).n)
    s2 = run.write(2)
    s1 = run.write(1)
    run.jw.ack(1, s1)
    run.jw.ack(2, s2)
    _res, kinds = run.verify()
    assert "order" in kinds


def test_oracle_catches_wrong_values(tmp_path):
    run = Run(tmp_path)
    run.op(0)
    run.jw.pending(1, 1)
    first = run.st.add(doc_id(0, 1, 0), np.zeros(DIM, np.float32), "wrong", None)
    run.jw.ack(1, first)
    _res, kinds = run.verify()
    assert {"data", "zero-vector"} <= kinds


def test_reader_checks_catch_a_broken_prefix_and_a_vanished_document(tmp_path):
    run = Run(tmp_path)
    run.op(0, write=False, seq=1)  # acknowledged, but the store never got it
    run.op(1)
    js = run.journals()
    for j in js:
        j.poll()
    state = VisibleState(SEED, DIM, js, run.report)
    with mmwal.Reader(run.store) as r:
        assert state.incremental(r) > 0
        assert [k for k, _ in run.found] == ["prefix"]
        run.op(2)
        r.refresh()
        js[0].poll()
        state.incremental(r)
        assert [k for k, _ in run.found] == ["prefix"]  # op 2 seen, nothing new to report
        run.st.remove(doc_id(0, 2, 0))
        r.refresh()
        state.full_check(r)
    assert "vanished" in {k for k, _ in run.found}
    run.st.close()


def test_restarted_reader_model_is_cheap_and_still_catches_a_hole(tmp_path):
    run = Run(tmp_path)
    for k in range(300):
        run.op(k)
    run.op(300, write=False, seq=10**6)  # acknowledged, never written...
    for k in range(301, 400):
        run.op(k)  # ... and later ops are visible
    run.op(400, ack=False)  # an interrupted call that landed
    run.op(401, write=False, ack=False)  # one that did not
    js = run.journals()
    for j in js:
        j.poll()
    state = VisibleState(SEED, DIM, js, run.report)
    with mmwal.Reader(run.store) as r:
        state.start(r)
        view = state.views[0]
        assert view.hi == 400 and view.lo == 401  # op 401 may still be in flight
        state.full_check(r)
    kinds = [k for k, _ in run.found]
    assert "prefix" in kinds and set(kinds) == {"prefix"}
    run.st.close()


def test_reader_checks_pass_a_clean_history(tmp_path):
    run = Run(tmp_path)
    for k in range(20):
        run.op(k)
    js = run.journals()
    for j in js:
        j.poll()
    state = VisibleState(SEED, DIM, js, run.report)
    with mmwal.Reader(run.store) as r:
        state.start(r)
        for step in range(1, 5):
            for k in range(step * 6, step * 6 + 6):
                run.op(k)
            r.refresh()
            js[0].poll()
            state.incremental(r)
            if step == 2:
                run.st.checkpoint()
        state.full_check(r)
    assert run.found == []
    run.st.close()


# ============================================================================ whole runs
def _run(tmp_path, *extra, timeout=280):
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "mmwal.stress", "--quick", "--quiet", "--dir",
           str(tmp_path / "runs"), "--json", str(report), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert report.exists(), f"no report:\n{res.stdout}\n{res.stderr}"
    with open(report) as f:
        return res, json.load(f)


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~30 s alone; a loaded machine (xdist) stretches it
def test_quick_run_is_clean(tmp_path):
    png = tmp_path / "run.png"
    res, rep = _run(tmp_path, "--duration", "14", "--plot", str(png))
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert rep["ok"] is True and rep["violations"] == [] and rep["violation_counts"] == {}
    assert rep["acknowledged"] > 0 and rep["acknowledged_ops"] > 0
    assert rep["kills"] > 0 and rep["checkpoints"] > 0
    assert rep["lost"] == rep["phantoms"] == rep["duplicates"] == 0
    assert rep["verify"]["ok"] is True
    assert rep["readers"]["refreshes"] > 0 and rep["readers"]["docs_checked"] > 0
    assert rep["throughput"]["docs_per_s"] > 0
    # The default run has a compactor and a churner too (replaced and removed rows).
    assert rep["compaction"]["compactor_calls"] > 0 and rep["churn"]["acknowledged"] > 0
    assert rep["churn"]["lost"] == rep["churn"]["resurrected"] == 0
    assert rep["settings"]["quick"] is True and rep["kept"] is False
    assert not os.path.exists(rep["run_dir"])  # clean runs clean up after themselves
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PASSED" in res.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("inject, kind", [
    ("drop-ack", "lost"),
    ("reorder", "order"),
    ("phantom", "phantom"),
    ("duplicate", "duplicate"),
    ("resurrect", "resurrected"),
])
def test_injected_violation_fails_the_run(tmp_path, inject, kind):
    res, rep = _run(tmp_path, "--duration", "6", "--writers", "2", "--readers", "1",
                    "--inject", inject)
    assert res.returncode == 1, f"{res.stdout}\n{res.stderr}"
    assert rep["ok"] is False
    assert rep["injected"]["done"] is True, rep["injected"]
    assert rep["violation_counts"].get(kind, 0) >= 1, rep["violation_counts"]
    assert any(v["kind"] == kind for v in rep["violations"])
    if kind in ("lost", "phantom", "duplicate"):
        assert rep[{"lost": "lost", "phantom": "phantoms", "duplicate": "duplicates"}[kind]] > 0
    # A failed run keeps its store and says where.
    assert rep["kept"] is True and os.path.isdir(rep["store"])
    assert rep["store"] in res.stdout and "FAILED" in res.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_retire_race_scenario_short_run_is_clean(tmp_path):
    # The short mode of the retire-race scenario (stress/README.md has the long
    # run): keep_checkpoints=1, a checkpoint a second, small segments, readers
    # killed and reopened often, reader 0 running verify() during the run.
    res, rep = _run(tmp_path, "--duration", "10", "--scenario", "retire-race",
                    "--verify-interval", "3")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    s = rep["settings"]
    assert s["scenario"] == "retire-race" and s["keep_checkpoints"] == 1
    assert s["segment_bytes"] == 64 << 10 and s["verify_interval"] == 3.0
    assert rep["ok"] is True and rep["violation_counts"] == {}
    assert rep["checkpoints"] >= 1 and rep["kills_by_role"].get("reader", 0) > 0
    assert rep["lost"] == rep["phantoms"] == rep["duplicates"] == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compaction_scenario_short_run_is_clean(tmp_path):
    # The short mode of the compaction scenario (stress/RESULTS.md has the long run):
    # churners replacing and removing keys, a checkpoint and a compact() a second,
    # max_fragments=4, verify() after each compaction, kills of every role.
    res, rep = _run(tmp_path, "--duration", "12", "--scenario", "compaction")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    s = rep["settings"]
    assert s["scenario"] == "compaction" and s["max_fragments"] == 4
    assert s["compact_interval"] == 1.0 and s["churners"] == 2
    assert rep["ok"] is True and rep["violation_counts"] == {}
    assert rep["lost"] == rep["phantoms"] == rep["duplicates"] == 0
    cp, ch = rep["compaction"], rep["churn"]
    assert rep["checkpoints"] >= 1 and cp["compactor_calls"] >= 1
    assert cp["fragments_max"] >= 1 and cp["versions_seen"] >= 2
    assert ch["acknowledged"] > 0 and ch["removes_acknowledged"] > 0
    assert ch["lost"] == ch["resurrected"] == 0 and ch["keys_checked_by_readers"] > 0
    assert rep["final_checkpoint"]["compaction"]["fragments"] <= 1
    assert "compaction" in res.stdout and "fragments" in res.stdout


def test_a_scenario_changes_only_the_options_not_given():
    p = argparse.ArgumentParser()
    mmwal.stress.add_arguments(p)
    s = Settings.from_namespace(p.parse_args(["--scenario", "retire-race",
                                              "--segment-bytes", "8192"]))
    mmwal.stress._scenarios.get(s.scenario).configure(s)
    assert s.segment_bytes == 8192 and s.keep_checkpoints == 1
    assert s.kill_weights["reader"] > 0.15
