#!/usr/bin/env python3
"""Unit tests of the scale benchmark's device-free plumbing: medians and the flatness,
key-churn and memory verdicts, the table, and the generated docs section (its own
markers, next to the e2e section). Part of ctest's e2e_bench_plumbing."""

import os
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_bench as eb  # noqa: E402
import scale_bench as sb  # noqa: E402


def run(n, q, bs, cpu_us, rnd=0, bs_bytes=4096):
    ios = 100000
    return {"exports": n, "queues": q, "bs": bs, "bs_bytes": bs_bytes, "ios": ios, "iops": ios / 2.0,
            "mb_per_s": ios * bs_bytes / 2e6, "p99_us": 100.0, "cpu_us_per_io": cpu_us,
            "cpu_ns_per_byte": cpu_us * 1e3 / bs_bytes, "round": rnd}


def churn(c, iops, rnd=0, mode=None, pinned=False):
    mode = mode or ("loop" if c else "off")
    return {"churn": c, "mode": mode, "pinned": pinned, "io_exports": 3, "iops": iops, "ios": int(iops * 2),
            "pairs_per_s": (100.0 if mode == "rate" else 5000.0) if c else 0.0, "cpu_us_per_io": 10.0, "round": rnd}


MEM = {"VmRSS": 30000, "VmHWM": 40000, "RssAnon": 20000, "RssFile": 5000, "RssShmem": 15000}


def fake_doc(cpu16=10.5, churn_iops=98000.0, mem=MEM, pinned_iops=(50000.0, 49000.0)):
    runs = []
    for rnd in range(2):
        for q in (1, 4):
            runs += [run(1, q, "4K", 10.0 + rnd * 0.2, rnd), run(4, q, "4K", 10.2, rnd), run(16, q, "4K", cpu16, rnd)]
    churn_runs = [churn(False, 100000.0), churn(True, churn_iops), churn(True, churn_iops, 1),
                  churn(False, 100000.0, 1), churn(True, 99000.0, 0, "rate"), churn(True, 99000.0, 1, "rate")]
    if pinned_iops:
        churn_runs += [churn(False, pinned_iops[0], 0, pinned=True), churn(True, pinned_iops[1], 0, pinned=True)]
    doc = {"date": "2026-01-01 00:00", "command": "bench/run_e2e_bench.sh --scale", "note": "Shared machine.",
           "machine": {"nproc": 2, "cpu": "Test CPU", "kernel": "6.1", "git": "abc1234", "loadavg_start": 1.0,
                       "loadavg_end": 2.0},
           "args": {"runtime": 2.0, "rounds": 2, "size": 64 << 20, "exports": [1, 4, 16], "queues": [1, 4],
                    "sizes": ["4K"], "iodepth": 4},
           "runs": runs, "churn_runs": churn_runs}
    doc["summary"] = sb.summarize(runs, churn_runs, dict(mem), [1, 4, 16])
    return doc


class Verdicts(unittest.TestCase):
    def test_flat_within_ten_percent_is_met(self):
        s = fake_doc(cpu16=10.5)["summary"]
        self.assertEqual(len(s["points"]), 2)
        p = s["points"][0]
        self.assertAlmostEqual(p["by_exports"]["1"]["cpu_us_per_io"], 10.1)  # median of 10.0 and 10.2
        self.assertAlmostEqual(p["flat_ratio"], 10.5 / 10.1)
        self.assertTrue(s["flat"]["pass"])
        self.assertEqual((s["flat"]["met"], s["flat"]["points"]), (2, 2))

    def test_flat_missed_when_sixteen_exports_cost_more(self):
        s = fake_doc(cpu16=12.0)["summary"]
        self.assertFalse(s["flat"]["pass"])
        self.assertAlmostEqual(s["flat"]["worst"], 12.0 / 10.1)

    def test_spread_over_rounds(self):
        s = fake_doc()["summary"]
        self.assertAlmostEqual(s["spread"]["worst"], 10.2 / 10.0)

    def test_churn_cost(self):
        self.assertAlmostEqual(fake_doc(churn_iops=98000.0)["summary"]["churn"]["cost"], 0.02)
        self.assertTrue(fake_doc(churn_iops=98000.0)["summary"]["churn"]["pass"])
        self.assertFalse(fake_doc(churn_iops=90000.0)["summary"]["churn"]["pass"])
        rate = fake_doc()["summary"]["churn_rate"]  # the rate-limited run, reported beside it
        self.assertAlmostEqual(rate["cost"], 0.01)
        self.assertEqual(rate["pairs_per_s"], 100.0)

    def test_pinned_churn_has_its_own_baseline(self):
        s = fake_doc(churn_iops=90000.0, pinned_iops=(50000.0, 49000.0))["summary"]
        # The pinned runs (I/O VMs on one CPU fewer) never mix with the unpinned ones.
        self.assertAlmostEqual(s["churn"]["iops_base"], 100000.0)
        self.assertAlmostEqual(s["churn"]["cost"], 0.10)
        self.assertAlmostEqual(s["churn_pinned"]["iops_base"], 50000.0)
        self.assertAlmostEqual(s["churn_pinned"]["cost"], 0.02)
        self.assertTrue(s["churn_pinned"]["pass"])
        self.assertFalse(fake_doc(pinned_iops=(50000.0, 45000.0))["summary"]["churn_pinned"]["pass"])
        self.assertNotIn("churn_pinned", fake_doc(pinned_iops=None)["summary"])

    def test_memory(self):
        m = fake_doc()["summary"]["memory"]
        self.assertTrue(m["pass"])
        self.assertEqual(m["private_kib"], 25000)
        big = dict(MEM, VmHWM=80 * 1024)
        self.assertFalse(fake_doc(mem=big)["summary"]["memory"]["pass"])


