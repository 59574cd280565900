#!/usr/bin/env python3
"""End-to-end benchmark: iceblkd (plain, ICE) next to qemu-storage-daemon (raw, LUKS).

One driver for every device (`iceblk bench`), one image size, every image on tmpfs.
Per workload the configurations run back to back (interleaved, round after round), so
machine noise hits all of them alike. Then the crypto ceiling (`openssl speed`), the
ratios against the targets of issue 7, iceblkd's resident memory under load, a table,
JSON, a PNG chart and the generated section of docs/benchmarks.md.

`--backend rbd`: the same configurations on Ceph RBD images instead of tmpfs files,
in a one-node dev cluster of the run's own (scripts/ceph-dev-cluster.sh, memstore
OSD on 127.0.0.1): iceblkd's librbd backend next to qemu-storage-daemon's
`driver=rbd` (raw, and `driver=luks` over it). Its section of docs/benchmarks.md and
its chart are separate from the file backend's.

Normally started by bench/run_e2e_bench.sh (which installs and builds first);
`--help` lists the options. Standard library only, except matplotlib for the chart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (MIB, REPO, Device, MemSampler, is_tmpfs, machine_info, make_raw_image,  # noqa: E402,F401
                          measure, parse_size, proc_cpu_seconds, proc_status, run, update_docs_section)

# --- what is measured ------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    rw: str
    bs: str
    bs_bytes: int
    iodepth: int


WORKLOADS = [
    Workload("randread_4k_qd1", "4K randread QD1", "randread", "4K", 4096, 1),
    Workload("randread_4k_qd32", "4K randread QD32", "randread", "4K", 4096, 32),
    Workload("randwrite_4k_qd32", "4K randwrite QD32", "randwrite", "4K", 4096, 32),
    Workload("read_128k_qd8", "128K seq read QD8", "read", "128K", 131072, 8),
    Workload("write_128k_qd8", "128K seq write QD8", "write", "128K", 131072, 8),
]


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    kind: str  # "iceblkd" | "qsd"
    encrypt: bool
    poll: bool = False  # iceblkd --poll-us (the value is the run's --poll-us)


CONFIGS = [
    Config("iceblkd_plain", "iceblkd plain", "iceblkd", False),
    Config("iceblkd_ice", "iceblkd ICE", "iceblkd", True),
    Config("qsd_raw", "qsd raw", "qsd", False),
    Config("qsd_luks", "qsd LUKS", "qsd", True),
]

# QD1 latency with and without iceblkd's opt-in polling (--poll-us), side by side:
# the four iceblkd configurations interleaved per workload, like the main table.
POLL_WORKLOADS = [
    Workload("poll_randread_4k_qd1", "4K randread QD1", "randread", "4K", 4096, 1),
    Workload("poll_randwrite_4k_qd1", "4K randwrite QD1", "randwrite", "4K", 4096, 1),
]
POLL_CONFIGS = [
    Config("iceblkd_plain", "iceblkd plain", "iceblkd", False),
    Config("iceblkd_plain_poll", "iceblkd plain poll", "iceblkd", False, True),
    Config("iceblkd_ice", "iceblkd ICE", "iceblkd", True),
    Config("iceblkd_ice_poll", "iceblkd ICE poll", "iceblkd", True, True),
]
DEFAULT_POLL_US = 50

ALGORITHM = "aes-256-xts"
DATA_UNIT = 4096

# --- helpers ---------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[e2e-bench] {msg}", file=sys.stderr, flush=True)


# --- devices ---------------------------------------------------------------------------


# qemu-img calibrates the LUKS PBKDF by timing a fixed number of iterations with the
# thread's CPU clock; on a busy machine that clock can read no progress at all, and
# qemu-img gives up with this message whatever iter-time says. It is a measuring
# accident, not a property of the image, so it is retried (and said).
PBKDF_CALIBRATION_ERROR = "Unable to get accurate CPU usage"
LUKS_CREATE_ATTEMPTS = 5


def make_luks_image(path: Path, size: int, secret_file: Path) -> None:
    # iter-time keeps the PBKDF short (the benchmark measures the data path, not the
    # key slot unlock); preallocation=full writes every payload sector.
    argv = ["qemu-img", "create", "-q", "-f", "luks",
            "--object", f"secret,id=sec0,file={secret_file}",
            "-o", "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,"
                  "iter-time=10,preallocation=full",
            str(path), str(size)]
    for attempt in range(1, LUKS_CREATE_ATTEMPTS + 1):
        p = subprocess.run(argv, text=True, capture_output=True)
        if p.returncode == 0:
            return
        err = p.stderr.strip()
        if PBKDF_CALIBRATION_ERROR not in err or attempt == LUKS_CREATE_ATTEMPTS:
            raise RuntimeError(f"qemu-img create -f luks {path} failed (attempt {attempt}): {err}")
        log(f"qemu-img's PBKDF calibration failed ({PBKDF_CALIBRATION_ERROR!r}: the machine is busy); "
            f"retrying, attempt {attempt + 1} of {LUKS_CREATE_ATTEMPTS}")
        path.unlink(missing_ok=True)
        time.sleep(0.2 * attempt)


def qsd_argv(img: Path | RbdImage, sock: Path, luks: bool, secret_file: Path, aio: str) -> list[str]:
    argv = ["qemu-storage-daemon"]
    if luks:
        argv += ["--object", f"secret,id=sec0,file={secret_file}"]
    if isinstance(img, RbdImage):
        # cache.direct=on: QEMU then sets rbd_cache=false, as the dev cluster's
        # ceph.conf does for iceblkd's librbd.
        argv += ["--blockdev", f"driver=rbd,node-name=file0,{img.qemu_opts()},cache.direct=on"]
    else:
        argv += ["--blockdev", f"driver=file,node-name=file0,filename={img},aio={aio},cache.direct=off"]
    if luks:
        argv += ["--blockdev", "driver=luks,node-name=disk0,key-secret=sec0,file=file0"]
    else:
        argv += ["--blockdev", "driver=raw,node-name=disk0,file=file0"]
    argv += ["--export", f"type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                         f"addr.path={sock},writable=on,num-queues=1"]
    return argv


def iceblkd_argv(iceblkd: Path, img: Path | RbdImage, sock: Path, ice: bool, io_engine: str,
                 poll_us: int = 0, crypto_threads: int = 0) -> list[str]:
    argv = [str(iceblkd), "--socket", str(sock), "--image", str(img), "--num-queues", "1", "--log-level", "warn"]
    if not isinstance(img, RbdImage):
        argv += ["--io-engine", io_engine]
    if not ice:
        argv.append("--no-ice")
    if poll_us:
        argv += ["--poll-us", str(poll_us)]
    if ice and crypto_threads:
        argv += ["--crypto-threads", str(crypto_threads)]
    return argv


# --- Ceph RBD (--backend rbd) ------------------------------------------------------------

CLUSTER_SCRIPT = REPO / "scripts" / "ceph-dev-cluster.sh"


@dataclass(frozen=True)
class RbdImage:
    pool: str
    name: str
    conf: Path

    def __str__(self) -> str:  # iceblkd's (and QEMU's) image syntax
        return f"rbd:{self.pool}/{self.name}:conf={self.conf}"

    def qemu_opts(self) -> str:
        return f"pool={self.pool},image={self.name},conf={self.conf}"


class DevCluster:
    """scripts/ceph-dev-cluster.sh in a directory of the run's own."""

    def __init__(self, state_dir: Path, osd_bytes: int):
        self.dir, self.osd_bytes = state_dir, osd_bytes
        self.conf = state_dir / "ceph.conf"
        self.peak_rss_kib: dict[str, int] = {}

    def _script(self, cmd: str) -> None:
        env = {**os.environ, "CEPH_DEV_OSD_BYTES": str(self.osd_bytes)}
        p = subprocess.run([str(CLUSTER_SCRIPT), cmd, str(self.dir)], text=True, capture_output=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"ceph-dev-cluster.sh {cmd} failed: {(p.stderr or p.stdout).strip()[-800:]}")

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")

    def pids(self) -> dict[str, int]:
        out = {}
        for d in ("mon.a", "osd.0", "mgr.x"):
            f = self.dir / "run" / f"{d}.pid"
            if f.exists():
                out[d] = int(f.read_text().strip())
        return out

    def sample_rss(self) -> dict[str, int]:
        """Resident memory of each daemon now (KiB, as ps -o rss), folded into the peaks."""
        now = {d: proc_status(pid).get("VmRSS", 0) for d, pid in self.pids().items()}
        for d, v in now.items():
            self.peak_rss_kib[d] = max(self.peak_rss_kib.get(d, 0), v)
        return now

    def make_image(self, name: str, size: int, luks: bool, secret_file: Path, zero_file: Path) -> RbdImage:
        """Creates pool/name and writes every byte of it (through LUKS for a LUKS image),
        so reads hit stored objects for every configuration alike."""
        img = RbdImage("rbd", name, self.conf)
        sec = ["--object", f"secret,id=sec0,file={secret_file}"] if luks else []
        fmt_opts = ["-f", "luks", "-o", "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,"
                                        "iter-time=10"] if luks else ["-f", "raw"]
        run(["qemu-img", "create", "-q", *sec, *fmt_opts, str(img), str(size)])
        target = (f"driver={'luks,key-secret=sec0' if luks else 'raw'},file.driver=rbd,"
                  f"file.pool={img.pool},file.image={img.name},file.conf={img.conf}")
        run(["qemu-img", "convert", "-n", "-S", "0", "-f", "raw", str(zero_file), *sec,
             "--target-image-opts", target])
        return img


