#!/usr/bin/env python3
"""Unit tests of the e2e benchmark's plumbing that needs no device: openssl speed
parsing, medians, ratios against the targets, memory verdicts, the table, the
generated docs section (markers) and the chart. Run: python3 -m unittest discover
-s bench/e2e (also registered with ctest as e2e_bench_plumbing)."""

import copy
import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_bench as eb  # noqa: E402

# Real `openssl speed -evp aes-256-xts -seconds 1 -bytes 4096 -mr` output (OpenSSL 3.0).
OPENSSL_MR_ONE = """\
+DT:AES-256-XTS:1:4096
+R:69699:AES-256-XTS:0.100000
+H:4096
+F:25:AES-256-XTS:2854871040.00
"""
# Multi-size table (no -bytes).
OPENSSL_MR_MULTI = """\
+H:16:64:256:1024:8192:16384
+F:25:AES-256-XTS:1000.00:2000.00:3000.00:4000.00:5000.00:6000.00
"""


def cell(iops, bs, p99=100.0, cpu_us=10.0):
    return {"iops": iops, "mb_per_s": iops * bs / 1e6, "p50_us": p99 / 2, "p99_us": p99, "p99_9_us": p99 * 2,
            "device_cpu_us_per_io": cpu_us, "driver_cpu_us_per_io": cpu_us / 2,
            "rounds": 1, "iops_min": iops, "iops_max": iops}


def fake_doc(ice_factor=0.95, plain_vs_qsd=1.3, ice_vs_luks=2.0, seq_mb=2000.0, ceiling_mb=2800.0):
    cells = {}
    for w in eb.WORKLOADS:
        base = 100000.0 if w.bs_bytes == 4096 else seq_mb * 1e6 / w.bs_bytes
        qsd = base / plain_vs_qsd
        ice = base * ice_factor if w.key != "read_128k_qd8" else seq_mb * 1e6 / w.bs_bytes
        cells[w.key] = {"iceblkd_plain": cell(base, w.bs_bytes), "iceblkd_ice": cell(ice, w.bs_bytes),
                        "qsd_raw": cell(qsd, w.bs_bytes), "qsd_luks": cell(ice / ice_vs_luks, w.bs_bytes)}
    ceiling = {"command": "openssl speed -evp aes-256-xts -seconds 3 -bytes 4096", "bytes": 4096,
               "mb_per_s": ceiling_mb}
    mem = {"VmRSS": 20000, "VmHWM": 24000, "RssAnon": 8000, "RssFile": 6000, "RssShmem": 6000}
    runs = [{"config": c.key, "workload": w.key, "mem_kib": dict(mem)} for c in eb.CONFIGS for w in eb.WORKLOADS]
    doc = {
        "date": "2025-01-01 00:00", "command": "bench/run_e2e_bench.sh",
        "machine": {"nproc": 2, "cpu": "Test CPU", "aes_ni": True, "vaes": False, "mem_total_mib": 4096,
                    "kernel": "6.1", "openssl": "OpenSSL 3.0", "qemu": "qsd 7.2", "git": "abc1234",
                    "loadavg_start": 1.0, "loadavg_end": 1.5},
        "args": {"runtime": 5.0, "rounds": 1, "size": 1 << 30, "workdir": "/dev/shm", "io_engine": "auto",
                 "qsd_aio": "io_uring"},
        "cells": cells, "ceiling": ceiling, "runs": runs,
    }
    doc["ratios"] = eb.compute_ratios(cells, ceiling)
    doc["memory"] = eb.memory_summary(cells, runs, 32 * 4096)
    return doc


def with_poll(doc, p50_off=20.0, p50_on=14.0, us=50):
    """Add the QD1 polling comparison: ICE and plain, without and with --poll-us."""
    pc = {}
    for w in eb.POLL_WORKLOADS:
        pc[w.key] = {}
        for c in eb.POLL_CONFIGS:
            x = cell(1e6 / (p50_on if c.poll else p50_off), 4096, p99=(p50_on if c.poll else p50_off) * 2)
            x["p50_us"] = p50_on if c.poll else p50_off
            pc[w.key][c.key] = x
    doc["poll"] = {"poll_us": us, "workloads": [w.__dict__ for w in eb.POLL_WORKLOADS],
                   "configs": [c.__dict__ for c in eb.POLL_CONFIGS], "cells": pc, "runs": []}
    return doc


