"""`nas agent`: serve latency measurements of uploaded ONNX models over HTTP, one at a time.

POST /measure  body: the model file; query: runtime (a target backend: onnxruntime, litert, edgetpu, openvino),
               threads, warmup, repeats, rounds, round_pause_s, the stopping rule (tolerance, max_rounds,
               time_limit_s, drift_tolerance), providers, scope, source_size, precision (anything else is
               refused); the settings are built into that backend's own config, so they are checked as `target=...`
               overrides are
GET  /info     the device's fingerprint and runtimes; whether its GPU works (`gpu`)
Measurements are serialised by one lock, so concurrent clients queue instead of disturbing each other's timings.
Each one runs in a child process, killed when it overruns `measure_timeout_s`, so a runaway measurement cannot hold
the device; at most `max_queue` requests wait behind it (more are answered 429 before their upload is read), and
uploads are spooled to a per-agent folder on disk rather than held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import math
import multiprocessing
import os
import platform
import re
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nas.agent.validate import ModelRejected, validate_file
from nas.config import AgentConfig, Precision, Scope, TargetConfig
from nas.core.errors import CandidateFailed, ConfigError, TargetError, first_line
from nas.core.workers import pid_alive
from nas.latency.targets.base import make_target, targets
from nas.latency.targets.ort import OnnxRuntimeTarget, OrtConfig, cpu_model

LIMITS = {"threads": (1, 256), "warmup": (0, 1000), "repeats": (5, 10000), "rounds": (1, 100), "max_rounds": (1, 100)}
# The stopping rule's floats, clamped: a longer time limit would only stretch the request past measure_timeout_s.
CLAMPED = {"round_pause_s": (0.0, 1.0), "tolerance": (0.0, 1.0), "drift_tolerance": (0.0, 1.0),
           "time_limit_s": (0.1, 60.0)}
PARAMS = (*LIMITS, *CLAMPED, "providers", "scope", "runtime", "source_size", "precision")

TMP_PREFIX = "nas-agent-"  # + PID + "-": lets a later agent tell a dead agent's folder from a live one's
# Imported once by the fork server, so each measurement process starts in milliseconds (torch: the fingerprint).
PRELOAD = ["nas.agent.server", "onnxruntime", "torch"]


def agent_runtimes(installed_only: bool = False) -> list[str]:
    """The target backends an agent serves (``agent_runtime``), from the registry: a new backend needs no edit here."""
    names = [n for n in targets.names() if targets.get(n).factory.agent_runtime]
    names = sorted(names, key=lambda n: n != "onnxruntime")  # the default first
    return [n for n in names if targets.get(n).factory.installed()] if installed_only else names


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@functools.cache
def gpu_status() -> dict[str, str] | None:
    """Whether this device's ONNX Runtime can run on its GPU (None for a CPU-only build), probed once."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    try:
        cuda = OnnxRuntimeTarget(OrtConfig(name="cuda", providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    except TargetError as e:  # the GPU build without a usable GPU: say why, as target=cuda would
        return {"error": str(e)}
    return {"accelerator": cuda.accelerator or "unknown NVIDIA GPU"}


def remove_stale_folders(root: Path) -> list[Path]:
    """Remove upload folders left by agents that died without cleaning up (their PID is gone, or is now ours)."""
    removed = []
    for d in root.glob(f"{TMP_PREFIX}*"):
        m = re.fullmatch(rf"{TMP_PREFIX}(\d+)-\w+", d.name)
        if m and d.is_dir() and (int(m[1]) == os.getpid() or not pid_alive(int(m[1]))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _watchdog(agent_pid: int, seconds: float) -> None:
    """Kill this measurement process when the agent exits, or after ``seconds`` should the agent fail to.

    Its parent is the fork server, which outlives a killed agent while any of its children runs."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(agent_pid)  # Linux >= 5.3: readable once the agent has exited
            select.select([fd], [], [], seconds)
        except (AttributeError, OSError):  # no pidfd (other systems), or the agent is already gone: poll
            end = time.monotonic() + seconds
            while time.monotonic() < end and pid_alive(agent_pid):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def _noop() -> None:
    pass


def _measure_in_child(conn: Connection, path: str, settings: TargetConfig, agent_pid: int, seconds: float) -> None:
    """Runs in the measurement process: check the upload, measure it, send back plain data (or why it failed)."""
    _watchdog(agent_pid, seconds)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the agent's terminal: the agent stops this process
    try:
        validate_file(Path(path), _file_format(settings))
        target = make_target(settings)
        m = target.measure(Path(path))
        out: tuple[str, Any] = ("ok", {"stats": m.stats.to_dict(), "fingerprint": target.fingerprint(),
                                       "details": m.details})
    except ModelRejected as e:
        out = ("rejected", str(e))
    except (TargetError, CandidateFailed) as e:
        out = ("target", str(e))
    except Exception as e:  # a bug or a runtime crash with a Python exception: the agent answers 500 and goes on
        import traceback

        traceback.print_exc()
        out = ("failed", f"{type(e).__name__}: {first_line(e)}")
    conn.send(out)
    conn.close()


class Outcome(Exception):
    """An answer other than 200 from the measurement side: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()  # one measurement at a time on this device
        self.active = 0  # /measure requests admitted and not yet answered (uploading, queued or measuring)
        self.measured = 0
        self.mean_s = 1.0  # moving average of a measurement's duration, for Retry-After
        self.child: Any = None  # the running measurement process
        self.closing = False
        self.ready = threading.Event()  # the fork server is up: measurement processes start in milliseconds
        self.tmp: Path | None = None
        self.static: dict[str, Any] = {}
        self.ctx = multiprocessing.get_context("forkserver")  # fork is unsafe in a threaded server
        # A thread per admitted request (they wait for the lock there), never more: the default pool is smaller.
        self.pool = ThreadPoolExecutor(max_workers=cfg.max_queue + 1, thread_name_prefix="measure")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(self.start)
        try:
            yield
        finally:
            self.stop()

    def start(self) -> None:
        root = Path(tempfile.gettempdir())
        remove_stale_folders(root)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=root))
        self.static = self._static_info()
        # Start the fork server (it imports PRELOAD, seconds) in the background now, not in the first request.
        self.ctx.set_forkserver_preload(PRELOAD)
        threading.Thread(target=self._warm_up, daemon=True).start()

    def _warm_up(self) -> None:
        try:
            warm = self.ctx.Process(target=_noop, daemon=True)
            warm.start()
            warm.join()
        except OSError:  # a measurement will say why
            pass
        finally:
            self.ready.set()

    def interrupt(self) -> None:
        """Shutting down: end the running measurement now; requests waiting for the lock give up (503)."""
        self.closing = True
        if (child := self.child) is not None:
            child.kill()

    def stop(self) -> None:
        self.interrupt()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _static_info(self) -> dict[str, Any]:
        """What /info says that cannot change while the agent runs, computed once (no session per request)."""
        import onnxruntime as ort

        from nas.latency.targets.litert import litert_versions

        litert = litert_versions()["ai-edge-litert"]
        return {"device": cpu_model(), "machine": platform.machine(), "runtime": f"onnxruntime {ort.__version__}",
                "litert": f"ai-edge-litert {litert}" if litert != "missing" else "LiteRT missing",
                "runtimes": agent_runtimes(installed_only=True),
                "providers": ort.get_available_providers(), "gpu": gpu_status(),
                "max_upload_bytes": self._max_bytes(), "max_queue": self.cfg.max_queue}

    def authorised(self, request: Request) -> JSONResponse | None:
        if not self.cfg.token:
            return None
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return _error(401, "this agent needs a token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(header[7:].encode(), self.cfg.token.encode()):
            return _error(403, "wrong token")
        return None

    async def info(self, request: Request) -> JSONResponse:
        if (denied := self.authorised(request)) is not None:
            return denied
        return JSONResponse({**self.static, "queue": self.active, "measured": self.measured,
                             "ready": self.ready.is_set()})

    def _max_bytes(self) -> int:
        return int(self.cfg.max_upload_mb * 1024 * 1024)

    async def measure(self, request: Request) -> JSONResponse:
        if (denied := self.authorised(request)) is not None:
            return denied
        try:
            settings = self._settings(request.query_params.multi_items())
        except ValueError as e:
            return _error(400, str(e))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes():
            return _error(413, f"upload of {int(declared)} bytes is over the limit of {self._max_bytes()} bytes")
        # Checked before the body is read: a refused upload costs the agent no memory and no disk.
        if self.active > self.cfg.max_queue:
            retry = min(600, max(1, math.ceil(self.mean_s * self.active)))
            return _error(429, f"{self.active} measurement request(s) already running or queued (max_queue="
                               f"{self.cfg.max_queue}); retry in {retry} s", headers={"Retry-After": str(retry)})
        self.active += 1
        path = None
        try:
            fd, name = tempfile.mkstemp(suffix=f".{_file_format(settings)}", dir=self.tmp)
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as f:
                    await asyncio.wait_for(self._spool(request, f), timeout=self.cfg.request_timeout_s)
            except TimeoutError:
                return _error(408, f"upload not received within {self.cfg.request_timeout_s:g} s")
            except OverflowError:
                return _error(413, f"upload is over the limit of {self._max_bytes()} bytes")
            except ClientDisconnect:
                return _error(400, "the client disconnected during the upload")
            try:
                result = await asyncio.get_running_loop().run_in_executor(self.pool, self._measure_locked, path,
                                                                          settings)
            except Outcome as e:
                return _error(e.status, str(e))
        finally:
            self.active -= 1
            if path is not None:
                path.unlink(missing_ok=True)
        return JSONResponse(result)

    async def _spool(self, request: Request, f: Any) -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_bytes():
                raise OverflowError
            f.write(chunk)  # chunks of tens of KB to the page cache: fine on the event loop

    def _settings(self, items: list[tuple[str, str]]) -> TargetConfig:
        q: dict[str, str] = {}
        for key, value in items:
            if key not in PARAMS:
                raise ValueError(f"unknown parameter {key!r}: this agent takes {', '.join(PARAMS)}")
            if key in q:
                raise ValueError(f"parameter {key!r} given twice")
            q[key] = value
        values: dict[str, Any] = {}
        for key, (lo, hi) in LIMITS.items():
            if key in q:
                v = _number(key, q[key], int)
                if not lo <= v <= hi:
                    raise ValueError(f"{key}={v} must be in [{lo}, {hi}]")
                values[key] = v
        for key, (lo, hi) in CLAMPED.items():
            if key in q:
                values[key] = min(max(_number(key, q[key], float), lo), hi)
        if "providers" in q:
            values["providers"] = q["providers"].split(",")
        if "scope" in q:
            values["scope"] = _choice("scope", q["scope"], Scope)
        if "precision" in q:  # the models are converted on the client: precision labels the fingerprint
            values["precision"] = _choice("precision", q["precision"], Precision)
        runtime = q.get("runtime", "onnxruntime")
        if runtime not in agent_runtimes():
            raise ValueError(f"runtime={runtime} must be one of {', '.join(agent_runtimes())}")
        if "source_size" in q:
            parts = q["source_size"].split(",")
            if len(parts) != 2:
                raise ValueError(f"source_size={q['source_size']} must be HEIGHT,WIDTH")
            h, w = (_number("source_size", v, int) for v in parts)
            if not (8 <= h <= 8192 and 8 <= w <= 8192):
                raise ValueError(f"source_size={h},{w} must be within 8..8192")
            values["source_size"] = [h, w]
        if runtime == "edgetpu":  # the agent runs what it is sent on its own Edge TPU, or says what is missing
            from nas.latency.targets.edgetpu import EdgeTpuMode, EdgeTpuOptions

            values["edgetpu"] = EdgeTpuOptions(mode=EdgeTpuMode.measure)
        elif "providers" in values and runtime != "onnxruntime":
            raise ValueError(f"providers applies to runtime=onnxruntime, not runtime={runtime}")
        try:  # the backend's own config checks what fits it (e.g. precision int8 only for the Edge TPU)
            return targets.get(runtime).config(name="agent", **values)
        except ConfigError as e:
            raise ValueError(str(e).replace("target.", "")) from None

    def _measure_locked(self, path: Path, settings: TargetConfig) -> dict[str, Any]:
        queued = time.time()
        self.ready.wait(120)  # just after start-up: the time limit starts once the fork server is up
        deadline = time.monotonic() + self.cfg.measure_timeout_s
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise Outcome(504, f"measurement not started within {self.cfg.measure_timeout_s:g} s: the device was "
                               "busy with earlier requests")
        try:
            if self.closing:
                raise Outcome(503, "the agent is shutting down")
            started = time.time()
            out = self._run_child(path, settings, deadline)
            self.measured += 1
            finished = time.time()
            self.mean_s = 0.7 * self.mean_s + 0.3 * (finished - started)
            return {**out, "timing": {"queued_s": started - queued, "started": started, "finished": finished}}
        finally:
            self.lock.release()

    def _run_child(self, path: Path, settings: TargetConfig, deadline: float) -> dict[str, Any]:
        """Measure in a child process; kill it at the deadline so that the device is free for the next request."""
        receive, send = self.ctx.Pipe(duplex=False)
        grace = deadline - time.monotonic() + 30  # the agent kills it at the deadline; this is for a hung agent
        child = self.ctx.Process(target=_measure_in_child, args=(send, str(path), settings, os.getpid(), grace),
                                 daemon=True)
        try:
            child.start()
        except OSError as e:
            receive.close()
            raise Outcome(500, f"could not start a measurement process: {e}") from None
        finally:
            send.close()  # the child holds its own copy: its exit without an answer reads as EOF here
        self.child = child
        if self.closing:  # stop() came between start() and the line above
            child.kill()
        try:
            if not receive.poll(max(0.0, deadline - time.monotonic())):
                raise Outcome(504, f"measurement did not finish within {self.cfg.measure_timeout_s:g} s; "
                                   "it was stopped")
            try:
                kind, payload = receive.recv()
            except EOFError:
                if self.closing:
                    raise Outcome(503, "the agent is shutting down") from None
                child.join(5)
                raise Outcome(500, f"the measurement process died (exit code {child.exitcode})") from None
        finally:
            if child.is_alive():
                child.kill()
            child.join(10)
            self.child = None
            receive.close()
        if kind == "ok":
            return payload
        raise Outcome({"rejected": 400, "target": 422}.get(kind, 500), payload)

def _file_format(settings: TargetConfig) -> str:
    return "tflite" if settings.backend in ("litert", "edgetpu") else "onnx"


def _choice(key: str, text: str, kind: type[Any]) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{key}={text} must be one of {', '.join(v.value for v in kind)}") from None


def _number(key: str, text: str, kind: type[int] | type[float]) -> Any:
    """A finite int or float query value, or a ValueError naming the parameter."""
    try:
        v = kind(text)
    except ValueError:
        raise ValueError(f"{key}={text} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(v):
        raise ValueError(f"{key}={text} must be a finite number")
    return v


def make_app(cfg: AgentConfig) -> Starlette:
    agent = Agent(cfg)
    app = Starlette(routes=[Route("/info", agent.info, methods=["GET"]),
                            Route("/measure", agent.measure, methods=["POST"])], lifespan=agent.lifespan)
    app.state.agent = agent
    return app


def serve(cfg: AgentConfig, say: Any = print) -> None:
    import uvicorn

    say(f"nas agent on http://{cfg.host}:{cfg.port} ({'token required' if cfg.token else 'no token: loopback only'}"
        f", uploads up to {cfg.max_upload_mb:g} MB, at most {cfg.max_queue} queued); Ctrl-C stops")
    if (gpu := gpu_status()) is not None:
        say(f"GPU: {gpu['accelerator']}" if "accelerator" in gpu else f"GPU unusable: {gpu['error']}")
    app = make_app(cfg)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.agent.interrupt()  # answer 503 now rather than wait for (or cancel) a long measurement
            super().handle_exit(sig, frame)

    # Uploads still arriving at Ctrl-C get a few seconds.
    server = Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                   timeout_keep_alive=int(cfg.request_timeout_s), timeout_graceful_shutdown=5))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run: the port was taken, say; uvicorn logged why
        sys.exit(3)
