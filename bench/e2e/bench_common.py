"""What the benchmarks in bench/e2e share (e2e_bench.py, scale_bench.py): the
machine's description, a device daemon on a unix socket, raw images, and one
measurement of a daemon (its CPU time, its peak memory, the wall clock) around
whatever drives it. Standard library only."""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
T = TypeVar("T")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size '{text}' (use e.g. 512M, 1G)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(m.group(1)) * mult


def is_tmpfs(path: Path) -> bool:
    """True when `path` lives on a tmpfs mount (longest matching mount point)."""
    best, fstype = "", ""
    real = str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, parts[2]
    return fstype == "tmpfs"


def proc_status(pid: int) -> dict[str, int]:
    """Memory fields of /proc/PID/status in KiB (empty dict when the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict:
    info: dict = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/cpuinfo") as f:
            flags = next((l for l in f if l.startswith("flags")), "")
        info["aes_ni"] = " aes " in f" {flags.split(':', 1)[-1]} "
        info["avx512"] = "avx512f" in flags
        info["vaes"] = " vaes " in f" {flags.split(':', 1)[-1]} "
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_mib"] = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    info["openssl"] = run(["openssl", "version"]).stdout.strip()
    info["qemu"] = run(["qemu-storage-daemon", "--version"]).stdout.splitlines()[0].strip()
    try:
        info["git"] = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        info["git"] = "unknown"
    info["loadavg_start"] = os.getloadavg()[0]
    return info


# --- devices -----------------------------------------------------------------------------


class Device:
    """A running device daemon (iceblkd or qemu-storage-daemon) on a unix socket."""

    def __init__(self, cfg: Config, argv: list[str], sock: Path, logfile: Path):
        self.cfg, self.argv, self.sock, self.logfile = cfg, argv, sock, logfile
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        if self.sock.exists():
            self.sock.unlink()
        self._log = open(self.logfile, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cfg.label} exited with {self.proc.returncode} during start;"
                                   f" see {self.logfile}:\n{self.logfile.read_text()[-2000:]}")
            # A socket inode at the path means bind() is done (listen() follows at once);
            # probing with connect() would open a vhost-user session the daemon must end.
            if self.sock.exists() and stat.S_ISSOCK(os.stat(self.sock).st_mode):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.cfg.label}: no socket at {self.sock} after {timeout:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None


def make_raw_image(path: Path, size: int) -> None:
    # fallocate on tmpfs allocates real (zeroed) pages, so reads touch memory rather
    # than holes; every configuration gets the same.
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)


# --- one measurement ---------------------------------------------------------------------


class MemSampler(threading.Thread):
    """Samples /proc/PID/status every 50 ms while a run is in progress."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_evt = pid, {}, threading.Event()

    def run(self) -> None:
        while not self.stop_evt.is_set():
            for k, v in proc_status(self.pid).items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self.stop_evt.wait(0.05)

    def finish(self) -> dict[str, int]:
        self.stop_evt.set()
        self.join()
        for k, v in proc_status(self.pid).items():  # VmHWM is a high-water mark already
            self.peak[k] = max(self.peak.get(k, 0), v)
        return self.peak


def measure(pid: int, drive: Callable[[], T]) -> tuple[T, float, float, dict[str, int]]:
    """Runs drive() while sampling the daemon `pid`: (drive's result, the daemon's CPU
    seconds over all its threads, wall seconds, its peak memory fields in KiB)."""
    sampler = MemSampler(pid)
    sampler.start()
    cpu0 = proc_cpu_seconds(pid)
    t0 = time.monotonic()
    try:
        result = drive()
    finally:
        wall = time.monotonic() - t0
        cpu = proc_cpu_seconds(pid) - cpu0
        mem = sampler.finish()
    return result, cpu, wall, mem


def update_docs_section(doc_path: Path, body: str, begin_mark: str, end_mark: str, heading: str) -> None:
    """Replaces the generated block between the markers (found by the begin mark up to
    its first " (") in doc_path, or appends it under `heading`."""
    text = doc_path.read_text()
    b, e = text.find(begin_mark.split(" (")[0]), text.find(end_mark)
    block = f"{begin_mark}\n{body}\n{end_mark}"
    if b != -1 and e != -1 and e > b:
        text = text[:b] + block + text[e + len(end_mark):]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    doc_path.write_text(text)