class OpensslParsing(unittest.TestCase):
    def test_single_size(self):
        self.assertEqual(eb.parse_openssl_mr(OPENSSL_MR_ONE), {4096: 2854871040.0})

    def test_multi_size(self):
        rates = eb.parse_openssl_mr(OPENSSL_MR_MULTI)
        self.assertEqual(sorted(rates), [16, 64, 256, 1024, 8192, 16384])
        self.assertEqual(rates[8192], 5000.0)

    def test_garbage_is_an_error(self):
        with self.assertRaises(ValueError):
            eb.parse_openssl_mr("Doing aes-256-xts for 3s on 4096 size blocks\n")
        with self.assertRaises(ValueError):  # sizes and rates disagree
            eb.parse_openssl_mr("+H:16:64\n+F:1:X:1.0\n")


class Sizes(unittest.TestCase):
    def test_parse_size(self):
        self.assertEqual(eb.parse_size("1G"), 1 << 30)
        self.assertEqual(eb.parse_size("512M"), 512 << 20)
        self.assertEqual(eb.parse_size("64KiB"), 64 << 10)
        self.assertEqual(eb.parse_size("4096"), 4096)
        with self.assertRaises(Exception):
            eb.parse_size("1.5G")


class Aggregation(unittest.TestCase):
    def test_median_of_rounds(self):
        s = [{"iops": v, "mb_per_s": v / 10, "p50_us": 1, "p99_us": v / 100, "p99_9_us": 3} for v in (300, 100, 200)]
        m = eb.median_cell(s)
        self.assertEqual(m["iops"], 200)
        self.assertEqual(m["p99_us"], 2)
        self.assertEqual((m["iops_min"], m["iops_max"], m["rounds"]), (100, 300, 3))

    def test_ratios_pass_when_targets_met(self):
        doc = fake_doc()
        by = {r["name"]: r for r in doc["ratios"]}
        self.assertEqual(len(doc["ratios"]), 2 + len(eb.WORKLOADS) + 1)
        self.assertAlmostEqual(by["ICE / plain (iceblkd), 4K randread QD32"]["value"], 0.95)
        self.assertAlmostEqual(by["iceblkd plain / qsd raw, 4K randread QD32"]["value"], 1.3)
        seq = by["ICE 128K seq read MB/s / OpenSSL aes-256-xts 1 core"]
        self.assertAlmostEqual(seq["value"], 2000.0 / 2800.0)
        self.assertTrue(all(r["pass"] for r in doc["ratios"]))

    def test_ratios_fail_when_targets_missed(self):
        doc = fake_doc(ice_factor=0.8, plain_vs_qsd=1.1, ice_vs_luks=1.4, seq_mb=1000.0)
        self.assertFalse(any(r["pass"] for r in doc["ratios"]))

    def test_zero_denominator_is_not_a_pass(self):
        doc = fake_doc()
        cells = copy.deepcopy(doc["cells"])
        cells["randread_4k_qd32"]["iceblkd_plain"]["iops"] = 0
        r = eb.compute_ratios(cells, doc["ceiling"])[0]
        self.assertIsNone(r["value"])
        self.assertFalse(r["pass"])

    def test_per_device_core_ratios(self):
        doc = fake_doc(ceiling_mb=2800.0)
        cells = copy.deepcopy(doc["cells"])
        cells["read_128k_qd8"]["iceblkd_ice"]["device_cpu_us_per_io"] = 65.536  # 2000 MB/s per core
        cells["randread_4k_qd32"]["iceblkd_plain"]["device_cpu_us_per_io"] = 4.0
        cells["randread_4k_qd32"]["iceblkd_ice"]["device_cpu_us_per_io"] = 12.5
        cells["randread_4k_qd32"]["qsd_raw"]["device_cpu_us_per_io"] = 6.0
        cells["randread_4k_qd32"]["qsd_luks"]["device_cpu_us_per_io"] = 25.0
        by = {r["name"]: r for r in eb.compute_ratios(cells, doc["ceiling"])}
        seq = by["ICE 128K seq read MB/s / OpenSSL aes-256-xts 1 core"]
        self.assertAlmostEqual(seq["value_cpu"], 2000.0 / 2800.0)
        self.assertTrue(seq["pass_cpu"])
        ice_plain = by["ICE / plain (iceblkd), 4K randread QD32"]
        self.assertAlmostEqual(ice_plain["value_cpu"], 4.0 / 12.5)  # less CPU per IO = more IOPS per core
        self.assertFalse(ice_plain["pass_cpu"])
        self.assertTrue(ice_plain["pass"])  # the wall-clock verdict is separate
        self.assertAlmostEqual(by["iceblkd plain / qsd raw, 4K randread QD32"]["value_cpu"], 1.5)
        self.assertAlmostEqual(by["iceblkd ICE / qsd LUKS, 4K randread QD32"]["value_cpu"], 2.0)

    def test_memory_verdict(self):
        doc = fake_doc()
        self.assertTrue(doc["memory"]["iceblkd_ice"]["pass"])
        self.assertIsNone(doc["memory"]["qsd_raw"]["pass"])  # no target for the reference
        runs = copy.deepcopy(doc["runs"])
        runs[0]["mem_kib"]["VmHWM"] = 70 * 1024  # iceblkd_plain, first workload
        mem = eb.memory_summary(doc["cells"], runs, 32 * 4096)
        self.assertEqual(mem["iceblkd_plain"]["VmHWM"], 70 * 1024)
        self.assertFalse(mem["iceblkd_plain"]["pass"])  # 70 MiB > 64 MiB + 128 KiB


