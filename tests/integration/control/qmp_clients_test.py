#!/usr/bin/env python3
"""iceblkd's control socket driven by real QMP clients against the real binary.

  qmp_clients_test.py raw    --iceblkd BIN --iceblk BIN   raw JSON over the socket
  qmp_clients_test.py qemu   --iceblkd BIN --iceblk BIN   the qemu.qmp library (PyPI)

The qemu.qmp mode exits 77 (skipped) when the library is not installed
(scripts/install-deps.sh --qmp puts it in build/qmp-venv).
"""
import argparse
import asyncio
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
SKIP = 77


class Daemon:
    def __init__(self, iceblkd, tmp):
        self.tmp = tmp
        self.ctl = os.path.join(tmp, "ctl.sock")
        self.log = open(os.path.join(tmp, "iceblkd.log"), "w")
        self.proc = subprocess.Popen([iceblkd, "--control", self.ctl, "--num-slots", "64"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        # The socket file appears at bind(), a moment before listen(): wait until a
        # connection is accepted (the probe's QMP session ends when it closes).
        deadline = time.time() + 10
        while True:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("iceblkd did not listen on its control socket")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(self.ctl)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)

    def export_args(self, name, offset, count):
        return {"name": name, "socket": os.path.join(self.tmp, name + ".sock"),
                "image": os.path.join(self.tmp, name + ".img"), "size": "8M",
                "slot_offset": offset, "max_slots": count}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def verify(iceblk, sock):
    r = subprocess.run([iceblk, "verify", "-s", sock, "--length", "256K"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "verify PASSED" in r.stdout, (r.stdout, r.stderr)


class Raw:
    """Newline-delimited JSON over the unix socket; events kept aside."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(20)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.events = []
        self.greeting = self.read()

    def read(self):
        line = self.f.readline()
        if not line:
            return None
        return json.loads(line)

    def send(self, obj):
        self.s.sendall((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")

    def reply(self):
        while True:
            m = self.read()
            if m is None or "event" not in m:
                return m
            self.events.append(m)

    def cmd(self, name, args=None, **extra):
        m = {"execute": name}
        if args is not None:
            m["arguments"] = args
        m.update(extra)
        self.send(m)
        return self.reply()

    def event(self, name, timeout=10):
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            if time.time() > deadline:
                raise AssertionError(f"no {name} event; have {self.events}")
            m = self.read()
            if m is not None and "event" in m:
                self.events.append(m)


def run_raw(args, d):
    c = Raw(d.ctl)
    assert set(c.greeting["QMP"]) == {"version", "capabilities"}, c.greeting
    r = c.cmd("query-exports", id=1)
    assert r["error"]["class"] == "CommandNotFound" and r["id"] == 1, r
    assert c.cmd("qmp_capabilities") == {"return": {}}
    c.send("{not json")
    c.send("}")
    r = c.reply()
    assert r["error"]["class"] == "GenericError" and "JSON parse error" in r["error"]["desc"], r
    r = c.cmd("add-export", d.export_args("a", 0, 8), id="add-a")
    assert r == {"return": {}, "id": "add-a"}, r
    r = c.cmd("add-export", d.export_args("b", 7, 8))
    assert "overlap" in r["error"]["desc"] and "'a'" in r["error"]["desc"], r
    assert not os.path.exists(os.path.join(d.tmp, "b.img")), "a refused add left its image"
    verify(args.iceblk, os.path.join(d.tmp, "a.sock"))
    assert c.event("EXPORT_CONNECTED")["data"] == {"export": "a"}
    ev = c.event("KEYSLOT_PROGRAMMED")
    assert set(ev["data"]) == {"slot", "vm"} and ev["data"]["vm"] == "a", ev
    assert set(ev["timestamp"]) == {"seconds", "microseconds"}, ev
    assert c.event("EXPORT_DISCONNECTED")["data"] == {"export": "a"}
    stats = c.cmd("query-stats", {"export": "a"})["return"]
    assert stats["exports"][0]["queues"][0]["bytes-encrypted"] >= 256 * 1024, stats
    text = c.cmd("query-stats", {"format": "prometheus"})["return"]["text"]
    assert 'iceblk_crypt_bytes_total{export="a",queue="0",direction="encrypt"}' in text, text
    # The iceblk ctl client on the same daemon, beside the raw client.
    ctl = [args.iceblk, "ctl", "-c", d.ctl]
    r = subprocess.run(ctl + ["query-exports"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "NAME" in r.stdout and "\na " in r.stdout, (r.stdout, r.stderr)
    b = d.export_args("b", 8, 8)
    r = subprocess.run(ctl + ["add-export"] + [f"{k}={v}" for k, v in b.items()], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "add-export: ok" in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run(ctl + ["add-export", "name=c", f"socket={d.tmp}/c.sock", f"image={d.tmp}/c.img", "size=8M",
                              "slot_offset=12"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "slot ranges overlap" in r.stderr, (r.stdout, r.stderr)
    r = subprocess.run(ctl + ["query-engine"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "engine: 64 slots" in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run(ctl + ["query-stats"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "ENCRYPTED B" in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run(ctl + ["query-exports", "--json"], capture_output=True, text=True, timeout=30)
    assert [e["name"] for e in json.loads(r.stdout)] == ["a", "b"], r.stdout
    r = subprocess.run(ctl + ["no-such"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no-such has not been found" in r.stderr, (r.stdout, r.stderr)
    r = subprocess.run(ctl + ["remove-export", "name=b"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert c.cmd("remove-export", {"name": "a"}) == {"return": {}}
    assert not os.path.exists(os.path.join(d.tmp, "a.sock"))
    assert c.cmd("query-exports") == {"return": []}
    assert c.cmd("quit") == {"return": {}}
    d.proc.wait(10)
    assert d.proc.returncode == 0, d.proc.returncode


def import_qemu_qmp():
    try:
        import qemu.qmp  # noqa: F401
        return True
    except ImportError:
        pass
    for site in glob.glob(os.path.join(ROOT, "build", "qmp-venv", "lib", "python3*", "site-packages")):
        sys.path.insert(0, site)
    try:
        import qemu.qmp  # noqa: F401
        return True
    except ImportError:
        return False


async def run_qemu_async(args, d):
    from qemu.qmp import ExecuteError, QMPClient

    qmp = QMPClient("iceblk-test")
    await qmp.connect(d.ctl)  # greeting + qmp_capabilities by the library
    assert await qmp.execute("query-exports") == []
    for i in range(8):
        await qmp.execute("add-export", d.export_args(f"vm{i}", i * 8, 8))
    try:
        await qmp.execute("add-export", d.export_args("dup", 4, 2))
        raise AssertionError("overlapping add-export accepted")
    except ExecuteError as e:
        assert "overlap" in str(e), str(e)
    try:
        await qmp.execute("no-such-command")
        raise AssertionError("unknown command accepted")
    except ExecuteError as e:
        assert e.error_class == "CommandNotFound", e.error_class
    exports = await qmp.execute("query-exports")
    assert [e["name"] for e in exports] == [f"vm{i}" for i in range(8)], exports
    for i in range(8):
        verify(args.iceblk, os.path.join(d.tmp, f"vm{i}.sock"))
    names = set()
    deadline = time.time() + 20
    while len(names) < 8 and time.time() < deadline:
        ev = await asyncio.wait_for(qmp.events.get(), 20)
        if ev["event"] == "KEYSLOT_PROGRAMMED":
            names.add(ev["data"]["vm"])
    assert len(names) == 8, names
    engine = await qmp.execute("query-engine")
    assert engine["num-slots"] == 64 and len(engine["vms"]) == 8, engine
    await qmp.execute("remove-export", {"name": "vm3"})
    assert len(await qmp.execute("query-exports")) == 7
    await qmp.execute("quit")
    try:
        await qmp.disconnect()
    except (EOFError, OSError):  # the server closed first, as "quit" does
        pass


def run_qemu(args, d):
    asyncio.run(run_qemu_async(args, d))
    d.proc.wait(10)
    assert d.proc.returncode == 0, d.proc.returncode


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["raw", "qemu"])
    p.add_argument("--iceblkd", required=True)
    p.add_argument("--iceblk", required=True)
    args = p.parse_args()
    if args.mode == "qemu" and not import_qemu_qmp():
        print("SKIP: the qemu.qmp library is not installed (scripts/install-deps.sh --qmp)")
        return SKIP
    tmp = tempfile.mkdtemp(prefix="iceblk-qmp-py-")
    d = Daemon(args.iceblkd, tmp)
    try:
        (run_raw if args.mode == "raw" else run_qemu)(args, d)
    except BaseException:
        d.stop()
        with open(os.path.join(tmp, "iceblkd.log")) as f:
            sys.stderr.write(f.read())
        raise
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.mode}: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
