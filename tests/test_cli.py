"""The ``mmwal`` command line, run through its console script in a subprocess.

Exit codes on a good store, a damaged store and a missing path; ``inspect
--json``; ``dump`` line counts; ``repair`` refusing without ``--yes`` and
repairing with it; the demo end to end (shortened) and on Ctrl-C.  ``--help``
of every command is checked in-process (argparse only, no store involved).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import frame_spans, segment_files

import mmwal
from mmwal import cli

DIM = 8
COMMANDS = ("demo", "inspect", "verify", "dump", "checkpoint", "repair", "restore", "stress",
            "bench")


def _console_script() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "mmwal")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("mmwal")
    return [found] if found else [sys.executable, "-m", "mmwal"]


MMWAL = _console_script()


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="error")
    env.pop("MMWAL_DEBUG", None)
    return subprocess.run([*MMWAL, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def one_error_line(p: subprocess.CompletedProcess[str], cmd: str) -> None:
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmwal {cmd}: "), p.stderr


def snapshot(path: str) -> dict[str, str]:
    """Every file of a store with a digest of its bytes (locks excluded: never written)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def make_store(path: str, damaged: bool = False) -> dict[str, set[str]]:
    """30 docs checkpointed, then 60 more in small segments and one remove.

    With ``damaged``, a frame in the middle of a sealed segment gets a flipped
    payload byte.  Returns the id sets each recovery mode sees (read from a copy).
    """
    cfg = mmwal.Config(segment_bytes=4096)
    rng = np.random.default_rng(7)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        s.add_many([f"doc-{i}" for i in range(30)], rng.random((30, DIM)),
                   contents=[f"content {i}" for i in range(30)],
                   metadatas=[{"i": i, "raw": b"\x00\x01"} for i in range(30)])
        s.checkpoint()
        for i in range(30, 90):
            s.add(f"doc-{i}", rng.random(DIM), content=f"content {i}", metadata={"i": i})
        s.remove("doc-3")
    if damaged:
        seg = segment_files(path)[0]  # sealed: later segments follow it
        start, _pend, _end, _seq, _n = frame_spans(seg)[5]
        with open(seg, "r+b") as f:
            f.seek(start + 40)
            byte = f.read(1)
            f.seek(start + 40)
            f.write(bytes([byte[0] ^ 0xFF]))
    seen = {}
    for mode in ("point-in-time", "skip-bad"):
        copy = path + f".{mode}"
        shutil.copytree(path, copy)
        with mmwal.Reader(copy, recovery=mode) as r:
            seen[mode] = set(r.ids)
        shutil.rmtree(copy)
    return seen


@pytest.fixture
def good_store(tmp_path):
    path = str(tmp_path / "good")
    make_store(path)
    return path


@pytest.fixture
def damaged_store(tmp_path):
    path = str(tmp_path / "damaged")
    seen = make_store(path, damaged=True)
    return path, seen


# ------------------------------------------------------------------ help and version
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mmwal {command}")
    assert "examples:" in out and f"mmwal {command}" in out.split("examples:")[1]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"\n    {command}" in out


