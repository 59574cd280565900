#!/usr/bin/env python3
"""ctest e2e_bench_scale_smoke: `scale_bench.py` end to end with a tiny runtime (1 and 4
exports, 1 and 2 queues, 4K and 64K, the key-churn run) against the iceblkd and iceblk
of a build tree. Checks that every point was measured, that the key churn really
programmed and evicted keys, and that every target is printed with a verdict.

    smoke_scale.py BUILD_DIR OUT_DIR
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    build, out = sys.argv[1], Path(sys.argv[2])
    argv = [sys.executable, str(HERE / "scale_bench.py"), "--build-dir", build, "--out", str(out),
            "--runtime", "0.5", "--rounds", "1", "--churn-rounds", "1", "--exports", "1,4", "--queues", "1,2",
            "--sizes", "4K,64K", "--size", "16M", "--churn-exports", "4", "--no-docs"]
    p = subprocess.run(argv, text=True, capture_output=True, timeout=300)
    sys.stderr.write(p.stderr[-4000:])
    print(p.stdout)
    if p.returncode != 0:
        print(f"scale_bench.py exited with {p.returncode}")
        return 1
    doc = json.loads((out / "results.json").read_text())
    s = doc["summary"]
    errors = []
    if sorted(p["point"] for p in s["points"]) != ["q1/4K", "q1/64K", "q2/4K", "q2/64K"]:
        errors.append(f"points: {[p['point'] for p in s['points']]}")
    for pt in s["points"]:
        for n in ("1", "4"):
            c = pt["by_exports"].get(n)
            if not c or c["iops"] <= 0 or c["cpu_us_per_io"] <= 0:
                errors.append(f"{pt['point']} with {n} exports not measured: {c}")
    if s["churn"]["pairs_per_s"] <= 0 or s["churn"]["io_exports"] != 3:
        errors.append(f"key churn: {s['churn']}")
    if s["memory"]["VmHWM"] <= 0:
        errors.append(f"memory: {s['memory']}")
    for needle in ("flat (CPU per request", "key churn", "VmHWM with 4 exports"):
        line = next((l for l in p.stdout.splitlines() if needle in l), "")
        if "met" not in line and "MISSED" not in line:
            errors.append(f"no verdict printed for '{needle}'")
    for e in errors:
        print(f"FAILED: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
