#!/usr/bin/env python
"""Read-side performance of mmwal: Reader open, shared mappings, replay, checkpoints, search.

Usage::

    python benchmarks/bench_read.py                      # full run (~10 min; first run
                                                         # also builds the cached stores)
    python benchmarks/bench_read.py --quick              # smoke run, tiny sizes (~30 s)
    python benchmarks/bench_read.py --json out.json --data /mnt/disk/bench-read
    python benchmarks/bench_read.py --sections open,search --sizes 10k,100k

Cases (DESIGN.md, "Performance targets"):

open    Reader open + embeddings ready, 10k/100k/1M checkpointed docs, each open in a
        fresh process (timed inside the child around ``mmwal.Reader(path)`` +
        ``r.embeddings.shape`` + one row), page cache warm (one unmeasured open first).
        Target: O(1) in store size - 1M within 3x the 10k time, tens of ms.
pss     8 reader processes map one checkpoint and touch every page of
        ``r.embeddings``; summed PSS (/proc/PID/smaps_rollup) against the size of
        embeddings.npy.  Target: total PSS ~ 1x the file, not 8x.
replay  a log of single-doc add records and one of add_many records of 1000 docs, no
        checkpoint: ``mmwal.Reader(path)`` (replays the log) and
        ``sum(1 for _ in mmwal.replay(path))``, and the same with
        ``fields=("id", "embedding")``.  Targets: >= 300k single-doc records/s;
        batched >= 1 GB/s of segment bytes.
ckpt    checkpoint() in a fresh process: (a) the whole store in the log, (b) a previous
        checkpoint of N docs + 10k new docs in the log (incremental); time and peak
        RSS (ru_maxrss after minus after opening the Store).  Target: streaming, peak
        RSS independent of store size.
search  exact cosine top-10 on the mapped checkpoint vs numpy on the same matrix in
        RAM (norms precomputed, argpartition + sort); single queries and batches of 16.
        Target: numpy time / mmwal time >= 0.5.

Stores are built once with add_many in batches of 10k (seeded random float32 vectors,
ids ``doc-{i}``, ~150 B of content, small metadata), durability "os", and cached in
--data (default /tmp/mmwal-bench-read) with a ``NAME.built.json`` marker; reruns
reuse them (``--rebuild`` forces a rebuild).  Every child process is reaped, also on
Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _readwork as W  # noqa: E402

SECTIONS = ("open", "pss", "replay", "ckpt", "search")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, ~30 s, for smoke tests")
    ap.add_argument(
        "--sizes",
        help="checkpointed store sizes, e.g. 10k,100k,1M (default 10k,100k,1M; --quick 2k,5k,20k)",
    )
    ap.add_argument(
        "--search-sizes",
        help="sizes for the search case (default 100k,1M, or the two largest of --sizes)",
    )
    ap.add_argument(
        "--pss-docs", help="store size for the PSS case (default: the largest size, 1M)"
    )
    ap.add_argument("--pss-procs", type=int, default=8)
    ap.add_argument(
        "--replay-docs",
        help="single-doc records / documents of the batched log (default 200k; --quick 20k)",
    )
    ap.add_argument(
        "--delta",
        help="new docs in the log for the incremental checkpoint (default 10k; --quick 1k)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        help="measured runs per case (default 7 for open, "
        "5 for replay, 3 for ckpt and pss; --quick fewer)",
    )
    ap.add_argument("--queries", type=int, default=None, help="single queries (default 30)")
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    ap.add_argument(
        "--data",
        default="/tmp/mmwal-bench-read",
        help="cache directory of the built stores (default /tmp/mmwal-bench-read)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached stores")
    ap.add_argument("--json", metavar="PATH", help="write every number here")
    a = ap.parse_args(argv)
    q = a.quick
    a.sizes = [W.parse_n(x) for x in (a.sizes or ("2k,5k,20k" if q else "10k,100k,1M")).split(",")]
    if a.search_sizes:
        a.search_sizes = [W.parse_n(x) for x in a.search_sizes.split(",")]
    else:
        a.search_sizes = sorted(a.sizes)[-2:]
    a.pss_docs = W.parse_n(a.pss_docs) if a.pss_docs else max(a.sizes)
    a.replay_docs = W.parse_n(a.replay_docs) if a.replay_docs else (20_000 if q else 200_000)
    a.delta = W.parse_n(a.delta) if a.delta else (1000 if q else 10_000)
    a.queries = a.queries or (10 if q else 30)
    r = a.repeats
    a.rep_open = r or (3 if q else 7)
    a.rep_replay = r or (2 if q else 5)
    a.rep_ckpt = r or (1 if q else 3)
    a.rep_pss = r or (1 if q else 3)
    a.rep_batch = r or (3 if q else 7)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = set(a.sections) - set(SECTIONS)
    if bad:
        ap.error(f"unknown sections {sorted(bad)}; choose from {SECTIONS}")
    a.data = os.path.abspath(a.data)
    return a


# ============================================================================ stores
class Stores:
    """The cached stores of this run, built on first use."""

    def __init__(self, data: str, rebuild: bool) -> None:
        self.data = data
        self.rebuild = rebuild
        self.info: dict[str, dict[str, Any]] = {}

    def _get(self, name: str, params: dict[str, Any], build: Any) -> str:
        from mmwal import _format

        params = {**params, "format": _format.FORMAT_VERSION}  # rebuild if the format moves
        path = os.path.join(self.data, name)
        if name in self.info:  # built or checked earlier in this run
            return path
        path, info = W.cached_store(self.data, name, params, build, self.rebuild)
        self.info[name] = info
        return path

    def ckpt(self, n: int) -> str:
        """n docs, add_many in batches of 10k, then checkpoint()."""
        return self._get(
            f"ckpt-{n}",
            {"kind": "ckpt", "n": n, "dim": W.DIM, "batch": W.BATCH, "seed": W.SEED},
            lambda p: W.build_docs_store(p, n, checkpoint=True),
        )

    def log(self, n: int) -> str:
        """n docs, add_many in batches of 10k, no checkpoint (everything in the log)."""
        return self._get(
            f"log-{n}",
            {"kind": "log", "n": n, "dim": W.DIM, "batch": W.BATCH, "seed": W.SEED},
            lambda p: W.build_docs_store(p, n, checkpoint=False),
        )

    def single(self, n: int) -> str:
        return self._get(
            f"single-{n}",
            {"kind": "single", "n": n, "dim": W.DIM, "seed": W.SEED},
            lambda p: W.build_single_store(p, n),
        )

    def batched(self, records: int, per: int) -> str:
        return self._get(
            f"batched-{records}x{per}",
            {"kind": "batched", "records": records, "per": per, "dim": W.DIM, "seed": W.SEED},
            lambda p: W.build_batched_store(p, records, per),
        )


# ============================================================================ cases
def case_open(a: argparse.Namespace, st: Stores) -> tuple[dict[str, Any], str]:
    res: dict[str, Any] = {"sizes": {}}
    for n in a.sizes:
        path = st.ckpt(n)
        W.log(f"open: {W.fmt_n(n)} docs, 1 + {a.rep_open} fresh processes")
        warm = W.run_child("open", path, timeout=600)
        assert warm["n"] == n and warm["ok"], warm
        runs = [W.run_child("open", path, timeout=600) for _ in range(a.rep_open)]
        res["sizes"][n] = {
            "open_s": W.summarize([r["seconds"] for r in runs]),
            "child_import_s": W.summarize([r["import_s"] for r in runs]),
            "embeddings_bytes": os.path.getsize(W.ckpt_file(path)),
        }
    base = res["sizes"][min(a.sizes)]["open_s"]["median"]
    rows = []
    for n in a.sizes:
        r = res["sizes"][n]
        s = r["open_s"]
        ratio = s["median"] / base
        r["ratio_vs_smallest"] = ratio
        rows.append(
            [
                W.fmt_n(n),
                W.fmt_mib(r["embeddings_bytes"]),
                W.fmt_ms(s["median"]),
                f"{W.fmt_ms(s['min'])} – {W.fmt_ms(s['max'])}",
                f"{ratio:.2f}×",
                W.fmt_ms(r["child_import_s"]["median"]),
            ]
        )
    big, small = max(a.sizes), min(a.sizes)
    ratio = res["sizes"][big]["ratio_vs_smallest"]
    ok = ratio <= 3 and res["sizes"][big]["open_s"]["median"] < 0.1
    res["target"] = {"ratio_largest_vs_smallest": ratio, "met": ok}
    md = [
        "### 1. Reader open + embeddings ready (fresh process, warm page cache)",
        "",
        W.md_table(
            [
                "docs",
                "embeddings.npy",
                "open median",
                "min – max",
                f"vs {W.fmt_n(small)}",
                "child `import mmwal` (not timed)",
            ],
            rows,
        ),
        "",
        f"{a.rep_open} fresh processes per size (median); timed: `mmwal.Reader(path)` + "
        "`r.embeddings.shape` + copying one row. "
        f"Target: {W.fmt_n(big)} within 3× of {W.fmt_n(small)} and tens of ms → "
        f"**{ratio:.2f}×, {'met' if ok else 'MISSED'}**.",
    ]
    return res, "\n".join(md)


def case_build_table(st: Stores) -> str:
    rows = []
    for name, info in sorted(
        st.info.items(), key=lambda kv: (kv[0].split("-")[0], kv[1].get("n", 0))
    ):
        ck = info.get("checkpoint_s")
        rows.append(
            [
                name,
                W.fmt_n(info["n"]),
                f"{info['add_s']:.2f} s ({W.fmt_rate(info['add_docs_per_s'])}/s)",
                f"{ck:.2f} s ({W.fmt_rate(info['checkpoint_docs_per_s'])}/s)" if ck else "–",
                W.fmt_mib(info["segment_bytes"]),
                "cached " + info["built"][:10] if info.get("cached") else "this run",
            ]
        )
    return "\n".join(
        [
            "### Stores used (build, single run each)",
            "",
            W.md_table(
                [
                    "store",
                    "docs",
                    "add / add_many (docs/s)",
                    "checkpoint() (docs/s)",
                    "log bytes",
                    "built",
                ],
                rows,
            ),
            "",
            'Built with durability "os"; `add_many` in batches of 10k (the '
            "`single-*` store: one `add` per doc, the `batched-*` store: add_many "
            "of 1000). checkpoint() includes its fsyncs. One run each, at build "
            "time; the checkpoint case below has the repeated measurement.",
        ]
    )


def case_pss(a: argparse.Namespace, st: Stores) -> tuple[dict[str, Any], str]:
    import subprocess

    n = a.pss_docs
    path = st.ckpt(n)
    file_bytes = os.path.getsize(W.ckpt_file(path))
    runs = []
    for rep in range(a.rep_pss):
        W.log(f"pss: {a.pss_procs} readers on {W.fmt_n(n)} docs, run {rep + 1}/{a.rep_pss}")
        procs = []
        try:
            for _ in range(a.pss_procs):
                procs.append(W.spawn("pss-reader", path, stdin=subprocess.PIPE))
            ready = []
            for p in procs:
                line = p.stdout.readline() if p.stdout else ""
                if not line:
                    raise RuntimeError(f"pss reader died: {p.stderr.read() if p.stderr else ''}")
                ready.append(json.loads(line))
            per = []
            for p in procs:
                roll = W.smaps_rollup(p.pid)
                emb = W.smaps_of_file(p.pid, "/embeddings.npy")
                per.append(
                    {
                        "pid": p.pid,
                        "pss_kib": roll["Pss"],
                        "rss_kib": roll["Rss"],
                        "emb_pss_kib": emb["Pss"],
                        "emb_rss_kib": emb["Rss"],
                    }
                )
            assert all(r["memmap"] and r["n"] == n for r in ready), ready
        except BaseException:
            for p in procs:  # interrupted or failed: no polite goodbye
                if p.poll() is None:
                    p.kill()
            raise
        finally:
            W.release_children(procs)
        runs.append(
            {
                "pss_total": 1024 * sum(x["pss_kib"] for x in per),
                "rss_total": 1024 * sum(x["rss_kib"] for x in per),
                "emb_pss_total": 1024 * sum(x["emb_pss_kib"] for x in per),
                "emb_rss_total": 1024 * sum(x["emb_rss_kib"] for x in per),
                "touch_s": [r["touch_s"] for r in ready],
                "per_process": per,
            }
        )
    keys = ("pss_total", "rss_total", "emb_pss_total", "emb_rss_total")
    med = {k: W.summarize([r[k] for r in runs]) for k in keys}
    ratio = med["pss_total"]["median"] / file_bytes
    eratio = med["emb_pss_total"]["median"] / file_bytes
    rratio = med["rss_total"]["median"] / file_bytes
    other = (med["pss_total"]["median"] - med["emb_pss_total"]["median"]) / a.pss_procs
    res = {
        "docs": n,
        "procs": a.pss_procs,
        "embeddings_bytes": file_bytes,
        "runs": runs,
        **med,
        "ratio_pss_total": ratio,
        "ratio_emb_pss": eratio,
        "ratio_rss_total": rratio,
        "other_pss_per_process": other,
    }
    met = eratio < 1.1
    res["target"] = {"met": met}
    rows = [
        ["total PSS (smaps_rollup)", W.fmt_mib(med["pss_total"]["median"]), f"{ratio:.2f}×"],
        [
            "  of which the embeddings.npy mappings",
            W.fmt_mib(med["emb_pss_total"]["median"]),
            f"{eratio:.3f}×",
        ],
        ["  of which the rest (interpreter, numpy, heap), per process", W.fmt_mib(other), "–"],
        ["total RSS, for contrast", W.fmt_mib(med["rss_total"]["median"]), f"{rratio:.2f}×"],
        ["embeddings.npy file", W.fmt_mib(file_bytes), "1.00×"],
    ]
    md = [
        f"### 2. {a.pss_procs} reader processes on one checkpoint of {W.fmt_n(n)} docs (memory)",
        "",
        W.md_table(["summed over the processes", "size (median)", "× embeddings.npy"], rows),
        "",
        f"Median of {a.rep_pss} run(s); each process opens a Reader and runs "
        "`np.asarray(r.embeddings).sum()` (every page touched), then waits while the parent "
        "reads /proc/PID/smaps_rollup and /proc/PID/smaps. "
        f"Target: total PSS ≈ 1× the file, not {a.pss_procs}× → embeddings PSS "
        f"**{eratio:.3f}×** (**{'met' if met else 'MISSED'}**); total PSS {ratio:.2f}× "
        f"= the file + {a.pss_procs} × {W.fmt_mib(other)} of per-process interpreter, "
        "numpy and heap, which any Python worker pays.",
    ]
    return res, "\n".join(md)


def case_replay(a: argparse.Namespace, st: Stores) -> tuple[dict[str, Any], str]:
    n = a.replay_docs
    per = 1000
    records = max(1, n // per)
    spath = st.single(n)
    bpath = st.batched(records, per)
    res: dict[str, Any] = {}
    for key, path, nrec in (("single", spath, n), ("batched", bpath, records)):
        W.log(f"replay: {key}, {nrec} records, 1 + {a.rep_replay} runs in one child")
        out = W.run_child("replay", path, a.rep_replay, timeout=1800)
        ndocs = n if key == "single" else records * per
        assert out["n_reader"] == ndocs and out["n_ops"] == ndocs == out["n_proj"], out
        sb = W.seg_bytes(path)
        o, r = W.summarize(out["open_s"]), W.summarize(out["replay_s"])
        p = W.summarize(out["replay_ids_s"])
        res[key] = {
            "records": nrec,
            "docs": ndocs,
            "segment_bytes": sb,
            "reader_open_s": o,
            "replay_iter_s": r,
            "replay_ids_s": p,
            "replay_ids_records_per_s": nrec / p["median"],
            "replay_ids_docs_per_s": ndocs / p["median"],
            "replay_ids_MB_per_s": sb / p["median"] / 1e6,
            "reader_open_records_per_s": nrec / o["median"],
            "replay_records_per_s": nrec / r["median"],
            "reader_open_docs_per_s": ndocs / o["median"],
            "replay_docs_per_s": ndocs / r["median"],
            "reader_open_MB_per_s": sb / o["median"] / 1e6,
            "replay_MB_per_s": sb / r["median"] / 1e6,
        }
    s, b = res["single"], res["batched"]
    rows = []
    for key, label in (
        ("single", f"{s['records']:,} single-doc `add` records"),
        ("batched", f"{b['records']:,} `add_many` records × {per} docs"),
    ):
        x = res[key]
        for what, t in (
            ("`mmwal.Reader(path)`", "reader_open"),
            ("`sum(1 for _ in mmwal.replay(path))`", "replay"),
            ('`mmwal.replay(path, fields=("id", "embedding"))`', "replay_ids"),
        ):
            tt = x[{"reader_open": "reader_open_s", "replay": "replay_iter_s"}.get(t, f"{t}_s")]
            rows.append(
                [
                    label,
                    what,
                    f"{tt['median']:.3f} s",
                    f"{tt['min']:.3f} – {tt['max']:.3f} s",
                    W.fmt_rate(x[f"{t}_records_per_s"]),
                    W.fmt_rate(x[f"{t}_docs_per_s"]),
                    f"{x[f'{t}_MB_per_s']:,.0f}",
                ]
            )
    tgt_single = s["reader_open_records_per_s"] >= 300_000
    tgt_batch = b["reader_open_MB_per_s"] >= 1000
    res["target"] = {
        "single_met_reader": tgt_single,
        "single_met_replay": s["replay_records_per_s"] >= 300_000,
        "batched_met_reader": tgt_batch,
        "batched_met_replay": b["replay_MB_per_s"] >= 1000,
        "single_met_replay_ids": s["replay_ids_records_per_s"] >= 300_000,
        "batched_met_replay_ids": b["replay_ids_MB_per_s"] >= 1000,
    }
    md = [
        "### 3. Log replay (no checkpoint: the whole log is the tail)",
        "",
        W.md_table(
            [
                "log",
                "operation",
                "median",
                "min – max",
                "records/s",
                "docs/s",
                "MB/s of segment bytes",
            ],
            rows,
        ),
        "",
        f"Segment bytes: single {W.fmt_mib(s['segment_bytes'])}, batched "
        f"{W.fmt_mib(b['segment_bytes'])} (page cache warm). One child process, one "
        f"unmeasured warm-up round, then {a.rep_replay} rounds (median). "
        "Targets: ≥ 300k single-doc records/s → Reader "
        f"**{W.fmt_rate(s['reader_open_records_per_s'])}/s "
        f"({s['reader_open_records_per_s'] / 300_000:.2f}× target)**, replay "
        f"**{W.fmt_rate(s['replay_records_per_s'])}/s "
        f"({s['replay_records_per_s'] / 300_000:.2f}×)**; batched ≥ 1 GB/s → Reader "
        f"**{b['reader_open_MB_per_s']:,.0f} MB/s "
        f"({b['reader_open_MB_per_s'] / 1000:.2f}×)**, replay "
        f"**{b['replay_MB_per_s']:,.0f} MB/s ({b['replay_MB_per_s'] / 1000:.2f}×)**; "
        "ids and vectors only: "
        f"**{W.fmt_rate(s['replay_ids_records_per_s'])}/s "
        f"({s['replay_ids_records_per_s'] / 300_000:.2f}×)** single, "
        f"**{b['replay_ids_MB_per_s']:,.0f} MB/s ({b['replay_ids_MB_per_s'] / 1000:.2f}×)** "
        "batched.",
    ]
    return res, "\n".join(md)


def case_ckpt(a: argparse.Namespace, st: Stores) -> tuple[dict[str, Any], str]:
    import mmwal

    work = os.path.join(a.data, "work")
    res: dict[str, Any] = {"full": {}, "incremental": {}, "delta": a.delta}
    for n in a.sizes:
        src_log, src_ckpt = st.log(n), st.ckpt(n)
        for kind in ("full", "incremental"):
            runs = []
            for rep in range(a.rep_ckpt):
                W.log(f"ckpt: {kind}, {W.fmt_n(n)} docs, run {rep + 1}/{a.rep_ckpt}")
                shutil.rmtree(work, ignore_errors=True)
                try:
                    if kind == "full":
                        W.copy_store(src_log, work)
                    else:
                        W.copy_store(src_ckpt, work)
                        ids, vecs, contents, metas = W.make_docs(n, a.delta)
                        with mmwal.Store(work, durability="os") as s:
                            for i in range(0, a.delta, W.BATCH):
                                j = min(a.delta, i + W.BATCH)
                                s.add_many(ids[i:j], vecs[i:j], contents[i:j], metas[i:j])
                    os.sync()  # the copy's dirty pages must not be flushed by our fsyncs
                    out = W.run_child("checkpoint", work, timeout=3600)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                want = n if kind == "full" else n + a.delta
                assert out["documents"] == want, out
                runs.append(out)
            docs = n if kind == "full" else n + a.delta
            t = W.summarize([r["seconds"] for r in runs])
            kib = 1024
            res[kind][n] = {
                "seconds": t,
                "docs": docs,
                "docs_per_s": docs / t["median"],
                "baseline_rss": W.summarize([r["rss_before_kib"] * kib for r in runs]),
                "peak_rss": W.summarize([r["hwm_after_kib"] * kib for r in runs]),
                "peak_minus_baseline": W.summarize(
                    [(r["hwm_after_kib"] - r["rss_before_kib"]) * kib for r in runs]
                ),
                "ru_maxrss_before": W.summarize([r["base_maxrss_kib"] * kib for r in runs]),
                "ru_maxrss_after": W.summarize([r["peak_maxrss_kib"] * kib for r in runs]),
                "ru_maxrss_delta": W.summarize(
                    [(r["peak_maxrss_kib"] - r["base_maxrss_kib"]) * kib for r in runs]
                ),
                "runs": runs,
            }
    rows = []
    for kind in ("full", "incremental"):
        for n in a.sizes:
            x = res[kind][n]
            label = (
                f"{W.fmt_n(n)} docs, all in the log"
                if kind == "full"
                else f"{W.fmt_n(n)} checkpointed + {W.fmt_n(a.delta)} in the log"
            )
            t = x["seconds"]
            rows.append(
                [
                    label,
                    f"{t['median']:.2f} s",
                    f"{t['min']:.2f} – {t['max']:.2f} s",
                    W.fmt_rate(x["docs_per_s"]),
                    W.fmt_mib(x["baseline_rss"]["median"]),
                    W.fmt_mib(x["peak_rss"]["median"]),
                    W.fmt_mib(x["peak_minus_baseline"]["median"]),
                    f"{W.fmt_mib(x['ru_maxrss_before']['median'])} → "
                    f"{W.fmt_mib(x['ru_maxrss_after']['median'])}",
                ]
            )
    small, big = min(a.sizes), max(a.sizes)
    inc = res["incremental"]
    grow = inc[big]["peak_minus_baseline"]["median"] - inc[small]["peak_minus_baseline"]["median"]
    full_grow = (
        res["full"][big]["peak_minus_baseline"]["median"]
        - res["full"][small]["peak_minus_baseline"]["median"]
    )
    met = grow < 64 * 2**20
    res["target"] = {
        "incremental_rss_growth_bytes": grow,
        "full_rss_growth_bytes": full_grow,
        "met_incremental": met,
    }
    md = [
        "### 4. Checkpoint build: time and peak RSS against store size",
        "",
        W.md_table(
            [
                "store before checkpoint()",
                "median",
                "min – max",
                "docs/s",
                "RSS after opening Store (baseline)",
                "peak RSS (VmHWM)",
                "peak − baseline",
                "ru_maxrss before → after",
            ],
            rows,
        ),
        "",
        f"Fresh child process per run ({a.rep_ckpt} runs, median) on a fresh copy of a "
        "cached store (checkpoint files hard-linked, log copied, `os.sync()` before the "
        "child starts); timed: `store.checkpoint()` including its fsyncs. docs/s counts "
        "the documents of the new checkpoint. Peak RSS: the child resets its high-water mark "
        "(`echo 5 > /proc/self/clear_refs`) after opening the Store, so VmHWM after the "
        "checkpoint is the peak during it; `ru_maxrss` is shown too but on Linux it "
        "starts at the parent's RSS (execve keeps the maxrss of the mm it replaces), so "
        "growth below that level does not show in it. Target: streaming, peak RSS independent of "
        f"store size → incremental peak − baseline grows by **{W.fmt_mib(grow)}** from "
        f"{W.fmt_n(small)} to {W.fmt_n(big)} (**{'met' if met else 'MISSED'}**); the "
        f"all-in-log case grows by {W.fmt_mib(full_grow)} (its delta *is* the store).",
    ]
    return res, "\n".join(md)


def case_search(a: argparse.Namespace, st: Stores) -> tuple[dict[str, Any], str]:
    res: dict[str, Any] = {}
    rows = []
    batch = 16
    for n in a.search_sizes:
        path = st.ckpt(n)
        W.log(f"search: {W.fmt_n(n)} docs")
        out = W.run_child("search", path, a.queries, batch, a.rep_batch, 10, timeout=1800)
        ms, ns = W.summarize(out["mmwal_single_s"]), W.summarize(out["numpy_single_s"])
        mb, nb = W.summarize(out["mmwal_batch_s"]), W.summarize(out["numpy_batch_s"])
        r = {
            "mmwal_single": ms,
            "numpy_single": ns,
            "mmwal_batch": mb,
            "numpy_batch": nb,
            "ratio_single": ns["median"] / ms["median"],
            "ratio_batch": nb["median"] / mb["median"],
            "np_load_s": out["np_load_s"],
            "agree_single": f"{out['single_agree']}/{out['single_total']}",
            "agree_batch": f"{out['batch_agree']}/{out['batch_total']}",
        }
        res[n] = r
        rows.append(
            [
                W.fmt_n(n),
                "1 query",
                W.fmt_ms(ms["median"]),
                W.fmt_ms(ns["median"]),
                f"{r['ratio_single']:.2f}×",
                r["agree_single"],
            ]
        )
        rows.append(
            [
                W.fmt_n(n),
                f"batch of {batch}",
                W.fmt_ms(mb["median"]),
                W.fmt_ms(nb["median"]),
                f"{r['ratio_batch']:.2f}×",
                r["agree_batch"],
            ]
        )
    worst = min(min(x["ratio_single"], x["ratio_batch"]) for x in res.values())
    met = worst >= 0.5
    res["target"] = {"worst_ratio": worst, "met": met}
    md = [
        "### 5. Exact search: mapped checkpoint vs numpy on the same matrix in RAM",
        "",
        W.md_table(
            ["docs", "query", "mmwal `r.search`", "numpy in RAM", "numpy / mmwal", "same top-10"],
            rows,
        ),
        "",
        f"dim 384, cosine, k=10. Single queries: median over {a.queries} queries after 3 "
        f"warm-up queries; batches: median over {a.rep_batch} batches after one warm-up. "
        "mmwal: `Reader.search` on the zero-copy mapped checkpoint, every page faulted in "
        "beforehand. numpy: `M = np.load(embeddings.npy)` in RAM, `norms` precomputed, "
        "`(M @ q) / (norms * |q|)`, `np.argpartition` + sort of the top k (no id lookup). "
        f"Target ≥ 0.5 → worst ratio **{worst:.2f}**, **{'met' if met else 'MISSED'}**.",
    ]
    return res, "\n".join(md)


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    W.install_signal_handlers()
    os.makedirs(a.data, exist_ok=True)
    info = W.machine_info(a.data)
    cmd = (
        "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
        if argv is None
        else "bench_read " + " ".join(argv)
    )
    print("## mmwal read-side benchmark\n")
    print(f"Command: `{cmd}`\n")
    print(W.md_table(["", ""], [[k, f"{v}"] for k, v in info.items()]) + "\n", flush=True)
    st = Stores(a.data, a.rebuild)
    results: dict[str, Any] = {
        "command": cmd,
        "machine": info,
        "args": {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, list, bool))},
        "sections": {},
    }
    # Build everything first so the cases are not interleaved with builds.
    need: list[Any] = []
    if {"open", "ckpt"} & set(a.sections):
        need += [lambda n=n: st.ckpt(n) for n in a.sizes]
    if "ckpt" in a.sections:
        need += [lambda n=n: st.log(n) for n in a.sizes]
    if "pss" in a.sections:
        need.append(lambda: st.ckpt(a.pss_docs))
    if "search" in a.sections:
        need += [lambda n=n: st.ckpt(n) for n in a.search_sizes]
    if "replay" in a.sections:
        need += [
            lambda: st.single(a.replay_docs),
            lambda: st.batched(max(1, a.replay_docs // 1000), 1000),
        ]
    t0 = time.perf_counter()
    for f in need:
        f()
    os.sync()
    W.log(f"stores ready ({time.perf_counter() - t0:.1f} s)")
    print(case_build_table(st) + "\n", flush=True)
    results["stores"] = st.info
    cases = {
        "open": case_open,
        "pss": case_pss,
        "search": case_search,
        "replay": case_replay,
        "ckpt": case_ckpt,
    }
    t_all = time.perf_counter()
    try:
        for name in SECTIONS:
            if name not in a.sections:
                continue
            t = time.perf_counter()
            res, md = cases[name](a, st)
            res["section_s"] = time.perf_counter() - t
            results["sections"][name] = res
            print(md + "\n", flush=True)
    finally:
        W._reap_all()
        results["machine"]["loadavg_end"] = os.getloadavg()
        results["total_s"] = time.perf_counter() - t_all
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1, default=str)
    print(f"Load average at the end: {os.getloadavg()}; cases took {results['total_s']:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
