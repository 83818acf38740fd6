"""The README's first command on a machine half as fast: `nas search` inside a CPU-quota cgroup.

The quota uses a short period (default 5 ms of CPU every 10 ms for the whole process tree), so the throttling
spreads evenly over each inference instead of stalling one run in ten. Needs root and a writable cgroup
hierarchy (v2 `cpu.max` or v1 `cpu.cfs_quota_us`). Prints mobilenetv2_100's p90 with and without the quota (the
slowdown), then the search's wall time, how many trials met the budget, and what it exported.

    python benchmarks/slow_machine.py [--quota-us 5000] [--period-us 10000] [-- extra nas search overrides]
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


def make_cgroup(quota_us: int, period_us: int) -> Path:
    """A fresh cgroup limited to ``quota_us`` of CPU per ``period_us``; v2 when mounted, else v1's cpu controller."""
    name = f"nas-slow-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists():
        path = v2 / name
        path.mkdir()
        (path / "cpu.max").write_text(f"{quota_us} {period_us}")
        return path
    path = v2 / "cpu" / name
    path.mkdir()
    (path / "cpu.cfs_period_us").write_text(str(period_us))
    (path / "cpu.cfs_quota_us").write_text(str(quota_us))
    return path


def run_in(cgroup: Path | None, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    procs = None if cgroup is None else (cgroup / ("cgroup.procs" if (cgroup / "cgroup.procs").exists() else "tasks"))
    # The shell joins the cgroup first, then becomes the command: every thread and child is inside.
    script = ('exec "$@"' if procs is None else f'echo $$ > {procs} && exec "$@"')
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(["sh", "-c", script, "sh", *args], cwd=cwd, capture_output=True, text=True, env=env)


def nas() -> str:
    exe = Path(sys.executable).with_name("nas")
    return str(exe) if exe.exists() else "nas"


def mbv2_p90(cgroup: Path | None, cwd: Path) -> float:
    res = run_in(cgroup, [nas(), "measure", "arch=mobilenetv2_100", "format=json", f"workdir={cwd / 'measure'}"],
                 cwd)
    if res.returncode:
        sys.exit(f"nas measure failed: {res.stderr.strip()[-500:]}")
    shutil.rmtree(cwd / "measure", ignore_errors=True)  # no cache hit for the next measurement
    return json.loads(res.stdout.strip().splitlines()[-1])["latency_ms"]["p90"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quota-us", type=int, default=5000)
    ap.add_argument("--period-us", type=int, default=10000)
    ap.add_argument("overrides", nargs="*", help="extra `nas search` overrides (the README's command has none)")
    args = ap.parse_args()
    try:
        cgroup = make_cgroup(args.quota_us, args.period_us)
    except OSError as e:
        sys.exit(f"cannot create a CPU-quota cgroup ({e}): run as root on a machine with a writable cgroup fs")
    try:
        with tempfile.TemporaryDirectory(prefix="nas-slow-") as tmp:
            cwd = Path(tmp)
            free, slow = mbv2_p90(None, cwd), mbv2_p90(cgroup, cwd)
            print(f"mobilenetv2_100 p90: {free:.2f} ms unthrottled, {slow:.2f} ms at {args.quota_us}/{args.period_us} "
                  f"us (x{slow / free:.2f})", flush=True)
            t0 = time.perf_counter()
            res = run_in(cgroup, [nas(), "search", "format=json", *args.overrides], cwd)
            wall = time.perf_counter() - t0
            print(res.stderr if res.returncode else "\n".join(res.stderr.splitlines()[-40:]), flush=True)
            out = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"nas search {' '.join(args.overrides)} under the quota: exit {res.returncode}, {wall / 60:.1f} min, "
                  f"{out.get('complete')} complete / {out.get('trials')} trials")
            if "export" in out:
                e = out["export"]
                print(f"exported trial {e['trial']} ({e['label']}): {e['latency_ms']:.2f} ms p90 <= "
                      f"{e['budget_ms']:g} ms, proxy top-1 {e['accuracy']:.3f}")
            else:
                print(f"nothing exported: {out.get('error')}")
            print(json.dumps({"quota_us": args.quota_us, "period_us": args.period_us, "mbv2_p90_free_ms": free,
                              "mbv2_p90_quota_ms": slow, "search_wall_s": wall, "exit": res.returncode,
                              "export": out.get("export")}))
    finally:
        cgroup.rmdir()


if __name__ == "__main__":
    main()
