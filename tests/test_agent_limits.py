"""A real `nas agent` under abuse: a runaway measurement, a burst of large uploads, bad parameters, a SIGKILL.

Linux only: the agent's processes and memory are read from /proc. No test passes or fails on a latency figure.
"""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper

from nas.latency.onnx_export import export_onnx
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs
from tests.test_agent import QUICK, start_agent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Minutes of work on any machine: warm-up and timed runs of decode + resize of an 8192 x 8192 JPEG.
RUNAWAY = {"scope": "pipeline", "source_size": "8192,8192", "warmup": 1000, "repeats": 10000}


def parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(fields[1]), fields[0])
    return out


def measurement_processes(agent_pid: int) -> list[int]:
    """Live grandchildren of the agent: its measurement processes (children of its fork server)."""
    procs = parents()
    children = {p for p, (pp, _) in procs.items() if pp == agent_pid}
    return [p for p, (pp, state) in procs.items() if pp in children and state != "Z"]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    return export_onnx(build_model(reference_archs()["mobilenetv3_small_100"], 10), (1, 3, 32, 32), path)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """An agent whose measurements may take 5 s, queue included; its temporary folders go to .tmp."""
    tmp = tmp_path_factory.mktemp("agent-tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(tmp))
        proc, url = start_agent("measure_timeout_s=5")
    proc.tmp = tmp
    yield proc, url
    err = stop(proc)
    assert "Traceback" not in err, err  # bad requests are answered, never crash a handler


def test_overrunning_measurement_is_killed_and_frees_the_device(limited, small_model):
    proc, url = limited
    body = small_model.read_bytes()
    t0 = time.monotonic()
    r = requests.post(f"{url}/measure", params={**QUICK, **RUNAWAY}, data=body, timeout=120)
    assert r.status_code == 504 and "stopped" in r.json()["error"], r.text
    assert time.monotonic() - t0 < 60
    # The runaway measurement process is gone, not left running in the background.
    assert wait_for(lambda: not measurement_processes(proc.pid), 5), measurement_processes(proc.pid)
    # The lock is free: the next request is measured within its own 5 s, instead of waiting behind the runaway.
    r = requests.post(f"{url}/measure", params=QUICK, data=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["stats"]["n"] == 10 and r.json()["timing"]["queued_s"] < 5
    assert not measurement_processes(proc.pid)


@pytest.mark.parametrize(("params", "name"), [
    ({"precision": "bogus"}, "precision"),
    ({"precision": "fp16", "runtime": "litert"}, "precision"),
    ({"colour": "red"}, "colour"),
    ({"round_pause_s": "nan"}, "round_pause_s"),
    ({"round_pause_s": "inf"}, "round_pause_s"),
    ({"threads": "abc"}, "threads"),
    ({"repeats": "1e3"}, "repeats"),
    ({"source_size": "480,abc"}, "source_size"),
    ({"source_size": "480"}, "source_size"),
])
def test_bad_parameters_are_400_naming_the_parameter(limited, small_model, params, name):
    _, url = limited
    r = requests.post(f"{url}/measure", params={**QUICK, **params}, data=small_model.read_bytes(), timeout=60)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
    assert name in r.json()["error"]


def test_precision_is_checked_and_named_in_the_fingerprint(limited, small_model):
    _, url = limited
    r = requests.post(f"{url}/measure", params={**QUICK, "precision": "fp16"}, data=small_model.read_bytes(),
                      timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["fingerprint"]["precision"] == "fp16"


def matmul_model(n: int) -> bytes:
    """A valid ONNX model of n * n * 4 bytes: y = x @ W."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_burst_beyond_the_queue_is_429_and_memory_stays_bounded():
    proc, url = start_agent("max_queue=2")
    try:
        body = matmul_model(2304)  # 21 MB
        upload_mb = len(body) / 2**20
        assert requests.post(f"{url}/measure", params=QUICK, data=matmul_model(64), timeout=60).status_code == 200
        base = rss_mb(proc.pid)
        peak, answers, done = [base], [], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.01)

        start = threading.Barrier(8)

        def upload() -> None:
            start.wait()
            answers.append(requests.post(f"{url}/measure", params=QUICK, data=body, timeout=120))

        sampler = threading.Thread(target=sample)
        sampler.start()
        clients = [threading.Thread(target=upload) for _ in range(8)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        done.set()
        sampler.join()
        codes = sorted(r.status_code for r in answers)
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, [r.text for r in answers]
        refused = next(r for r in answers if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1 and "max_queue=2" in refused.json()["error"]
        # Uploads are spooled to disk and checked in the measurement process: the agent holds none of them in
        # memory (before: every upload, and its parsed copy, until its measurement ended).
        growth = max(peak) - base
        assert growth < upload_mb, f"agent grew {growth:.0f} MB under 8 uploads of {upload_mb:.0f} MB"
        assert requests.get(f"{url}/info", timeout=10).json()["queue"] == 0
    finally:
        stop(proc)


def test_killed_agent_leaves_no_measurement_and_its_folder_goes_at_next_start(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    first, url = start_agent()
    try:
        runaway = threading.Thread(target=lambda: _post_ignoring_errors(url, small_model.read_bytes()), daemon=True)
        runaway.start()
        seen: list[int] = []  # kept from the poll that saw it: a second look may come after it ended
        assert wait_for(lambda: seen.extend(measurement_processes(first.pid)) or seen, 30), "no measurement started"
        child = seen[0]
        folders = list(tmp_path.glob(f"nas-agent-{first.pid}-*"))
        assert len(folders) == 1 and list(folders[0].iterdir())  # the spooled upload
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert wait_for(lambda: not running(child), 15), "the measurement outlived its agent"
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=10)
    assert folders[0].exists()  # nobody cleaned up after SIGKILL
    second, _ = start_agent()
    try:
        assert not folders[0].exists()
        mine = list(tmp_path.glob(f"nas-agent-{second.pid}-*"))
        assert len(mine) == 1
    finally:
        stop(second)
    assert not mine[0].exists()  # removed at a normal shutdown


def _post_ignoring_errors(url: str, body: bytes) -> None:
    try:
        requests.post(f"{url}/measure", params={**QUICK, **RUNAWAY}, data=body, timeout=120)
    except requests.RequestException:
        pass


def test_nothing_left_in_the_folder_after_requests(limited, small_model):
    proc, url = limited
    requests.post(f"{url}/measure", params=QUICK, data=small_model.read_bytes(), timeout=60)
    requests.post(f"{url}/measure", params={"colour": "red"}, data=b"x", timeout=60)
    folders = list(proc.tmp.glob(f"nas-agent-{proc.pid}-*"))
    assert len(folders) == 1 and not list(folders[0].iterdir())
