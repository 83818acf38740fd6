"""Remote backend (``target=remote``): measure through one `nas agent` or a pool of them, over HTTP.

A pool is several agents on devices of one kind (``target.urls``): each measurement goes to the agent with the
shortest queue; an agent that stops answering is skipped with a warning and tried again later; the search stops
with one line only when no agent is left. Every agent of a pool must report the same device and runtime.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import requests

from nas.config import Precision, Scope, TargetConfig, require
from nas.core.errors import TargetError
from nas.latency.targets.base import LatencyStats, Measurement, Prepared, Target, targets
from nas.latency.targets.litert import TfliteFiles


class RemoteRuntime(StrEnum):
    """What the agent runs the upload with (the agent's own target backend of that name)."""

    onnxruntime = "onnxruntime"  # ONNX files
    litert = "litert"  # int8 or fp32 TFLite files (an ARM board)
    edgetpu = "edgetpu"  # int8 TFLite files, compiled and run on the agent host's Edge TPU


@dataclass
class RemoteConfig(TargetConfig):
    backend: str = "remote"
    url: str | None = None  # where `nas agent` listens, e.g. http://127.0.0.1:8765
    urls: list[str] = field(default_factory=list)  # more agents: a pool of devices of one kind
    token: str | None = None  # the agents' token, when they have one
    timeout_s: float = 300.0  # per request
    retries: int = 3  # attempts on a dropped connection, per agent
    down_s: float = 60.0  # how long an agent that stopped answering is left alone before it is tried again
    runtime: RemoteRuntime = RemoteRuntime.onnxruntime
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])  # runtime=onnxruntime

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.url or self.urls), "target=remote needs target.url=http://HOST:PORT of a running "
                                              "`nas agent` (or target.urls=[...] for a pool)")
        require(self.retries >= 1, f"target.retries={self.retries} must be >= 1")
        if self.runtime == RemoteRuntime.litert:
            require(self.precision in (Precision.int8, Precision.fp32),
                    f"target.precision={self.precision}: TFLite targets take int8 (full-integer) or fp32")
        if self.runtime == RemoteRuntime.edgetpu:
            require(self.precision == Precision.int8, f"target.precision={self.precision}: the Edge TPU runs int8 only")
        if self.runtime != RemoteRuntime.onnxruntime:
            require(self.scope == Scope.model, f"target.scope={self.scope}: TFLite targets measure scope=model only")


class _Agent:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.info: dict[str, Any] | None = None
        self.down_until = 0.0
        self.why = ""


