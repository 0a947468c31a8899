"""Time to start the embedded local cloud and deploy template.yaml onto it, and a first request's latency.

Usage: .venv/bin/python bench/bench_localcloud.py [--runs 5]
Each run is a fresh process (moto's state is process-global), so every figure includes a cold start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

CHILD = r"""
import json, time, tempfile, urllib.request
t0 = time.monotonic()
from localcloud.cloud import LocalCloud
t_import = time.monotonic() - t0
c = LocalCloud(state_dir=__import__("pathlib").Path(tempfile.mkdtemp()))
c.start(); d = c.deploy()
t_ready = time.monotonic() - t0
api = c.apis["ControlApi"]
req = urllib.request.Request(api.url + "/training-jobs", headers={"x-api-key": sorted(api.api_keys)[0]})
t1 = time.monotonic()
urllib.request.urlopen(req).read()
t_first = time.monotonic() - t1
t2 = time.monotonic()
urllib.request.urlopen(req).read()
t_warm = time.monotonic() - t2
c.stop()
print(json.dumps({"import": t_import, "server": c.timings.server_s, "transform": c.timings.transform_s,
                  "deploy": c.timings.deploy_s, "ready": t_ready, "first_request": t_first, "warm_request": t_warm,
                  "resources": len(d.physical)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=120
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ["import", "server", "transform", "deploy", "ready", "first_request", "warm_request"]
    print(
        f"machine: {platform.node()} {os.cpu_count()} cores, {platform.python_version()}; runs: {args.runs}; "
        f"resources deployed: {rows[0]['resources']}"
    )
    print("| phase | median s | max s |")
    print("| --- | ---: | ---: |")
    for k in keys:
        values = [r[k] for r in rows]
        print(f"| {k} | {statistics.median(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