class ProcReading(unittest.TestCase):
    def test_own_process(self):
        import os
        import time
        c0 = eb.proc_cpu_seconds(os.getpid())
        t = time.process_time()
        while time.process_time() - t < 0.2:
            pass
        self.assertGreater(eb.proc_cpu_seconds(os.getpid()) - c0, 0.1)
        st = eb.proc_status(os.getpid())
        self.assertGreater(st["VmRSS"], 0)
        self.assertGreaterEqual(st["VmHWM"], st["VmRSS"])

    def test_gone_process(self):
        import subprocess
        p = subprocess.Popen(["true"])
        p.wait()
        self.assertEqual(eb.proc_status(p.pid), {})
        self.assertEqual(eb.proc_cpu_seconds(p.pid), 0.0)

    def test_tmpfs_detection(self):
        self.assertTrue(eb.is_tmpfs(Path("/dev/shm")))
        self.assertFalse(eb.is_tmpfs(Path("/proc")))


class Rendering(unittest.TestCase):
    def test_table_names_every_cell_and_verdict(self):
        doc = fake_doc(ice_vs_luks=1.4)
        t = eb.render_table(doc)
        for w in eb.WORKLOADS:
            self.assertIn(w.label, t)
        for c in eb.CONFIGS:
            self.assertIn(c.label, t)
        self.assertIn("MISSED", t)
        self.assertIn("2,800 MB/s", t)

    def test_polling_comparison_side_by_side(self):
        doc = with_poll(fake_doc())
        rows = eb.poll_rows(doc)
        self.assertEqual(len(rows), 2 * len(eb.POLL_WORKLOADS))
        self.assertEqual({r["mode"] for r in rows}, {"plain", "ICE"})
        self.assertAlmostEqual(rows[0]["p50_ratio"], 14.0 / 20.0)
        t = eb.render_table(doc)
        self.assertIn("--poll-us 50", t)
        self.assertIn("0.70x", t)
        md = eb.render_markdown(doc, None)
        self.assertIn("`iceblkd --poll-us 50`", md)
        self.assertIn("| 4K randread QD1 | ICE | 20.0 / 14.0 | 0.70 |", md)
        self.assertEqual(eb.poll_rows(fake_doc()), [])  # a run without it renders as before
        noted = dict(doc, note="Shared with five builds.")
        self.assertIn("**Note:** Shared with five builds.", eb.render_markdown(noted, None))
        self.assertNotIn("poll", eb.render_markdown(fake_doc(), None).lower().replace("polled", ""))

    def test_docs_markers_replace_only_the_generated_section(self):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "benchmarks.md"
            p.write_text("# Benchmarks\n\n## Engine vs raw OpenSSL\n\nkeep me\n")
            eb.update_docs(p, "first body")
            t1 = p.read_text()
            self.assertIn("keep me", t1)
            self.assertIn("## End to end: iceblkd vs qemu-storage-daemon", t1)
            self.assertIn("first body", t1)
            p.write_text(t1 + "\n## Profile\n\nhand-written\n")
            eb.update_docs(p, eb.render_markdown(fake_doc(), "img/x.png"))
            t2 = p.read_text()
            self.assertNotIn("first body", t2)
            self.assertIn("hand-written", t2)
            self.assertIn("keep me", t2)
            self.assertEqual(t2.count("## End to end"), 1)
            self.assertEqual(t2.count(eb.END_MARK), 1)
            self.assertIn("![iceblkd vs qemu-storage-daemon](img/x.png)", t2)
            self.assertIn("| 4K randread QD32 |", t2)

    def test_rbd_section_beside_the_file_section(self):
        doc = fake_doc()
        doc["backend"] = "rbd"
        doc["cluster"] = {"peak_rss_kib": {"mon.a": 30 * 1024, "osd.0": 900 * 1024}, "peak_rss_sum_kib": 930 * 1024,
                          "osd_bytes": 1 << 30}
        doc["ratios"] = eb.doc_ratios(doc)
        names = [r["name"] for r in doc["ratios"]]
        self.assertIn("ICE / plain (iceblkd), 4K randread QD32", names)
        self.assertIn("LUKS / raw (qsd), 128K seq write QD8", names)
        self.assertTrue(all(r["target"] is None and r["pass"] is None for r in doc["ratios"]))
        r = next(r for r in doc["ratios"] if r["name"] == "iceblkd ICE / qsd LUKS, 4K randread QD32")
        self.assertAlmostEqual(r["value"], 2.0)  # fake_doc: ice_vs_luks=2.0
        doc["memory"] = eb.memory_summary(doc["cells"], doc["runs"], 32 * 4096, "rbd")
        self.assertTrue(all(m["pass"] is None for m in doc["memory"].values()))
        t = eb.render_table(doc)
        self.assertIn("dev cluster resident memory", t)
        self.assertNotIn("MISSED", t)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "benchmarks.md"
            p.write_text("# Benchmarks\n")
            eb.update_docs(p, eb.render_markdown(fake_doc(), None))
            eb.update_docs(p, eb.render_markdown(doc, "img/e2e_bench_rbd.png"), "rbd")
            eb.update_docs(p, eb.render_markdown(doc, "img/e2e_bench_rbd.png"), "rbd")  # replaced, not added
            t2 = p.read_text()
            self.assertEqual(t2.count(eb.END_MARK), 1)
            self.assertEqual(t2.count(eb.RBD_END_MARK), 1)
            self.assertEqual(t2.count("## End to end on Ceph RBD"), 1)
            self.assertIn("one-node Ceph dev cluster", t2)
            self.assertIn("930 MiB", t2)
            self.assertIn("![iceblkd vs qemu-storage-daemon on RBD](img/e2e_bench_rbd.png)", t2)

    def test_chart(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("python3-matplotlib not installed (scripts/install-deps.sh --bench)")
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "c.png"
            self.assertTrue(eb.write_png(fake_doc(), p))
            self.assertEqual(p.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
            self.assertTrue(eb.write_png(with_poll(fake_doc()), p))  # with the QD1 polling panel
            self.assertEqual(p.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()


class LuksImageCreation(unittest.TestCase):
    """make_luks_image retries qemu-img's PBKDF calibration failure, and only that."""

    def run_with_fake_qemu_img(self, failures: int, message: str):
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            count = tmp / "attempts"
            fake = tmp / "qemu-img"
            # Fails `failures` times with `message`, then creates the image file.
            fake.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); n=$((n + 1)); echo $n >{count}
if [ $n -le {failures} ]; then echo "qemu-img: {message}" >&2; exit 1; fi
eval img=\\${{$(($# - 1))}}; : >"$img"
""")
            fake.chmod(0o755)
            img = tmp / "x.luks"
            old_path = os.environ["PATH"]
            os.environ["PATH"] = f"{tmp}:{old_path}"
            try:
                err = None
                try:
                    eb.make_luks_image(img, 1 << 20, tmp / "secret")
                except RuntimeError as e:
                    err = e
                return int(count.read_text()), img.exists(), err
            finally:
                os.environ["PATH"] = old_path

    def test_calibration_failure_is_retried(self):
        attempts, made, err = self.run_with_fake_qemu_img(2, eb.PBKDF_CALIBRATION_ERROR)
        self.assertIsNone(err)
        self.assertEqual(attempts, 3)
        self.assertTrue(made)

    def test_other_failures_are_not_retried(self):
        attempts, made, err = self.run_with_fake_qemu_img(1, "Could not open: Permission denied")
        self.assertEqual(attempts, 1)
        self.assertIsNotNone(err)
        self.assertIn("Permission denied", str(err))

    def test_gives_up_after_the_last_attempt(self):
        attempts, _, err = self.run_with_fake_qemu_img(99, eb.PBKDF_CALIBRATION_ERROR)
        self.assertEqual(attempts, eb.LUKS_CREATE_ATTEMPTS)
        self.assertIn(eb.PBKDF_CALIBRATION_ERROR, str(err))