@targets.register("remote", RemoteConfig, option=False)
class RemoteTarget(TfliteFiles, Target):
    cfg: RemoteConfig
    local = False  # the agent serialises measurements on its device
    agent_runtime = False  # a client of agents, not a runtime one serves
    def __init__(self, cfg: RemoteConfig) -> None:
        super().__init__(cfg)
        self.file_format = "onnx" if cfg.runtime == RemoteRuntime.onnxruntime else "tflite"  # type: ignore[misc]
        self.agents = [_Agent(u) for u in dict.fromkeys([*([cfg.url] if cfg.url else []), *cfg.urls])]
        for a in self.agents:  # fail now, with one line, when no agent answers
            self._info(a)
        live = [a for a in self.agents if a.info is not None]
        if not live:
            raise TargetError("no agent reachable: " + "; ".join(f"{a.url} ({a.why})" for a in self.agents)
                              + "; start one on the device with `nas agent`")
        for a in self.agents:
            if a.info is None:
                print(f"warning: agent {a.url} skipped for now ({a.why})", file=sys.stderr)
        first = live[0].info
        for a in live[1:]:
            if _device(a.info) != _device(first):
                raise TargetError(f"agent {a.url} is a different device ({_device(a.info)}) from {live[0].url} "
                                  f"({_device(first)}): a pool must be devices of one kind")

    # -- HTTP -----------------------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cfg.token}"} if self.cfg.token else {}

    def _request(self, agent: _Agent, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """One request to one agent; ``ConnectionError`` once it stays unreachable, ``TargetError`` on a refusal."""
        last: Exception | None = None
        for attempt in range(self.cfg.retries):
            try:
                r = requests.request(method, f"{agent.url}{path}", headers=self._headers(),
                                     timeout=self.cfg.timeout_s, **kw)
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
            if r.status_code == 429:  # the agent's queue is full: wait as it asks, then try again
                time.sleep(min(float(r.headers.get("Retry-After", "5")), 60.0))
                continue
            if r.status_code in (401, 403):
                raise TargetError(f"agent at {agent.url} refused: {message} (set target.token)")
            raise TargetError(f"agent at {agent.url} answered {r.status_code}: {message}")
        raise ConnectionError(f"unreachable after {self.cfg.retries} attempt(s) ({type(last).__name__})")

    def _info(self, agent: _Agent) -> dict[str, Any] | None:
        try:
            agent.info = self._request(agent, "GET", "/info")
        except ConnectionError as e:
            agent.down_until, agent.why = time.monotonic() + self.cfg.down_s, str(e)
            return None
        return agent.info

    def _pick(self) -> _Agent:
        """The reachable agent with the shortest queue; agents left alone long enough are asked again."""
        now = time.monotonic()
        queues = []
        for a in self.agents:
            if a.down_until > now:
                continue
            info = self._info(a)
            if info is not None:
                queues.append((info.get("queue", 0), a))
        if not queues:
            raise TargetError("no agent left: " + "; ".join(f"{a.url} ({a.why})" for a in self.agents)
                              + "; start one on the device with `nas agent`")
        return min(queues, key=lambda q: q[0])[1]

    # -- Target -----------------------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        info = next(a.info for a in self.agents if a.info is not None)
        runtime = {RemoteRuntime.onnxruntime: info["runtime"],
                   RemoteRuntime.litert: info.get("litert", "LiteRT missing"),
                   RemoteRuntime.edgetpu: f"{info.get('litert', 'LiteRT missing')} + Edge TPU"}[self.cfg.runtime]
        return {"device": info["device"], "machine": info["machine"], "runtime": runtime,
                "providers": list(self.cfg.providers), "via": "agent"}

    def measure(self, path: Path) -> Measurement:
        params = {"threads": self.cfg.threads, "warmup": self.cfg.warmup, "repeats": self.cfg.repeats,
                  "rounds": self.cfg.rounds, "round_pause_s": self.cfg.round_pause_s, "max_rounds": self.cfg.max_rounds,
                  "tolerance": self.cfg.tolerance, "time_limit_s": self.cfg.time_limit_s,
                  "drift_tolerance": self.cfg.drift_tolerance, "scope": str(self.cfg.scope),
                  "source_size": ",".join(str(v) for v in self.cfg.source_size), "runtime": str(self.cfg.runtime),
                  "precision": str(self.cfg.precision)}
        if self.cfg.runtime == RemoteRuntime.onnxruntime:
            params["providers"] = ",".join(self.cfg.providers)
        while True:
            agent = self._pick()
            t0 = time.perf_counter()
            try:
                out = self._request(agent, "POST", "/measure", params=params, data=Path(path).read_bytes())
            except ConnectionError as e:  # the device went away mid-search: the pool goes on without it
                agent.down_until, agent.why = time.monotonic() + self.cfg.down_s, str(e)
                print(f"warning: agent {agent.url} skipped for now ({e})", file=sys.stderr)
                continue
            return Measurement(LatencyStats.from_dict(out["stats"]), {**(out.get("details") or {}), "agent": agent.url},
                               {"measure": time.perf_counter() - t0, "queued": out["timing"]["queued_s"]})

    # ONNX files: what every target does (Target); TFLite files: what TFLite targets do (TfliteFiles).
    def prepare(self, model: Any, onnx_path: Path, shape: tuple[int, int, int, int], data: Any) -> Prepared:
        if self.file_format == "onnx":
            return super(TfliteFiles, self).prepare(model, onnx_path, shape, data)
        return super().prepare(model, onnx_path, shape, data)

    @classmethod
    def deployed_top1(cls, cfg: TargetConfig, model: Any, data: Any, batch_size: int) -> float | None:
        if cfg.runtime == RemoteRuntime.onnxruntime:  # type: ignore[attr-defined]
            return super(TfliteFiles, cls).deployed_top1(cfg, model, data, batch_size)
        return super().deployed_top1(cfg, model, data, batch_size)

    @classmethod
    def bundle_files(cls, cfg: TargetConfig, model: Any, shape: tuple[int, int, int, int],
                     out: Path) -> dict[str, Any]:
        if cfg.runtime == RemoteRuntime.onnxruntime:  # type: ignore[attr-defined]
            return super(TfliteFiles, cls).bundle_files(cfg, model, shape, out)
        return super().bundle_files(cfg, model, shape, out)

    @classmethod
    def deploy_note(cls, cfg: TargetConfig) -> str:
        if cfg.runtime == RemoteRuntime.onnxruntime:  # type: ignore[attr-defined]
            return super(TfliteFiles, cls).deploy_note(cfg)
        return super().deploy_note(cfg)


def _device(info: dict[str, Any] | None) -> tuple[str, str, str]:
    info = info or {}
    return info.get("device", "?"), info.get("machine", "?"), info.get("runtime", "?")
