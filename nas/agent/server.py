"""`nas agent`: serve latency measurements of uploaded ONNX models over HTTP, one at a time.

POST /measure  body: the ONNX file; query: threads, warmup, repeats, rounds, round_pause_s, providers
GET  /info     the device's fingerprint and runtimes; whether its GPU works (`gpu`)
Measurements are serialised by one lock, so concurrent clients queue instead of disturbing each other's timings.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nas.agent.validate import ModelRejected, validate_onnx, validate_tflite
from nas.config import AgentConfig, TargetConfig
from nas.errors import TargetError
from nas.targets.ort import OnnxRuntimeTarget

LIMITS = {"threads": (1, 256), "warmup": (0, 1000), "repeats": (5, 10000), "rounds": (1, 100)}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@functools.cache
def gpu_status() -> dict[str, str] | None:
    """Whether this device's ONNX Runtime can run on its GPU (None for a CPU-only build), probed once."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    try:
        cuda = OnnxRuntimeTarget(TargetConfig(name="cuda", providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    except TargetError as e:  # the GPU build without a usable GPU: say why, as target=cuda would
        return {"error": str(e)}
    return {"accelerator": cuda.accelerator or "unknown NVIDIA GPU"}


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()  # one measurement at a time on this device
        self.waiting = 0
        self.measured = 0

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
        import onnxruntime as ort

        base = OnnxRuntimeTarget(TargetConfig(name="agent")).fingerprint()
        from nas.targets.litert import litert_versions

        litert = litert_versions()["ai-edge-litert"]
        return JSONResponse({"device": base["device"], "machine": base["machine"], "runtime": base["runtime"],
                             "litert": f"ai-edge-litert {litert}" if litert != "missing" else "LiteRT missing",
                             "formats": ["onnx"] + (["tflite"] if litert != "missing" else []),
                             "providers": ort.get_available_providers(), "gpu": gpu_status(), "queue": self.waiting,
                             "measured": self.measured, "max_upload_bytes": self._max_bytes()})

    def _max_bytes(self) -> int:
        return int(self.cfg.max_upload_mb * 1024 * 1024)

    async def measure(self, request: Request) -> JSONResponse:
        if (denied := self.authorised(request)) is not None:
            return denied
        try:
            settings = self._settings(dict(request.query_params))
        except ValueError as e:
            return _error(400, str(e))
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > self._max_bytes():
            return _error(413, f"upload of {int(declared)} bytes is over the limit of {self._max_bytes()} bytes")
        try:
            body = await asyncio.wait_for(self._read(request), timeout=self.cfg.request_timeout_s)
        except TimeoutError:
            return _error(408, f"upload not received within {self.cfg.request_timeout_s:g} s")
        except OverflowError:
            return _error(413, f"upload is over the limit of {self._max_bytes()} bytes")
        try:
            validate_onnx(body) if settings.format == "onnx" else validate_tflite(body)
        except ModelRejected as e:
            return _error(400, str(e))
        self.waiting += 1
        try:
            result = await asyncio.wait_for(asyncio.to_thread(self._measure_locked, body, settings),
                                            timeout=self.cfg.measure_timeout_s)
        except TimeoutError:
            return _error(504, f"measurement did not finish within {self.cfg.measure_timeout_s:g} s")
        except TargetError as e:
            return _error(422, str(e))
        finally:
            self.waiting -= 1
        return JSONResponse(result)

    async def _read(self, request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_bytes():
                raise OverflowError
            chunks.append(chunk)
        return b"".join(chunks)

    def _settings(self, q: dict[str, str]) -> TargetConfig:
        values: dict[str, Any] = {}
        for key, (lo, hi) in LIMITS.items():
            if key in q:
                v = int(q[key])
                if not lo <= v <= hi:
                    raise ValueError(f"{key}={v} must be in [{lo}, {hi}]")
                values[key] = v
        if "round_pause_s" in q:
            values["round_pause_s"] = min(max(float(q["round_pause_s"]), 0.0), 1.0)
        if "providers" in q:
            values["providers"] = q["providers"].split(",")
        if "scope" in q:
            if q["scope"] not in ("model", "pipeline"):
                raise ValueError(f"scope={q['scope']} must be model or pipeline")
            values["scope"] = q["scope"]
        if "format" in q:
            if q["format"] not in ("onnx", "tflite", "edgetpu"):
                raise ValueError(f"format={q['format']} must be onnx, tflite or edgetpu")
            values["format"] = q["format"]
        if "source_size" in q:
            h, w = (int(v) for v in q["source_size"].split(","))
            if not (8 <= h <= 8192 and 8 <= w <= 8192):
                raise ValueError(f"source_size={h},{w} must be within 8..8192")
            values["source_size"] = [h, w]
        return replace(TargetConfig(name="agent"), **values)

    def _measure_locked(self, body: bytes, settings: TargetConfig) -> dict[str, Any]:
        queued = time.time()
        with self.lock:
            started = time.time()
            with tempfile.TemporaryDirectory(prefix="nas-agent-") as tmp:
                path = Path(tmp) / ("model.onnx" if settings.format == "onnx" else "model.tflite")
                path.write_bytes(body)
                target = self._target(settings)
                stats = target.measure(path)
            self.measured += 1
            report = getattr(target, "last_compile", None)
            return {"stats": stats.to_dict(), "fingerprint": target.fingerprint(),
                    **({"compile": {k: v for k, v in report.to_dict().items() if k not in ("log", "path")}}
                       if report is not None else {}),
                    "timing": {"queued_s": started - queued, "started": started, "finished": time.time()}}


    @staticmethod
    def _target(settings: TargetConfig) -> Any:
        if settings.format == "edgetpu":  # raises EdgeTpuUnavailable (-> 422) without compiler, runtime or device
            from nas.targets.edgetpu_device import EdgeTpuDevice

            return EdgeTpuDevice(replace(settings, runtime="edgetpu", precision="int8"))
        if settings.format == "tflite":
            from nas.targets.litert import LiteRtTarget

            return LiteRtTarget(replace(settings, runtime="litert", precision="int8"))
        return OnnxRuntimeTarget(settings)


def make_app(cfg: AgentConfig) -> Starlette:
    agent = Agent(cfg)
    return Starlette(routes=[Route("/info", agent.info, methods=["GET"]),
                             Route("/measure", agent.measure, methods=["POST"])])


def serve(cfg: AgentConfig, say: Any = print) -> None:
    import uvicorn

    say(f"nas agent on http://{cfg.host}:{cfg.port} ({'token required' if cfg.token else 'no token: loopback only'}"
        f", uploads up to {cfg.max_upload_mb:g} MB); Ctrl-C stops")
    if (gpu := gpu_status()) is not None:
        say(f"GPU: {gpu['accelerator']}" if "accelerator" in gpu else f"GPU unusable: {gpu['error']}")
    uvicorn.run(make_app(cfg), host=cfg.host, port=cfg.port, log_level="warning",
                timeout_keep_alive=int(cfg.request_timeout_s))
