"""How long `retain demo` takes, as the README states it: wall time of the real command
(imports included), the load it ran under, and the demo's own split (full training vs update).

    python benchmarks/demo_time.py [--runs 2]

Prints one Markdown row per run for BENCHMARKS.md ("The demo"). The machine's load is
part of the result: on a shared 2-core machine torch's threads compete with every other
process, so report the load beside the time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run() -> str:
    with tempfile.TemporaryDirectory(prefix="retain-demo-time-") as tmp:
        model = Path(tmp) / "demo-model"
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        cpu = os.times()
        exe = shutil.which("retain", path=str(Path(sys.executable).parent)) or "retain"
        out = subprocess.run([exe, "demo", "--model", str(model), "--json"], capture_output=True, text=True,
                             check=True).stdout
        wall = time.perf_counter() - started
        user = os.times().children_user - cpu.children_user
        load_after = os.getloadavg()[0]
    report = json.loads(out)
    train, update = report["train"]["timings"]["total"], report["update"]["timings"]["total"]
    return (f"| {os.cpu_count()} cores | {load_before:.1f} / {load_after:.1f} | {wall:.0f} s (user {user:.0f} s) "
            f"| {train:.0f} s / {update:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print("| where | load (1-min average, before/after) | wall | of it: full training / update |")
    print("| --- | --- | --- | --- |")
    for _ in range(args.runs):
        print(one_run(), flush=True)


if __name__ == "__main__":
    main()