# --- one measurement -------------------------------------------------------------------


def bench_once(iceblk: Path, dev: Device, w: Workload, runtime: float, logdir: Path, tag: str,
               prefix: list[str]) -> dict:
    argv = [*prefix, str(iceblk), "bench", "--socket", str(dev.sock), "--rw", w.rw, "--bs", w.bs,
            "--iodepth", str(w.iodepth), "--queues", "1", "--runtime", f"{runtime:g}",
            "--json", "--quiet"]
    if dev.cfg.encrypt and dev.cfg.kind == "iceblkd":
        argv += ["--encrypt", "on", "--algorithm", ALGORITHM, "--data-unit-size", str(DATA_UNIT)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p, dev_cpu, wall, mem = measure(dev.pid, lambda: subprocess.run(argv, text=True, capture_output=True,
                                                                     timeout=runtime * 4 + 60))
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    drv_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    (logdir / f"{tag}.stderr").write_text(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"iceblk bench failed on {dev.cfg.label} / {w.label} (rc {p.returncode}):\n"
                           f"  {' '.join(argv)}\n  {p.stderr.strip()[-1500:]}")
    if not dev.alive():
        raise RuntimeError(f"{dev.cfg.label} died during {w.label}; see {dev.logfile}")
    r = json.loads(p.stdout)
    ios = max(1, r["ios"])
    return {
        "iops": r["iops"], "mb_per_s": r["mb_per_s"], "p50_us": r["lat_us"]["p50"],
        "p99_us": r["lat_us"]["p99"], "p99_9_us": r["lat_us"]["p99_9"], "ios": r["ios"],
        "runtime_s": r["runtime_s"], "wall_s": wall,
        # CPU the daemon (all threads) and the driver spent per request: independent of
        # how much CPU the rest of a shared machine left us.
        "device_cpu_s": dev_cpu, "device_cpu_us_per_io": dev_cpu * 1e6 / ios,
        "driver_cpu_s": drv_cpu, "driver_cpu_us_per_io": drv_cpu * 1e6 / ios,
        "loadavg_1m": os.getloadavg()[0],
        "encrypt": r.get("encrypt", False), "mem_kib": mem,
    }


# --- the crypto ceiling ----------------------------------------------------------------


def parse_openssl_mr(text: str) -> dict[int, float]:
    """`openssl speed -mr` output -> {block size: bytes per second}.

    +H:16:64:...   block sizes;  +F:N:NAME:v1:v2:...   bytes per second per size.
    """
    sizes: list[int] = []
    rates: list[float] = []
    for line in text.splitlines():
        if line.startswith("+H:"):
            sizes = [int(x) for x in line[3:].split(":") if x]
        elif line.startswith("+F:"):
            rates = [float(x) for x in line.split(":")[3:] if x]
    if not sizes or len(sizes) != len(rates):
        raise ValueError(f"cannot parse openssl speed -mr output:\n{text[-800:]}")
    return dict(zip(sizes, rates))


def openssl_ceiling(seconds: int, prefix: list[str]) -> dict:
    argv = ["openssl", "speed", "-evp", ALGORITHM, "-seconds", str(seconds), "-bytes", str(DATA_UNIT)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = run([*prefix, *argv, "-mr"])
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rates = parse_openssl_mr(p.stdout)
    # openssl speed times with the wall clock; on a shared machine its CPU share is
    # part of the number (cpu_share close to 1 means it had the core to itself).
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"command": " ".join(argv), "bytes": DATA_UNIT, "mb_per_s": rates[DATA_UNIT] / 1e6,
            "cpu_share": cpu / wall if wall > 0 else None}


# --- results ---------------------------------------------------------------------------


def median_cell(samples: list[dict]) -> dict:
    def med(k):
        return statistics.median(s.get(k, 0.0) for s in samples)
    return {"iops": med("iops"), "mb_per_s": med("mb_per_s"), "p50_us": med("p50_us"),
            "p99_us": med("p99_us"), "p99_9_us": med("p99_9_us"),
            "device_cpu_us_per_io": med("device_cpu_us_per_io"), "driver_cpu_us_per_io": med("driver_cpu_us_per_io"),
            "rounds": len(samples),
            "iops_min": min(s["iops"] for s in samples), "iops_max": max(s["iops"] for s in samples)}


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def compute_ratios(cells: dict, ceiling: dict) -> list[dict]:
    """The targets of issue 7, each twice: `value` from wall-clock throughput, and
    `value_cpu` from throughput per core of device CPU (1 / CPU time per request, all
    daemon threads). On a quiet machine where the daemon is the bottleneck the two
    agree; on a shared one the scheduler moves `value` and hardly `value_cpu`."""
    def c(cfg, wl):
        return cells[wl][cfg]

    def per_core_iops(cfg, wl):
        us = c(cfg, wl).get("device_cpu_us_per_io") or 0.0
        return 1e6 / us if us > 0 else 0.0

    def row(name, cfg_a, cfg_b, wl, target):
        return {"name": name, "target": target,
                "value": ratio(c(cfg_a, wl)["iops"], c(cfg_b, wl)["iops"]),
                "value_cpu": ratio(per_core_iops(cfg_a, wl), per_core_iops(cfg_b, wl))}

    out = [row("ICE / plain (iceblkd), 4K randread QD32", "iceblkd_ice", "iceblkd_plain", "randread_4k_qd32", 0.90),
           row("iceblkd plain / qsd raw, 4K randread QD32", "iceblkd_plain", "qsd_raw", "randread_4k_qd32", 1.2)]
    for w in WORKLOADS:
        out.append(row(f"iceblkd ICE / qsd LUKS, {w.label}", "iceblkd_ice", "qsd_luks", w.key, 1.5))
    seq = c("iceblkd_ice", "read_128k_qd8")
    out.append({
        "name": f"ICE 128K seq read MB/s / OpenSSL {ALGORITHM} 1 core", "target": 0.6,
        "value": ratio(seq["mb_per_s"], ceiling["mb_per_s"]),
        # bytes per device-CPU-microsecond = MB/s per core
        "value_cpu": ratio(per_core_iops("iceblkd_ice", "read_128k_qd8") * 131072 / 1e6, ceiling["mb_per_s"]),
    })
    for r in out:
        r["pass"] = r["value"] is not None and r["value"] >= r["target"]
        r["pass_cpu"] = r["value_cpu"] is not None and r["value_cpu"] >= r["target"]
    return out


def compute_ratios_rbd(cells: dict) -> list[dict]:
    """--backend rbd: what encryption costs each daemon, and iceblkd against qsd, per
    workload (no targets: on RBD the cluster, not the daemon, sets the pace)."""
    def per_core_iops(cfg, wl):
        us = cells[wl][cfg].get("device_cpu_us_per_io") or 0.0
        return 1e6 / us if us > 0 else 0.0

    out = []
    for w in WORKLOADS:
        if w.key not in cells:
            continue
        for name, a, b in (("ICE / plain (iceblkd)", "iceblkd_ice", "iceblkd_plain"),
                           ("LUKS / raw (qsd)", "qsd_luks", "qsd_raw"),
                           ("iceblkd plain / qsd raw", "iceblkd_plain", "qsd_raw"),
                           ("iceblkd ICE / qsd LUKS", "iceblkd_ice", "qsd_luks")):
            out.append({"name": f"{name}, {w.label}", "target": None, "pass": None, "pass_cpu": None,
                        "value": ratio(cells[w.key][a]["iops"], cells[w.key][b]["iops"]),
                        "value_cpu": ratio(per_core_iops(a, w.key), per_core_iops(b, w.key))})
    return out


def doc_ratios(doc: dict) -> list[dict]:
    if doc.get("backend") == "rbd":
        return compute_ratios_rbd(doc["cells"])
    return compute_ratios(doc["cells"], doc["ceiling"])


def memory_summary(results: dict, runs: list[dict], queue_buffer_bytes: int, backend: str = "file") -> dict:
    """Peak iceblkd memory under load per configuration (KiB), against 64 MiB + buffers."""
    out = {}
    for cfg in CONFIGS:
        rs = [r for r in runs if r["config"] == cfg.key]
        if not rs:
            continue
        peak = {k: max(r["mem_kib"].get(k, 0) for r in rs) for k in
                ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")}
        limit_kib = (64 * MIB + queue_buffer_bytes) // 1024
        # (On RBD librbd's own caches and threads are in the daemon too: no verdict.)
        out[cfg.key] = {**peak, "limit_kib": limit_kib,
                        "pass": peak["VmHWM"] < limit_kib if cfg.kind == "iceblkd" and backend == "file" else None}
    return out


def poll_rows(doc: dict) -> list[dict]:
    """QD1 with and without --poll-us: per workload and device mode, the two cells and
    the latency ratio (poll / no poll; below 1 = polling is faster)."""
    poll = doc.get("poll")
    if not poll:
        return []
    out = []
    for w in poll["workloads"]:
        for mode, off, on in (("plain", "iceblkd_plain", "iceblkd_plain_poll"), ("ICE", "iceblkd_ice", "iceblkd_ice_poll")):
            a, b = poll["cells"][w["key"]][off], poll["cells"][w["key"]][on]
            out.append({"workload": w["label"], "mode": mode, "off": a, "on": b,
                        "p50_ratio": ratio(b["p50_us"], a["p50_us"]), "p99_ratio": ratio(b["p99_us"], a["p99_us"]),
                        "iops_ratio": ratio(b["iops"], a["iops"])})
    return out


def fmt_num(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}" if v is not None else "-"


def render_table(doc: dict) -> str:
    cells = doc["cells"]
    lines = []
    hdr = f"{'workload':<20}" + "".join(f"{c.label:>28}" for c in CONFIGS)
    lines.append(hdr)
    lines.append(f"{'':<20}" + "".join(f"{'IOPS   MB/s  p99us':>28}" for _ in CONFIGS))
    for w in WORKLOADS:
        row = f"{w.label:<20}"
        for c in CONFIGS:
            x = cells[w.key][c.key]
            row += f"{fmt_num(x['iops']):>12}{fmt_num(x['mb_per_s'], 1):>9}{fmt_num(x['p99_us']):>7}"
        lines.append(row)
    lines.append("")
    lines.append("CPU per request, microseconds (device daemon, all threads / driver)")
    for w in WORKLOADS:
        row = f"{w.label:<20}"
        for c in CONFIGS:
            x = cells[w.key][c.key]
            row += f"{x.get('device_cpu_us_per_io', 0):>19.1f} /{x.get('driver_cpu_us_per_io', 0):>6.1f}"
        lines.append(row)
    lines.append("")
    ce = doc["ceiling"]
    share = f", {ce['cpu_share']:.2f} of a core" if ce.get("cpu_share") else ""
    lines.append(f"crypto ceiling: {ce['command']}  ->  {ce['mb_per_s']:,.0f} MB/s (1 thread{share})")
    lines.append("")
    lines.append(f"{'ratio':<58}{'target':>8}{'wall clock':>18}{'per device core':>20}")

    def v(x, ok):
        return "-" if x is None else f"{x:.2f}" + ("" if ok is None else f" {'ok' if ok else 'MISSED'}")
    for r in doc["ratios"]:
        tgt = "-" if r["target"] is None else ">= " + format(r["target"], ".2f")
        lines.append(f"{r['name']:<58}{tgt:>8}{v(r['value'], r['pass']):>18}"
                     f"{v(r.get('value_cpu'), r.get('pass_cpu')):>20}")
    rows = poll_rows(doc)
    if rows:
        lines.append("")
        lines.append(f"QD1 latency, iceblkd without / with --poll-us {doc['poll']['poll_us']} "
                     "(p50 and p99 us, IOPS, device CPU us per request; ratio = with / without)")
        for r in rows:
            a, b = r["off"], r["on"]
            lines.append(f"  {r['workload']:<18} {r['mode']:<6} p50 {a['p50_us']:6.1f} / {b['p50_us']:6.1f} "
                         f"({r['p50_ratio'] or 0:.2f}x)  p99 {a['p99_us']:6.1f} / {b['p99_us']:6.1f}  "
                         f"IOPS {a['iops']:>8,.0f} / {b['iops']:>8,.0f} ({r['iops_ratio'] or 0:.2f}x)  "
                         f"CPU {a['device_cpu_us_per_io']:5.1f} / {b['device_cpu_us_per_io']:5.1f}")
    lines.append("")
    cl = doc.get("cluster")
    if cl:
        lines.append(f"dev cluster resident memory, peak over the runs (MiB, ps -o rss): "
                     + ", ".join(f"{d} {v / 1024:.0f}" for d, v in cl["peak_rss_kib"].items())
                     + f"; sum {cl['peak_rss_sum_kib'] / 1024:.0f} (target <= 2048)")
    lines.append("peak daemon memory under load (MiB; RssShmem = the driver's shared memory the daemon touched)")
    for k, m in doc["memory"].items():
        lbl = next(c.label for c in CONFIGS if c.key == k)
        verdict = "" if m["pass"] is None else (
            f"  VmHWM < {m['limit_kib'] / 1024:.0f} MiB (64 + queue buffers): {'ok' if m['pass'] else 'MISSED'}")
        lines.append(f"  {lbl:<14} VmRSS {m['VmRSS'] / 1024:6.1f}  VmHWM {m['VmHWM'] / 1024:6.1f}  "
                     f"RssAnon {m['RssAnon'] / 1024:6.1f}  RssFile {m['RssFile'] / 1024:5.1f}  "
                     f"RssShmem {m['RssShmem'] / 1024:6.1f}{verdict}")
    return "\n".join(lines)


def render_markdown(doc: dict, png_rel: str | None) -> str:
    m, a = doc["machine"], doc["args"]
    cells = doc["cells"]
    out = []
    out.append(f"Generated by `bench/run_e2e_bench.sh` on {doc['date']} (commit {m['git']}).")
    out.append("")
    out.append(f"Machine: {m.get('nproc')} vCPUs, `{m.get('cpu', '?')}` (AES-NI: {'yes' if m.get('aes_ni') else 'no'}, "
               f"VAES: {'yes' if m.get('vaes') else 'no'}), {m.get('mem_total_mib', 0) // 1024} GiB RAM, "
               f"Linux {m['kernel']}, {m['openssl'].split(' (')[0]}, {m['qemu'].split(' (')[0]}. "
               f"Load average {m['loadavg_start']:.1f} at start, {m.get('loadavg_end', 0):.1f} at end "
               f"(on a machine shared with other jobs wall-clock cells vary from run to run: see the spread below).")
    if doc.get("note"):
        out.append("")
        out.append(f"**Note:** {doc['note']}")
    out.append("")
    out.append("Command:")
    out.append("")
    out.append("```")
    out.append(doc["command"])
    out.append("```")
    out.append("")
    nice = f" under `nice -n {a['nice']}`" if a.get("nice") else ""
    if doc.get("backend") == "rbd":
        cl = doc["cluster"]
        where = (f"in pool `rbd` of a one-node Ceph dev cluster on this machine (`scripts/ceph-dev-cluster.sh`: "
                 f"one monitor, one memstore OSD, size 1, 127.0.0.1; `rbd_cache=false` for both daemons), each written "
                 f"in full before the runs; the cluster's daemons peaked at {cl['peak_rss_sum_kib'] / 1024:.0f} MiB "
                 f"resident together ("
                 + ", ".join(f"{d} {v / 1024:.0f}" for d, v in cl["peak_rss_kib"].items()) + "). "
                 "qemu-storage-daemon uses QEMU's `driver=rbd` (`qemu-block-extra`), LUKS as `driver=luks` over it. "
                 "Both daemons' CPU includes librbd's own threads (messenger, callbacks)")
        engines = ""
    else:
        where = f"on tmpfs (`{a['workdir']}`)"
        engines = f" iceblkd `--io-engine {a['io_engine']}`; qemu-storage-daemon `aio={a['qsd_aio']}`."
    out.append(f"Images: {a['size'] // MIB} MiB each, {where}; 1 queue; "
               f"{a['runtime']:g} s per run, {a['rounds']} round(s), configurations interleaved per workload; "
               f"cells are medians; everything ran{nice} with interrupt (not polled) completions.{engines} "
               f"ICE: {ALGORITHM}, {DATA_UNIT}-byte data units; LUKS: aes-256 xts plain64.")
    out.append("")
    out.append("| workload | " + " | ".join(f"{c.label} IOPS / MB/s / p99 µs" for c in CONFIGS) + " |")
    out.append("|---|" + "---|" * len(CONFIGS))
    for w in WORKLOADS:
        row = [w.label]
        for c in CONFIGS:
            x = cells[w.key][c.key]
            row.append(f"{x['iops']:,.0f} / {x['mb_per_s']:,.1f} / {x['p99_us']:,.0f}")
        out.append("| " + " | ".join(row) + " |")
    if a["rounds"] > 1:
        spreads = [x["iops_max"] / x["iops_min"] for wl in cells.values() for x in wl.values() if x["iops_min"] > 0]
        out.append("")
        out.append(f"Run-to-run spread of a cell (max / min IOPS over its {a['rounds']} rounds): "
                   f"median {statistics.median(spreads):.2f}x, worst {max(spreads):.2f}x.")
    out.append("")
    out.append("CPU per request (µs; the device daemon's user + system time over all its threads / the driver's), "
               "which the rest of a shared machine distorts much less (not zero: a starved daemon finds more requests per "
               "wake-up, which lowers its CPU per request):")
    out.append("")
    out.append("| workload | " + " | ".join(c.label for c in CONFIGS) + " |")
    out.append("|---|" + "---:|" * len(CONFIGS))
    for w in WORKLOADS:
        row = [w.label] + [f"{cells[w.key][c.key].get('device_cpu_us_per_io', 0):.1f} / "
                           f"{cells[w.key][c.key].get('driver_cpu_us_per_io', 0):.1f}" for c in CONFIGS]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    ce = doc["ceiling"]
    share = f" (it had {ce['cpu_share']:.2f} of a core)" if ce.get("cpu_share") else ""
    out.append(f"Crypto ceiling: `{ce['command']}` = **{ce['mb_per_s']:,.0f} MB/s** on one thread{share}.")
    out.append("")
    out.append("Ratios: *wall clock* from the IOPS / MB/s above; *per device core* from the CPU time per "
               "request (the same comparison with each daemon given one full core).")
    out.append("")
    out.append("| ratio | target | wall clock | per device core |")
    out.append("|---|---:|---:|---:|")

    def v(x, ok):
        return "-" if x is None else f"{x:.2f}" + ("" if ok is None else f" {'ok' if ok else '**missed**'}")
    for r in doc["ratios"]:
        tgt = "-" if r["target"] is None else f"≥ {r['target']:.2f}"
        out.append(f"| {r['name']} | {tgt} | {v(r['value'], r['pass'])} | "
                   f"{v(r.get('value_cpu'), r.get('pass_cpu'))} |")
    out.append("")
    out.append("Peak memory of the daemons during the runs (MiB, from `/proc/PID/status`; RssShmem is the "
               "driver's shared guest memory the daemon has touched, i.e. queue buffers):")
    out.append("")
    out.append("| daemon | VmRSS | VmHWM | RssAnon | RssFile | RssShmem | target |")
    out.append("|---|---:|---:|---:|---:|---:|---|")
    for k, mm in doc["memory"].items():
        lbl = next(c.label for c in CONFIGS if c.key == k)
        tgt = "" if mm["pass"] is None else \
            f"VmHWM < {mm['limit_kib'] / 1024:.0f} MiB: {'ok' if mm['pass'] else '**missed**'}"
        out.append(f"| {lbl} | {mm['VmRSS'] / 1024:.1f} | {mm['VmHWM'] / 1024:.1f} | {mm['RssAnon'] / 1024:.1f} | "
                   f"{mm['RssFile'] / 1024:.1f} | {mm['RssShmem'] / 1024:.1f} | {tgt} |")
    rows = poll_rows(doc)
    if rows:
        us = doc["poll"]["poll_us"]
        out.append("")
        out.append(f"QD1 latency without and with polling (`iceblkd --poll-us {us}`: after each pass the queue worker "
                   f"spins on the ring for up to {us} µs, with the driver's kicks suppressed, before it sleeps). The four "
                   "iceblkd configurations ran interleaved per workload, in their own rounds; *ratio* is with / without "
                   "polling (below 1: polling is faster). Device CPU per request includes the time spent spinning.")
        out.append("")
        out.append("| workload | device | p50 µs without / with | ratio | p99 µs without / with | "
                   "IOPS without / with | device CPU µs/request without / with |")
        out.append("|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            a, b = r["off"], r["on"]
            pr = "-" if r["p50_ratio"] is None else f"{r['p50_ratio']:.2f}"
            out.append(f"| {r['workload']} | {r['mode']} | {a['p50_us']:.1f} / {b['p50_us']:.1f} | {pr} | "
                       f"{a['p99_us']:.1f} / {b['p99_us']:.1f} | {a['iops']:,.0f} / {b['iops']:,.0f} | "
                       f"{a['device_cpu_us_per_io']:.1f} / {b['device_cpu_us_per_io']:.1f} |")
        spreads = [x["iops_max"] / x["iops_min"] for wl in doc["poll"]["cells"].values() for x in wl.values()
                   if x["iops_min"] > 0]
        if a_rounds(doc) > 1 and spreads:
            out.append("")
            out.append(f"Run-to-run spread of these cells (max / min IOPS over the rounds): median "
                       f"{statistics.median(spreads):.2f}x, worst {max(spreads):.2f}x.")
    if png_rel:
        out.append("")
        out.append(f"![iceblkd vs qemu-storage-daemon{' on RBD' if doc.get('backend') == 'rbd' else ''}]({png_rel})")
    return "\n".join(out)


def a_rounds(doc: dict) -> int:
    return int(doc.get("args", {}).get("rounds", 1))


def write_png(doc: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (scripts/install-deps.sh --bench installs python3-matplotlib); no chart")
        return False
    cells = doc["cells"]
    small = [w for w in WORKLOADS if w.bs_bytes == 4096]
    big = [w for w in WORKLOADS if w.bs_bytes != 4096]
    poll = doc.get("poll")
    fig = plt.figure(figsize=(12, 11.6 if poll else 8.4))
    grid = fig.add_gridspec(3 if poll else 2, len(small) + len(big))
    axes = [fig.add_subplot(grid[0, :len(small)]), fig.add_subplot(grid[0, len(small):]), fig.add_subplot(grid[1, :])]
    if poll:
        # QD1 p50 latency without / with --poll-us, the four iceblkd configurations.
        ax = fig.add_subplot(grid[2, :])
        pcfgs, pwls = poll["configs"], poll["workloads"]
        pw = 0.8 / len(pcfgs)
        pcolors = ["#4c72b0", "#a1c9f4", "#dd8452", "#ffb482"]
        for i, c in enumerate(pcfgs):
            vals = [poll["cells"][w["key"]][c["key"]]["p50_us"] for w in pwls]
            xs = [j + (i - (len(pcfgs) - 1) / 2) * pw for j in range(len(pwls))]
            bars = ax.bar(xs, vals, pw, label=c["label"], color=pcolors[i % len(pcolors)])
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(range(len(pwls)), [w["label"] for w in pwls], fontsize=9)
        ax.set_ylabel(f"p50 µs, without / with --poll-us {poll['poll_us']}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    width = 0.8 / len(CONFIGS)
    colors = ["#4c72b0", "#dd8452", "#8c8c8c", "#c44e52"]
    panels = ((axes[0], small, "iops", "kIOPS (wall clock)", 1000.0, "%.1f"),
              (axes[1], big, "mb_per_s", "MB/s (wall clock)", 1.0, "%.0f"),
              (axes[2], WORKLOADS, "device_cpu_us_per_io", "device CPU µs per request (lower is better)", 1.0, "%.1f"))
    for ax, wls, metric, ylabel, scale, fmt in panels:
        for i, c in enumerate(CONFIGS):
            vals = [cells[w.key][c.key].get(metric, 0.0) / scale for w in wls]
            xs = [j + (i - (len(CONFIGS) - 1) / 2) * width for j in range(len(wls))]
            bars = ax.bar(xs, vals, width, label=c.label, color=colors[i])
            ax.bar_label(bars, fmt=fmt, fontsize=7, padding=1)
        ax.set_xticks(range(len(wls)), [w.label for w in wls], fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[2].set_yscale("log")
    ce = doc["ceiling"]["mb_per_s"]
    axes[1].axhline(ce, color="black", linestyle="--", linewidth=1)
    axes[1].text(len(big) - 0.5, ce, f"OpenSSL {ALGORITHM} 1 core: {ce:,.0f} MB/s", ha="right", va="bottom",
                 fontsize=8)
    axes[1].set_ylim(0, max(ce * 1.12, axes[1].get_ylim()[1]))
    axes[0].legend(fontsize=8, loc="upper left")
    m = doc["machine"]
    fig.suptitle(f"iceblk bench, 1 queue, {doc['args']['runtime']:g} s x {doc['args']['rounds']} round(s), "
                 f"{'RBD (one-node dev cluster)' if doc.get('backend') == 'rbd' else 'tmpfs'} images — "
                 f"{m.get('nproc')} vCPU {m.get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


BEGIN_MARK = "<!-- e2e-bench:begin (generated by bench/run_e2e_bench.sh; edits here are overwritten) -->"
END_MARK = "<!-- e2e-bench:end -->"
# --backend rbd: its own section, chart and markers.
RBD_BEGIN_MARK = ("<!-- e2e-bench-rbd:begin (generated by bench/run_e2e_bench.sh --backend rbd; "
                  "edits here are overwritten) -->")
RBD_END_MARK = "<!-- e2e-bench-rbd:end -->"


def update_docs(doc_path: Path, body: str, backend: str = "file") -> None:
    if backend == "rbd":
        update_docs_section(doc_path, body, RBD_BEGIN_MARK, RBD_END_MARK,
                            "End to end on Ceph RBD: iceblkd vs qemu-storage-daemon")
    else:
        update_docs_section(doc_path, body, BEGIN_MARK, END_MARK, "End to end: iceblkd vs qemu-storage-daemon")


# --- main ------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("ICEBLK_BUILD_DIR", str(REPO / "build")),
                    help="where iceblkd and iceblk were built (env ICEBLK_BUILD_DIR)")
    ap.add_argument("--runtime", type=float, default=float(os.environ.get("BENCH_RUNTIME", "5")),
                    help="seconds per run (env BENCH_RUNTIME; default 5)")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "1")),
                    help="rounds over all configurations per workload; cells are medians (env BENCH_ROUNDS)")
    ap.add_argument("--size", type=parse_size, default=None,
                    help="image size, the same for every device (env BENCH_SIZE; default 1G, 128M with --backend rbd)")
    ap.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/dev/shm"),
                    help="tmpfs directory for the images and sockets (env BENCH_WORKDIR)")
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", str(REPO / "out" / "e2e-bench")),
                    help="results directory: results.json, table.txt, chart.png, logs")
    ap.add_argument("--backend", default="file", choices=["file", "rbd"],
                    help="file: tmpfs images; rbd: RBD images in a one-node dev cluster of the run's own "
                         "(scripts/ceph-dev-cluster.sh; default size 128M, no polling comparison)")
    ap.add_argument("--io-engine", default="auto", choices=["auto", "io_uring", "sync"], help="iceblkd --io-engine")
    ap.add_argument("--qsd-aio", default="io_uring", choices=["threads", "native", "io_uring"],
                    help="qemu-storage-daemon file aio= (default io_uring, like iceblkd)")
    ap.add_argument("--openssl-seconds", type=int, default=3)
    ap.add_argument("--nice", type=int, default=int(os.environ.get("BENCH_NICE", "0")),
                    help="run the daemons, the driver and openssl under `nice -n N` (e.g. -10 on a machine "
                         "shared with builds; negative needs root; env BENCH_NICE)")
    ap.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS),
                    help="comma-separated subset (" + ", ".join(w.key for w in WORKLOADS) + ")")
    ap.add_argument("--poll-us", type=int, default=DEFAULT_POLL_US,
                    help=f"iceblkd --poll-us of the QD1 polling comparison (default {DEFAULT_POLL_US}; 0 skips it)")
    ap.add_argument("--crypto-threads", type=int, default=0,
                    help="iceblkd --crypto-threads of every ICE configuration (default 0)")
    ap.add_argument("--note", default=os.environ.get("BENCH_NOTE", ""),
                    help="a sentence printed next to the numbers in the docs (e.g. what else loaded the machine)")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="measure nothing: recompute ratios from a results.json and redo table, chart, docs")
    ap.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    rbd = args.backend == "rbd"
    if args.size is None:
        args.size = parse_size(os.environ.get("BENCH_SIZE", "128M" if rbd else "1G"))
    # SIGTERM (and SIGHUP) unwind like Ctrl-C does, through the finally below that stops
    # every daemon this run started; Python's default would exit on the spot.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    if args.render:
        doc = json.loads(Path(args.render).read_text())
        doc["ratios"] = doc_ratios(doc)
        return publish(doc, Path(args.out), None if args.no_docs else Path(args.docs))

    build = Path(args.build_dir)
    iceblkd, iceblk = build / "tools" / "iceblkd" / "iceblkd", build / "tools" / "iceblk" / "iceblk"
    for exe in (iceblkd, iceblk):
        if not os.access(exe, os.X_OK):
            log(f"{exe} not found; build it first (bench/run_e2e_bench.sh does)")
            return 2
    for tool in ("qemu-storage-daemon", "qemu-img", "openssl") + (("ceph-mon", "ceph-osd", "rbd") if rbd else ()):
        if shutil.which(tool) is None:
            log(f"{tool} not found (scripts/install-deps.sh --bench installs it)")
            return 2
    prefix = ["nice", "-n", str(args.nice)] if args.nice else []
    wanted = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in {w.key for w in WORKLOADS}]
    if unknown:
        log(f"unknown workload(s): {', '.join(unknown)}")
        return 2
    workloads = [w for w in WORKLOADS if w.key in wanted]
    if args.runtime <= 0 or args.rounds < 1:
        log("--runtime must be > 0 and --rounds >= 1")
        return 2
    workdir_parent = Path(args.workdir)
    if not is_tmpfs(workdir_parent):
        log(f"{workdir_parent} is not on tmpfs; pass --workdir on a tmpfs mount (e.g. /dev/shm)")
        return 2
    poll_extra = [c for c in POLL_CONFIGS if c.poll] if args.poll_us > 0 and not rbd else []
    need = (0 if rbd else args.size * (len(CONFIGS) + len(poll_extra))) + 64 * MIB
    free = shutil.disk_usage(workdir_parent).free
    if free < need:
        log(f"{workdir_parent} has {free // MIB} MiB free; {need // MIB} MiB needed (lower --size)")
        return 2

    out = Path(args.out)
    logdir = out / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="iceblk-e2e-", dir=workdir_parent))
    os.chmod(work, 0o700)
    machine = machine_info()
    devices: dict[str, Device] = {}
    doc: dict = {}
    # The OSD keeps every image in RAM (memstore): room for all of them and LUKS headers.
    cluster = DevCluster(work / "ceph", len(CONFIGS) * (args.size + 16 * MIB) + 128 * MIB) if rbd else None
    try:
        secret = work / "luks.pass"  # throwaway passphrase, tmpfs only, removed at the end
        secret.write_text(secrets.token_hex(16))
        os.chmod(secret, 0o600)
        log(f"creating {len(CONFIGS) + len(poll_extra)} images of {args.size // MIB} MiB in {work}")
        imgs = {}
        if cluster is not None:
            log(f"starting a dev cluster in {cluster.dir}")
            cluster.start()
            zero = work / "zero.img"
            with open(zero, "wb") as f:
                f.truncate(args.size)
        for c in CONFIGS + poll_extra:
            if cluster is not None:
                imgs[c.key] = cluster.make_image(c.key, args.size, c.key == "qsd_luks", secret, zero)
            elif c.key == "qsd_luks":
                imgs[c.key] = work / f"{c.key}.luks"
                make_luks_image(imgs[c.key], args.size, secret)
            else:
                imgs[c.key] = work / f"{c.key}.img"
                make_raw_image(imgs[c.key], args.size)
        for c in CONFIGS + poll_extra:
            sock = work / f"{c.key}.sock"
            if c.kind == "iceblkd":
                argv = prefix + iceblkd_argv(iceblkd, imgs[c.key], sock, c.encrypt, args.io_engine,
                                             args.poll_us if c.poll else 0, args.crypto_threads)
            else:
                argv = prefix + qsd_argv(imgs[c.key], sock, c.key == "qsd_luks", secret, args.qsd_aio)
            devices[c.key] = Device(c, argv, sock, logdir / f"{c.key}.log")
            devices[c.key].start()
            log(f"started {c.label} (pid {devices[c.key].pid})")

        runs: list[dict] = []
        total = len(workloads) * args.rounds * len(CONFIGS)
        n = 0
        for w in workloads:
            for rnd in range(args.rounds):
                # Rotate the start so no configuration always runs first (warmest/coldest).
                order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]
                for c in order:
                    n += 1
                    r = bench_once(iceblk, devices[c.key], w, args.runtime, logdir, f"{w.key}.{c.key}.{rnd}", prefix)
                    r.update(workload=w.key, config=c.key, round=rnd)
                    if cluster is not None:
                        r["cluster_rss_kib"] = cluster.sample_rss()
                    runs.append(r)
                    log(f"[{n}/{total}] {w.label:<18} {c.label:<14} {r['iops']:>10,.0f} IOPS "
                        f"{r['mb_per_s']:>8,.1f} MB/s  p99 {r['p99_us']:>7,.0f} us")

        # QD1 with and without polling: its own interleaved rounds over the four iceblkd
        # configurations (not mixed into the main table's cells).
        poll_runs: list[dict] = []
        if poll_extra:
            total = len(POLL_WORKLOADS) * args.rounds * len(POLL_CONFIGS)
            n = 0
            for w in POLL_WORKLOADS:
                for rnd in range(args.rounds):
                    order = POLL_CONFIGS[rnd % len(POLL_CONFIGS):] + POLL_CONFIGS[:rnd % len(POLL_CONFIGS)]
                    for c in order:
                        n += 1
                        r = bench_once(iceblk, devices[c.key], w, args.runtime, logdir, f"{w.key}.{c.key}.{rnd}",
                                       prefix)
                        r.update(workload=w.key, config=c.key, round=rnd)
                        poll_runs.append(r)
                        log(f"[poll {n}/{total}] {w.label:<18} {c.label:<19} {r['iops']:>9,.0f} IOPS "
                            f"p50 {r['p50_us']:>6,.1f} us  p99 {r['p99_us']:>7,.1f} us")

        log(f"crypto ceiling: openssl speed -evp {ALGORITHM} -seconds {args.openssl_seconds} -bytes {DATA_UNIT}")
        ceiling = openssl_ceiling(args.openssl_seconds, prefix)
        machine["loadavg_end"] = os.getloadavg()[0]

        cells = {w.key: {c.key: median_cell([r for r in runs if r["workload"] == w.key and r["config"] == c.key])
                         for c in CONFIGS} for w in workloads}
        # Queue buffers: the most data the driver can have in flight (depth x block size).
        qbuf = max(w.iodepth * w.bs_bytes for w in workloads)
        cmd = "bench/run_e2e_bench.sh"
        extra = ["--backend rbd"] if rbd else []
        if args.runtime != 5:
            extra.append(f"--runtime {args.runtime:g}")
        if args.rounds != 1:
            extra.append(f"--rounds {args.rounds}")
        if args.size != (128 * MIB if rbd else 1 << 30):
            extra.append(f"--size {args.size // MIB}M")
        if args.nice:
            extra.append(f"--nice {args.nice}")
        if args.poll_us != DEFAULT_POLL_US:
            extra.append(f"--poll-us {args.poll_us}")
        if args.crypto_threads:
            extra.append(f"--crypto-threads {args.crypto_threads}")
        doc = {
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "command": " ".join([cmd] + extra),
            "machine": machine,
            "note": args.note,
            "backend": args.backend,
            "args": {"runtime": args.runtime, "rounds": args.rounds, "size": args.size, "workdir": args.workdir,
                     "io_engine": args.io_engine, "qsd_aio": args.qsd_aio, "nice": args.nice},
            "workloads": [w.__dict__ for w in workloads],
            "configs": [c.__dict__ for c in CONFIGS],
            "device_argv": {k: d.argv for k, d in devices.items()},
            "cells": cells,
            "ceiling": ceiling,
            "runs": runs,
        }
        if poll_runs:
            doc["poll"] = {
                "poll_us": args.poll_us,
                "workloads": [w.__dict__ for w in POLL_WORKLOADS],
                "configs": [c.__dict__ for c in POLL_CONFIGS],
                "cells": {w.key: {c.key: median_cell([r for r in poll_runs
                                                      if r["workload"] == w.key and r["config"] == c.key])
                                  for c in POLL_CONFIGS} for w in POLL_WORKLOADS},
                "runs": poll_runs,
            }
        if cluster is not None:
            cluster.sample_rss()
            doc["cluster"] = {"peak_rss_kib": cluster.peak_rss_kib,
                              "peak_rss_sum_kib": sum(cluster.peak_rss_kib.values()),
                              "osd_bytes": cluster.osd_bytes}
        doc["ratios"] = doc_ratios(doc) if len(workloads) == len(WORKLOADS) else []
        doc["memory"] = memory_summary(cells, runs, qbuf, args.backend)
    finally:
        for d in devices.values():
            d.stop()
        if cluster is not None:
            try:
                cluster.stop()
            except RuntimeError as e:
                log(str(e))
        shutil.rmtree(work, ignore_errors=True)

    if len(workloads) != len(WORKLOADS):
        (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
        log("subset of workloads: results.json written; table, chart and docs need all five")
        return 0
    return publish(doc, out, None if args.no_docs else Path(args.docs))


def publish(doc: dict, out: Path, doc_path: Path | None) -> int:
    """results.json, table.txt (also printed), chart.png, and the docs section."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = render_table(doc)
    (out / "table.txt").write_text(table + "\n")
    print(table)
    png = out / "chart.png"
    have_png = write_png(doc, png)
    if doc_path is not None:
        png_rel = None
        if have_png:
            img_dir = doc_path.parent / "img"
            img_dir.mkdir(exist_ok=True)
            name = "e2e_bench_rbd.png" if doc.get("backend") == "rbd" else "e2e_bench.png"
            shutil.copyfile(png, img_dir / name)
            png_rel = f"img/{name}"
        update_docs(doc_path, render_markdown(doc, png_rel), doc.get("backend", "file"))
        log(f"updated {doc_path}")
    log(f"results in {out}/ (results.json, table.txt{', chart.png' if have_png else ''}, logs/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