def test_version_through_the_console_script_and_python_m():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"mmwal {mmwal.__version__}"
    p = subprocess.run([sys.executable, "-m", "mmwal", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"mmwal {mmwal.__version__}"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["repair", "/nowhere"],
                                  ["repair", "/nowhere", "--mode", "later"],
                                  ["demo", "--docs", "many"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage: mmwal" in capsys.readouterr().err


def test_demo_rejects_a_bad_count(capsys):
    assert cli.main(["demo", "--docs", "0"]) == 2
    assert capsys.readouterr().err.startswith("mmwal demo: --docs")


# ------------------------------------------------------------------ a good store
def test_good_store(good_store):
    p = run("verify", good_store)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("ok: ")

    p = run("verify", good_store, "--json")
    assert p.returncode == 0
    report = json.loads(p.stdout)
    assert report["ok"] is True and report["problems"] == []

    p = run("inspect", good_store, "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["documents"] == 89 and info["seq"] == 91 and info["dim"] == DIM
    assert info["format_version"] == 2 and info["checkpoint"]["id"] == 1
    assert [f["rows"] for f in info["checkpoint"]["fragments"]] == [30]
    assert info["checkpoint"]["documents"] == 30 and info["checkpoint"]["seq"] == 30
    assert info["records_since_checkpoint"] == 61 and len(info["segments"]) >= 2
    assert info["bytes"] > 0 and info["last_modified"].endswith("Z") and info["errors"] == []

    p = run("inspect", good_store)
    assert p.returncode == 0 and "documents      89" in p.stdout

    p = run("checkpoint", good_store, "--json")
    assert p.returncode == 0, p.stderr
    ck = json.loads(p.stdout)
    assert ck["id"] == 2 and ck["seq"] == 91 and ck["documents"] == 89


def test_dump_line_counts(good_store):
    p = run("dump", good_store)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 89
    docs = [json.loads(line) for line in lines]
    assert set(docs[0]) == {"id", "content", "metadata"}
    assert {d["id"] for d in docs} == {f"doc-{i}" for i in range(90)} - {"doc-3"}
    first = next(d for d in docs if d["id"] == "doc-0")
    assert first["content"] == "content 0" and first["metadata"] == {"i": 0, "raw": "AAE="}

    p = run("dump", good_store, "--ids")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 89

    p = run("dump", good_store, "--embeddings")
    assert p.returncode == 0
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(docs) == 89
    with mmwal.Reader(good_store) as r:
        for d in docs[:5] + docs[-5:]:
            assert np.array_equal(np.array(d["embedding"], dtype=np.float32),
                                  r[d["id"]].embedding)

    p = run("dump", good_store, "--ids", "--embeddings")
    assert p.returncode == 2


# ------------------------------------------------------------------ a missing path
@pytest.mark.parametrize("args", [("verify",), ("inspect",), ("dump",), ("checkpoint",),
                                  ("repair", "--mode", "skip-bad")])
def test_missing_path_exits_2_with_one_line(tmp_path, args):
    missing = str(tmp_path / "nowhere")
    p = run(args[0], missing, *args[1:])
    assert p.returncode == 2
    one_error_line(p, args[0])
    assert not os.path.exists(missing)  # nothing was created


def test_a_directory_that_is_not_a_store_exits_2(tmp_path):
    p = run("verify", str(tmp_path))
    assert p.returncode == 2
    one_error_line(p, "verify")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ a damaged store
def test_damaged_store(damaged_store):
    path, _seen = damaged_store
    p = run("verify", path)
    assert p.returncode == 1 and "problem:" in p.stdout and "DAMAGED" in p.stdout

    p = run("verify", path, "--json")
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert report["ok"] is False and report["problems"][0]["file"].endswith(".seg")

    p = run("inspect", path, "--json")
    assert p.returncode == 1  # the Reader cannot open it: reported, not raised
    info = json.loads(p.stdout)
    assert info["documents"] is None and info["errors"]

    p = run("dump", path)
    assert p.returncode == 1
    one_error_line(p, "dump")


@pytest.mark.parametrize("mode", ["point-in-time", "skip-bad"])
def test_repair_refuses_without_yes_and_repairs_with_it(damaged_store, mode):
    path, seen = damaged_store
    before = snapshot(path)

    if mode == "point-in-time":
        p = run("repair", path, "--mode", mode)
        assert p.returncode == 1, p.stderr
        assert "damage" in p.stdout and "--yes" in p.stdout
        assert "valid records after the first damage" in p.stdout
        assert snapshot(path) == before  # nothing changed, nothing created
    else:
        p = run("repair", path, "--mode", mode, "--json")
        assert p.returncode == 1
        plan = json.loads(p.stdout)
        assert plan["needed"] is True and plan["repaired"] is False
        assert [d for d in plan["damage"] if not d["harmless"]]
        assert plan["dropped_records"] == []  # skip-bad keeps every valid record
        assert snapshot(path) == before

    p = run("repair", path, "--mode", mode, "--yes")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "verify:   ok" in p.stdout
    backups = [d for d in os.listdir(path) if d.startswith("repair-backup-")]
    assert len(backups) == 1
    backup = os.path.join(path, backups[0])
    assert set(os.listdir(backup)) == {"MANIFEST", "tail", "wal", "checkpoints", "REPAIR.json"}
    # the backup holds the damaged files exactly as they were, and the checkpoint
    for rel, digest in before.items():
        if rel == "MANIFEST" or rel == "tail" or rel.startswith(("wal/", "checkpoints/")):
            got = snapshot(backup).get(rel)
            assert got == digest, rel

    assert run("verify", path).returncode == 0
    p = run("dump", path, "--ids")
    assert p.returncode == 0
    assert set(p.stdout.split()) == seen[mode]
    if mode == "point-in-time":
        assert len(seen["point-in-time"]) < len(seen["skip-bad"])

    # the store works on: new writes get fresh seqs, nothing is to repair
    with mmwal.Store(path) as s:
        seq = s.add("after", np.ones(DIM))
    with mmwal.Reader(path) as r:
        assert "after" in r and r.seq == seq
    with open(os.path.join(backup, "REPAIR.json")) as f:
        assert seq == json.load(f)["max_seen"] + 1  # no seq handed out twice
    assert cli.main(["repair", path, "--mode", mode]) == 0  # nothing to repair


def test_repair_in_process_keeps_every_valid_record_and_reuses_no_seq(tmp_path):
    """A damaged segment header and a torn (harmless) tail, through cli.main in-process."""
    path = str(tmp_path / "s")
    cfg = mmwal.Config(segment_bytes=4096)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        for i in range(150):
            s.add(f"doc-{i}", np.full(DIM, i + 1.0))
        last = s.seq
    segs = segment_files(path)
    assert len(segs) >= 3
    lost = {f"doc-{seq + k - 1}" for _s, _p, _e, seq, n in frame_spans(segs[1])
            for k in range(n)}
    assert lost
    with open(segs[1], "r+b") as f:  # a sealed segment in the middle: header broken
        f.seek(20)
        f.write(b"XXXX")
    with open(segs[-1], "ab") as f:  # bytes after the last frame: a torn tail
        f.write(b"\x4d\x57\x46\x52" + b"\x07" * 60)
    before = snapshot(path)
    assert cli.main(["repair", path, "--mode", "skip-bad"]) == 1
    assert snapshot(path) == before
    assert cli.main(["repair", path, "--mode", "skip-bad", "--yes"]) == 0
    with mmwal.Reader(path) as r:
        assert set(r.ids) == {f"doc-{i}" for i in range(150)} - lost
        assert r.seq == last  # the checkpoint covers every seq ever used
    with mmwal.Store(path) as s:
        assert s.add("next", np.ones(DIM)) == last + 1
    assert mmwal.verify(path).ok


# ------------------------------------------------------------------ demo, bench, stress
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    p = run("demo", "--quick", "--docs", "800", "--dir", str(tmp_path), timeout=110)
    assert p.returncode == 0, p.stdout + p.stderr
    for step in ("1. ingest", "2. checkpoint", "3. query", "4. refresh", "5. verify"):
        assert step in p.stdout
    assert "800 documents" in p.stdout and "5. verify      ok" in p.stdout
    assert "top hits for" in p.stdout and "Where to go next" in p.stdout
    assert os.listdir(tmp_path) == []  # the temporary store is removed


@pytest.mark.slow
def test_demo_ctrl_c_exits_130_and_cleans_up(tmp_path):
    env = dict(os.environ)
    # SIGINT as a terminal gives it: a test run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then never
    # installs its KeyboardInterrupt handler (the demo would run to the end).
    proc = subprocess.Popen([*MMWAL, "demo", "--docs", "400000", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not os.listdir(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the writers are starting or writing
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaps it and closes the pipes (else a ResourceWarning later)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "interrupted" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_bench_quick_json():
    p = run("bench", "--quick", "--json", timeout=110)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    for case in ("raw_write", "add_os", "add_many", "add_fsync", "reader_open", "search"):
        assert res[case]["median"] > 0 and len(res[case]["rounds"]) == 3


def test_stress_is_wired(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["stress", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    try:
        import mmwal.stress  # noqa: F401
    except ImportError:
        assert cli.main(["stress"]) == 2  # a clear message instead
    else:
        assert "--duration" in out  # the harness's own options


def test_repair_makes_a_store_writable_again_after_damage_and_a_reboot(tmp_path, capsys):
    """Damage in the newest segment + a tail record from another boot: writers refuse
    (they will not write over committed frames); repair lets them carry on."""
    from helpers import set_tail

    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        for i in range(20):
            s.add(f"doc-{i}", np.full(DIM, i + 1.0))
    seg = segment_files(path)[-1]
    start = frame_spans(seg)[10][0]
    with open(seg, "r+b") as f:
        f.seek(start + 40)
        f.write(b"\xff\xff")
    set_tail(path, "zeroed")  # what the tail record looks like after a reboot
    with mmwal.Store(path) as s, pytest.raises(mmwal.CorruptionError):
        s.add("refused", np.ones(DIM))

    assert cli.main(["repair", path, "--mode", "point-in-time", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert plan["kept_seqs"] == [1, 10] and plan["max_seen"] == 20
    assert plan["dropped_records"][0]["seqs"] == [12, 20]
    assert cli.main(["repair", path, "--mode", "point-in-time", "--yes"]) == 0
    with mmwal.Store(path) as s:
        assert s.add("accepted", np.ones(DIM)) == 21
    with mmwal.Reader(path) as r:
        assert set(r.ids) == {f"doc-{i}" for i in range(10)} | {"accepted"}


# ------------------------------------------------------------------ issue 10: output validity
def _strict_json(line: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(line, parse_constant=refuse)


def _append_raw(store: mmwal.Store, key: str, metadata) -> None:
    """An add record the validating writer would refuse (a store from an older writer)."""
    import time as _time

    from mmwal import _format as F
    payload = F.pack([_time.time(), store.dim, [key], [""], [metadata],
                      np.ones(store.dim, dtype=np.float32).tobytes()])
    store._log.append(F.KIND_ADD, 1, payload)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_dump_writes_strict_json_for_non_finite_values(tmp_path, capsys, checkpointed):
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add("ok", np.ones(DIM), metadata={"f": 1.5, "b": b"\x01", "t": True})
        _append_raw(s, "nonfinite", {"nan": float("nan"), "l": [float("inf"), -float("inf")],
                                     "d": {"x": float("nan")}})
        if checkpointed:
            s.checkpoint()
    assert cli.main(["dump", path]) == 0
    out = capsys.readouterr().out
    docs = {d["id"]: d for d in map(_strict_json, out.splitlines())}
    assert docs["ok"]["metadata"] == {"f": 1.5, "b": "AQ==", "t": True}
    assert docs["nonfinite"]["metadata"] == {"nan": "NaN", "l": ["Infinity", "-Infinity"],
                                             "d": {"x": "NaN"}}
    assert cli.main(["dump", path, "--embeddings"]) == 0
    for line in capsys.readouterr().out.splitlines():
        _strict_json(line)


def test_json_outputs_are_strict(tmp_path, capsys):
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        _append_raw(s, "nan", {"x": float("nan")})
    for argv in (["inspect", path, "--json"], ["verify", path, "--json"]):
        cli.main(argv)
        _strict_json(capsys.readouterr().out)


def test_verify_text_names_each_path_once(tmp_path, capsys):
    from mmwal import _format as F
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add("a", np.ones(DIM))
        s._log.append(F.KIND_ADD, 1, F.pack([1.0]))  # CRC-valid, malformed payload
        s.add("b", np.ones(DIM))
    assert cli.main(["verify", path]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problems
    for line in problems:
        assert line.count(path) == 1, line
        assert line.count("offset") == 1, line
    report = mmwal.verify(path)
    for p in report.problems:
        assert p.file not in p.what and not p.what.startswith("offset"), p


def test_compact_command(tmp_path, capsys):
    """`mmwal compact`: a full compaction by default, JSON, nothing to do, bad input."""
    path = str(tmp_path / "s")
    cfg = mmwal.Config(auto_compact=False)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        for round_ in range(3):
            s.add_many([f"r{round_}-{i}" for i in range(10)],
                       np.ones((10, DIM), np.float32) * (round_ + 1))
            s.remove(f"r0-{round_}")
            s.checkpoint()
    assert cli.main(["compact", path, "--target-fragments", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["fragments_before"], info["fragments"]) == (3, 2)
    assert cli.main(["compact", path]) == 0
    out = capsys.readouterr().out
    assert "2 fragments -> 1" in out and "dropped" in out
    assert cli.main(["compact", path]) == 0
    assert "nothing to compact" in capsys.readouterr().out
    with mmwal.Reader(path) as r:
        assert len(r) == 27 and len(r.fragments) == 1 and r.fragments[0].live.all()
    assert cli.main(["compact", path, "--target-fragments", "0"]) != 0
    assert "target_fragments" in capsys.readouterr().err
    assert cli.main(["compact", str(tmp_path / "nothing")]) != 0