@unittest.skipUnless(len(os.sched_getaffinity(0)) >= 2, "needs 2 CPUs")
class Pinning(unittest.TestCase):
    """DaemonPinner on a real process: threads named like queue workers of one
    export go to its CPU, every other thread to the rest."""

    def test_pins_the_named_workers_apart_from_the_others(self):
        code = ("import ctypes,threading,time\n"
                "lib=ctypes.CDLL(None)\n"
                "def t(n):\n"
                "  lib.prctl(15, n.encode())\n"  # PR_SET_NAME
                "  time.sleep(30)\n"
                "for n in ('vq0:vm0','vq1:vm0','vq0:vm1','vq0:vm10'):\n"
                "  threading.Thread(target=t,args=(n,),daemon=True).start()\n"
                "print('ready',flush=True); time.sleep(30)\n")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "ready")
            time.sleep(0.2)
            io_cpus, own = sb.churn_cpus()
            with sb.DaemonPinner(p.pid, io_cpus, "vm0", own):
                time.sleep(0.1)
            by_name = {}
            for tid in os.listdir(f"/proc/{p.pid}/task"):
                comm = Path(f"/proc/{p.pid}/task/{tid}/comm").read_text().strip()
                by_name.setdefault(comm, set()).update(os.sched_getaffinity(int(tid)))
            self.assertEqual(by_name["vq0:vm0"], own)
            self.assertEqual(by_name["vq1:vm0"], own)
            self.assertEqual(by_name["vq0:vm1"], io_cpus)
            self.assertEqual(by_name["vq0:vm10"], io_cpus)  # not vm0's
            # An unpinned run puts every thread back on every CPU.
            with sb.DaemonPinner(p.pid, os.sched_getaffinity(0)):
                pass
            for tid in os.listdir(f"/proc/{p.pid}/task"):
                self.assertEqual(os.sched_getaffinity(int(tid)), os.sched_getaffinity(0))
        finally:
            p.kill()
            p.wait()


class Rendering(unittest.TestCase):
    def test_table_prints_every_target_with_its_verdict(self):
        t = sb.render_table(fake_doc(cpu16=12.0, churn_iops=90000.0))
        self.assertIn("q1/4K", t)
        self.assertIn("flat", t)
        self.assertIn("MISSED", t)
        self.assertIn("key churn", t)
        self.assertIn("10.0 %", t)
        self.assertIn("VmHWM with 16 exports", t)
        self.assertIn("limited to 100 pairs/s", t)
        self.assertIn("pinned to a CPU of their own", t)

    def test_docs_section_has_its_own_markers(self):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "benchmarks.md"
            p.write_text("# Benchmarks\n\nkeep me\n")
            eb.update_docs(p, "e2e body")
            sb.update_docs(p, sb.render_markdown(fake_doc()))
            sb.update_docs(p, sb.render_markdown(fake_doc(cpu16=12.0)))
            t = p.read_text()
            self.assertIn("keep me", t)
            self.assertIn("e2e body", t)
            self.assertEqual(t.count("## Scale: exports sharing one engine"), 1)
            self.assertEqual(t.count(sb.END_MARK), 1)
            self.assertIn("| q4/4K |", t)
            self.assertIn("**missed**", t)
            self.assertIn("limited to 100 pairs/s", t)
            self.assertIn("Shared machine.", t)


if __name__ == "__main__":
    unittest.main()
