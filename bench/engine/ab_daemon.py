#!/usr/bin/env python3
"""Two iceblkd builds side by side: the same `iceblk bench` workloads against each,
interleaved round by round, images on tmpfs. Prints, per workload, IOPS and the
daemon's CPU per request (utime + stime of all its threads, from /proc/PID/stat),
and the after/before ratios. CPU per request is what a loaded, shared machine
disturbs least; IOPS are printed too but depend on what the other tenants leave.

    bench/engine/ab_daemon.py --before /work/main/build/test/tools/iceblkd/iceblkd \\
        --after build/test/tools/iceblkd/iceblkd --iceblk build/test/tools/iceblk/iceblk
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

WORKLOADS = [  # (label, rw, bs, iodepth, encrypt)
    ("4K randread QD32 ICE", "randread", "4K", 32, True),
    ("4K randread QD32 plain", "randread", "4K", 32, False),
    ("128K read QD8 ICE", "read", "128K", 8, True),
    ("128K write QD8 ICE", "write", "128K", 8, True),
]
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def wait_socket(path: Path, proc: subprocess.Popen) -> None:
    for _ in range(200):
        if path.exists():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"iceblkd exited: rc {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{path} never appeared")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--iceblk", required=True)
    ap.add_argument("--runtime", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-size", default="256M")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="iceblk-ab-", dir="/dev/shm"))
    daemons = {}
    try:
        for tag, binary in (("before", a.before), ("after", a.after)):
            sock = work / f"{tag}.sock"
            log = open(work / f"{tag}.log", "w")
            p = subprocess.Popen([binary, "--socket", str(sock), "--image", str(work / f"{tag}.img"), "--size",
                                  a.image_size, "--io-engine", "io_uring", "--log-level", "warn"],
                                 stdout=log, stderr=subprocess.STDOUT)
            wait_socket(sock, p)
            daemons[tag] = (p, sock)
        # Fill both images once so reads hit real data.
        for tag, (p, sock) in daemons.items():
            subprocess.run([a.iceblk, "bench", "--socket", str(sock), "--rw", "write", "--bs", "1M", "--iodepth",
                            "4", "--size", a.image_size, "--quiet", "--json"], check=True, capture_output=True)
        results = {(w[0], tag): [] for w in WORKLOADS for tag in daemons}
        for r in range(a.rounds):
            for label, rw, bs, qd, enc in WORKLOADS:
                for tag in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    p, sock = daemons[tag]
                    argv = [a.iceblk, "bench", "--socket", str(sock), "--rw", rw, "--bs", bs, "--iodepth", str(qd),
                            "--runtime", f"{a.runtime:g}", "--json", "--quiet"]
                    if enc:
                        argv += ["--encrypt", "on", "--algorithm", "aes-256-xts", "--data-unit-size", "4096"]
                    else:
                        argv += ["--plain"]
                    c0 = cpu_seconds(p.pid)
                    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
                    cpu = cpu_seconds(p.pid) - c0
                    j = json.loads(out)
                    results[(label, tag)].append((j["iops"], j["mb_per_s"], cpu * 1e6 / max(1, j["ios"])))
        print(f"iceblk bench, 1 queue, {a.runtime:g} s x {a.rounds} rounds, interleaved; medians. "
              f"before = {a.before}, after = {a.after}")
        print(f"| workload | before IOPS | after IOPS | before CPU µs/IO | after CPU µs/IO | after/before IOPS | "
              f"after/before CPU per IO |")
        print("|---|---|---|---|---|---|---|")
        for label, *_ in WORKLOADS:
            b = results[(label, "before")]
            f = results[(label, "after")]
            bi, fi = statistics.median(x[0] for x in b), statistics.median(x[0] for x in f)
            bc, fc = statistics.median(x[2] for x in b), statistics.median(x[2] for x in f)
            print(f"| {label} | {bi:,.0f} | {fi:,.0f} | {bc:.2f} | {fc:.2f} | {fi / bi:.2f} | {fc / bc:.2f} |")
    finally:
        for p, _ in daemons.values():
            p.terminate()
            p.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
