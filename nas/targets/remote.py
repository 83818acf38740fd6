"""`target=remote`: measure through a `nas agent` over HTTP, with retries on dropped connections."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from nas.config import TargetConfig
from nas.errors import TargetError
from nas.targets.base import LatencyStats


class RemoteTarget:
    def __init__(self, cfg: TargetConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.url = cfg.url.rstrip("/")
        self._info: dict[str, Any] | None = None
        self.last_timings: dict[str, float] = {}
        # onnx: ONNX Runtime on the agent; tflite: LiteRT there; edgetpu: compiled and run on its Edge TPU
        self.artifact = cfg.deploy_format
        self.last_compile: dict[str, Any] | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cfg.token}"} if self.cfg.token else {}

    def _request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        last: Exception | None = None
        for attempt in range(self.cfg.retries):
            try:
                r = requests.request(method, f"{self.url}{path}", headers=self._headers(), timeout=self.cfg.timeout_s,
                                     **kw)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = e
                time.sleep(min(0.5 * 2 ** attempt, 4.0))
                continue
            if r.status_code == 200:
                return r.json()
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text[:200]
            if r.status_code in (401, 403):
                raise TargetError(f"agent at {self.url} refused: {message} (set target.token)")
            raise TargetError(f"agent at {self.url} answered {r.status_code}: {message}")
        raise TargetError(f"agent at {self.url} unreachable after {self.cfg.retries} attempt(s) "
                          f"({type(last).__name__}); start it on the device with `nas agent`")

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._request("GET", "/info")
        return self._info

    def fingerprint(self) -> dict[str, Any]:
        info = self.info()
        return {
            "target": self.cfg.name, "device": info["device"], "machine": info["machine"],
            "runtime": {"onnx": info["runtime"], "tflite": info.get("litert", "LiteRT missing"),
                        "edgetpu": f"{info.get('litert', 'LiteRT missing')} + Edge TPU"}[self.cfg.format],
            "providers": list(self.cfg.providers), "threads": self.cfg.threads, "precision": self.cfg.precision,
            "batch": self.cfg.input_shape[0], "exporter": f"{self.cfg.exporter} opset{self.cfg.opset}",
            "warmup": self.cfg.warmup, "repeats": self.cfg.repeats, "rounds": self.cfg.rounds, "via": "agent",
            "scope": self.cfg.scope if self.cfg.scope == "model" else f"pipeline from {self.cfg.source_size} JPEG",
        }

    def measure(self, model_path: Path) -> LatencyStats:
        params = {"threads": self.cfg.threads, "warmup": self.cfg.warmup, "repeats": self.cfg.repeats,
                  "rounds": self.cfg.rounds, "round_pause_s": self.cfg.round_pause_s,
                  "providers": ",".join(self.cfg.providers), "scope": self.cfg.scope,
                  "source_size": ",".join(str(v) for v in self.cfg.source_size), "format": self.cfg.format,
                  "precision": self.cfg.precision}  # named in the agent's fingerprint
        t0 = time.perf_counter()
        out = self._request("POST", "/measure", params=params, data=Path(model_path).read_bytes())
        self.last_timings = {"measure": time.perf_counter() - t0, "queued": out["timing"]["queued_s"]}
        self.last_compile = out.get("compile")
        return LatencyStats.from_dict(out["stats"])

    def compile_dict(self) -> dict[str, Any] | None:
        """format=edgetpu: the agent's edgetpu_compiler report for the last model."""
        return self.last_compile
