#!/usr/bin/env python3
"""Profile iceblkd's ICE data path under a short `iceblk bench` load.

  /usr/bin/python3 bench/e2e/profile_ice.py --build-dir build/bench [--tool perf|callgrind|both]

perf: `perf record -e cpu-clock -g` on the running daemon (time, including the
kernel: syscalls, io_uring, eventfd wake-ups, page faults). Works where hardware
counters do not (VMs), since cpu-clock is a software event.
callgrind: iceblkd under `valgrind --tool=callgrind` (user-space instructions only,
exact and repeatable; kernel time is invisible to it).

Each tool profiles the two ICE workloads that matter for the targets: 4 KiB random
read at QD 32 and 128 KiB sequential read at QD 8 (AES-256-XTS, 4096-byte units).
Writes the reports to --out and prints the top symbols.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_bench as eb  # noqa: E402

LOADS = [eb.WORKLOADS[1], eb.WORKLOADS[3]]  # 4K randread QD32, 128K seq read QD8


def drive(iceblk: Path, sock: Path, w: eb.Workload, seconds: float) -> str:
    argv = [str(iceblk), "bench", "--socket", str(sock), "--rw", w.rw, "--bs", w.bs, "--iodepth",
            str(w.iodepth), "--queues", "1", "--runtime", f"{seconds:g}", "--quiet", "--encrypt", "on",
            "--algorithm", eb.ALGORITHM, "--data-unit-size", str(eb.DATA_UNIT)]
    p = subprocess.run(argv, text=True, capture_output=True, timeout=seconds * 20 + 120)
    if p.returncode != 0:
        raise RuntimeError(f"iceblk bench failed: {p.stderr.strip()}")
    return p.stdout.strip()


def perf_profile(iceblkd: Path, iceblk: Path, img: Path, work: Path, out: Path, seconds: float) -> None:
    cfg = eb.CONFIGS[1]
    for w in LOADS:
        sock = work / "perf.sock"
        dev = eb.Device(cfg, eb.iceblkd_argv(iceblkd, img, sock, True, "auto"), sock, out / f"perf-{w.key}.daemon.log")
        dev.start()
        data = out / f"perf-{w.key}.data"
        # System-wide (-a), filtered by pid in the report: `-p PID` misses the vring
        # worker threads, which start only when the driver connects.
        rec = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", "999", "-g",
                                "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        pid = dev.pid
        try:
            time.sleep(0.5)
            res = drive(iceblk, sock, w, seconds)
        finally:
            rec.send_signal(2)  # SIGINT: perf writes the file and exits
            rec.wait(timeout=60)
            dev.stop()
        report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--pid", str(pid),
                                 "--percentage", "relative", "--sort", "dso,symbol", "-g", "none",
                                 "--percent-limit", "0.7"], text=True, capture_output=True).stdout
        (out / f"perf-{w.key}.txt").write_text(res + "\n\n" + report)
        print(f"== perf cpu-clock, iceblkd ICE, {w.label} ({res.splitlines()[2].strip() if res else ''})")
        print("\n".join(l for l in report.splitlines() if l.strip() and not l.startswith("#"))[:4000])


def callgrind_profile(iceblkd: Path, iceblk: Path, img: Path, work: Path, out: Path, seconds: float) -> None:
    cfg = eb.CONFIGS[1]
    for w in LOADS:
        sock = work / "cg.sock"
        cg = out / f"callgrind-{w.key}.out"
        # Count only inside the queue worker's request handling (not start-up, OpenSSL
        # init, the vhost-user handshake): instructions per request are then exact.
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", "--dump-instr=no",
                "--toggle-collect=*QueueProcessor::process*",
                *eb.iceblkd_argv(iceblkd, img, sock, True, "auto")]
        dev = eb.Device(cfg, argv, sock, out / f"callgrind-{w.key}.daemon.log")
        dev.start(timeout=120)
        try:
            res = drive(iceblk, sock, w, seconds)
        finally:
            dev.stop()
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", str(cg)], text=True,
                             capture_output=True).stdout
        incl = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(cg)], text=True,
                              capture_output=True).stdout
        (out / f"callgrind-{w.key}.txt").write_text(res + "\n\n" + ann + "\n\n=== inclusive ===\n" + incl)
        total = next((int(l.split()[0].replace(",", "")) for l in ann.splitlines() if "PROGRAM TOTALS" in l), 0)
        ios = next((int(l.split()[1]) for l in res.splitlines() if l.strip().startswith("ios:")), 0)
        per_io = f"{total / ios:,.0f} instructions per request" if ios else ""
        print(f"== callgrind (user-space instructions in QueueProcessor::process), iceblkd ICE, {w.label}: {per_io}")
        print("\n".join(ann.splitlines()[:45]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("ICEBLK_BUILD_DIR", str(eb.REPO / "build" / "bench")))
    ap.add_argument("--tool", choices=["perf", "callgrind", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=5, help="load per workload (callgrind: under valgrind)")
    ap.add_argument("--size", type=eb.parse_size, default=eb.parse_size("256M"))
    ap.add_argument("--workdir", default="/dev/shm")
    ap.add_argument("--out", default=str(eb.REPO / "out" / "e2e-profile"))
    args = ap.parse_args()
    build = Path(args.build_dir)
    iceblkd, iceblk = build / "tools" / "iceblkd" / "iceblkd", build / "tools" / "iceblk" / "iceblk"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="iceblk-prof-", dir=args.workdir))
    try:
        img = work / "ice.img"
        eb.make_raw_image(img, args.size)
        if args.tool in ("perf", "both"):
            if shutil.which("perf") is None:
                print("perf not installed; skipping", file=sys.stderr)
            else:
                perf_profile(iceblkd, iceblk, img, work, out, args.seconds)
        if args.tool in ("callgrind", "both"):
            callgrind_profile(iceblkd, iceblk, img, work, out, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"reports in {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
