"""The agent under a burst of large uploads: its resident memory, /info latency, and what each upload is answered.

Starts `nas agent` on loopback (or attaches to a running one with --url and --pid), measures one small model to warm
it up, then sends --uploads concurrent uploads of a valid ONNX model of --size-mb (one MatMul with a large weight,
measured with warmup 1, repeats 10) while polling /info every 50 ms and sampling the agent's VmRSS every 10 ms (and
the PSS of the agent with all its descendants, e.g. measurement processes, every 200 ms). Linux only (/proc).

    python benchmarks/agent_limits.py [--uploads 8] [--size-mb 60] [--url URL --pid PID] [-- agent args...]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from onnx import TensorProto, helper, numpy_helper

QUICK = {"warmup": 1, "repeats": 10, "rounds": 2, "round_pause_s": 0}


def matmul_model(path: Path, size_mb: float) -> Path:
    """A valid ONNX model of about ``size_mb`` MB: y = x @ W, W square float32."""
    n = int((size_mb * 1e6 / 4) ** 0.5)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of the agent and its descendants: shared pages counted once in all."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start_agent(args: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nas = Path(sys.executable).with_name("nas")
    proc = subprocess.Popen([str(nas) if nas.exists() else "nas", "agent", f"port={port}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            requests.get(f"{url}/info", timeout=1)
            return proc, url
        except requests.ConnectionError:
            if proc.poll() is not None:
                raise SystemExit("the agent exited at start-up") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the agent did not start within 60 s")


def burst(url: str, pid: int, body: bytes, uploads: int) -> dict[str, Any]:
    rss: list[float] = []
    pss: list[float] = []
    info_s: list[float] = []
    answers: list[str] = []
    done = threading.Event()

    def sample_rss() -> None:
        while not done.is_set():
            rss.append(rss_mb(pid))
            time.sleep(0.01)

    def sample_pss() -> None:
        while not done.is_set():
            pss.append(tree_pss_mb(pid))
            time.sleep(0.2)

    def poll_info() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            requests.get(f"{url}/info", timeout=60)
            info_s.append(time.perf_counter() - t0)
            time.sleep(0.05)

    start = threading.Barrier(uploads)

    def upload() -> None:
        start.wait()
        try:
            r = requests.post(f"{url}/measure", params=QUICK, data=body, timeout=600)
            answers.append(f"{r.status_code}" + (f" (Retry-After {r.headers['retry-after']})"
                                                  if "retry-after" in r.headers else ""))
        except requests.ConnectionError as e:
            answers.append(f"connection error {type(e).__name__}")

    base_rss, base_pss = rss_mb(pid), tree_pss_mb(pid)
    samplers = [threading.Thread(target=f) for f in (sample_rss, sample_pss, poll_info)]
    clients = [threading.Thread(target=upload) for _ in range(uploads)]
    t0 = time.perf_counter()
    for t in samplers + clients:
        t.start()
    for t in clients:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    for t in samplers:
        t.join()
    time.sleep(2.0)
    return {"uploads": uploads, "upload_mb": round(len(body) / 1e6, 1), "answers": dict(collections.Counter(answers)),
            "burst_s": round(wall, 1), "rss_before_mb": round(base_rss), "rss_peak_mb": round(max(rss)),
            "rss_after_mb": round(rss_mb(pid)), "tree_pss_before_mb": round(base_pss),
            "tree_pss_peak_mb": round(max(pss, default=base_pss)),
            "info_median_ms": round(1000 * statistics.median(info_s), 1), "info_max_ms": round(1000 * max(info_s), 1),
            "info_polls": len(info_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=8)
    ap.add_argument("--size-mb", type=float, default=60.0)
    ap.add_argument("--url", help="a running agent (no token) instead of starting one; needs --pid")
    ap.add_argument("--pid", type=int, help="the running agent's process id, for its memory")
    ap.add_argument("agent_args", nargs="*", help="extra `nas agent` settings, e.g. max_queue=2")
    args = ap.parse_args()
    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        proc, url = start_agent(args.agent_args)
        pid = proc.pid
    try:
        with tempfile.TemporaryDirectory() as tmp:
            small = matmul_model(Path(tmp) / "small.onnx", 0.1).read_bytes()
            r = requests.post(f"{url}/measure", params=QUICK, data=small, timeout=120)
            r.raise_for_status()
            body = matmul_model(Path(tmp) / "big.onnx", args.size_mb).read_bytes()
            out = burst(url, pid, body, args.uploads)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"{out['uploads']} concurrent uploads of {out['upload_mb']} MB: {out['answers']} in {out['burst_s']} s")
    print(f"agent VmRSS {out['rss_before_mb']} MB before, {out['rss_peak_mb']} MB peak, {out['rss_after_mb']} MB "
          f"2 s after; agent + descendants PSS {out['tree_pss_before_mb']} MB before, "
          f"{out['tree_pss_peak_mb']} MB peak")
    print(f"/info during the burst: median {out['info_median_ms']} ms, max {out['info_max_ms']} ms "
          f"({out['info_polls']} polls)")
    print(json.dumps({**out, "python": sys.version.split()[0], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
