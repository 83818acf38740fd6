"""`nas runtimes arch=NAME`: which runtime runs this model fastest on this machine's CPU.

One architecture is measured under every CPU runtime (ONNX Runtime, LiteRT, OpenVINO, TVM: the target options in
``CPU_RUNTIMES``) with one shared measuring protocol (threads, precision, warm-up, rounds: ``target.*``), through
the measurement cache; a runtime that is not installed, or cannot run this precision, is a row saying so. The export
calls ``card_runtimes`` so that the model card lists the winner under every CPU runtime of the study's machine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nas.config import CPU_RUNTIMES, SearchConfig, TargetConfig, workdir_path
from nas.core.arch import Arch
from nas.core.errors import ConfigError, NasError
from nas.latency.cache import MeasurementCache
from nas.latency.measure import measure_arch, scratch_dir
from nas.latency.targets.base import LatencyStats, targets

# Every TargetConfig field but the backend's identity: what makes two runtimes' figures comparable.
PROTOCOL = tuple(f.name for f in fields(TargetConfig) if f.name not in ("name", "backend"))


@dataclass(frozen=True)
class RuntimeRow:
    """One runtime's figure for the architecture, or why there is none."""

    name: str  # the target option: cpu, tflite_cpu, openvino, tvm
    runtime: str = ""  # the runtime and its version, from the target's fingerprint
    precision: str = ""  # what the runtime computed in (OpenVINO's applied hint where it reports one)
    stats: LatencyStats | None = None
    cached: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "runtime": self.runtime, "precision": self.precision}
        if self.stats is not None:
            out.update(latency_ms=self.stats.to_dict(), cached=self.cached)
        if self.error is not None:
            out["error"] = self.error
        return out


def runtime_config(option: str, protocol: TargetConfig, workdir: Path) -> TargetConfig:
    """The config of target option ``option`` (its ``conf/target`` YAML over its backend's defaults), with the
    shared protocol's values; one line (``ConfigError``) when the backend refuses them."""
    path = files("nas.conf") / "target" / f"{option}.yaml"
    if path.is_file():
        yaml = OmegaConf.load(str(path))
        schema = next(d for d in yaml.pop("defaults") if str(d).endswith("_schema"))
        backend, values = str(schema).removesuffix("_schema"), OmegaConf.to_container(yaml)
    elif option in targets:  # a plugin: selectable by its registered name, with its defaults
        backend, values = option, {"name": option}
    else:
        raise ConfigError(f"runtimes: no target option {option!r} (conf/target/{option}.yaml)")
    assert isinstance(values, dict)
    values.update({k: getattr(protocol, k) for k in PROTOCOL})
    # The YAML may refer to the workdir (TVM's tuning database): resolve it as the command's config would.
    node = OmegaConf.create({"workdir": str(workdir), "target": OmegaConf.merge(
        OmegaConf.structured(targets.get(backend).config), values)})
    try:
        return OmegaConf.to_object(node.target)  # type: ignore[return-value]  (runs the config's own checks)
    except ConfigError:
        raise
    except Exception as e:  # OmegaConf's validation errors: a value the backend's schema refuses
        raise ConfigError(f"target {option}: {str(e).splitlines()[0]}") from None


def measure_runtimes(arch: Arch, protocol: TargetConfig, options: list[str], workdir: Path,
                     num_classes: int) -> list[RuntimeRow]:
    """``arch`` measured under each target option in ``options`` with the shared ``protocol``."""
    from nas.latency.targets import make_target

    cache = MeasurementCache(workdir / "measurements.db")
    rows = []
    with scratch_dir(workdir) as scratch:
        for option in options:
            try:
                target = make_target(runtime_config(option, protocol, workdir))
                runtime = str(target.fingerprint().get("runtime", target.cfg.backend))
                if (tuning := target.fingerprint().get("tuning")) not in (None, ""):
                    runtime += " untuned" if tuning == "untuned" else " tuned"
                precision = applied_precision(target.fingerprint(), str(target.cfg.precision))
                lat = measure_arch(arch, target, cache, scratch, num_classes)
            except NasError as e:  # not installed, refuses this precision, cannot compile this model
                rows.append(RuntimeRow(option, error=str(e)))
                continue
            rows.append(RuntimeRow(option, runtime, precision, lat.stats, lat.cached))
    return rows


def applied_precision(fingerprint: dict[str, Any], requested: str) -> str:
    """The precision a runtime computed in: the one it reports applying (OpenVINO's inference precision hint), else
    the requested one (an int8 model keeps its name: its quantized operations are int8 whatever the hint)."""
    hint = (fingerprint.get("hints") or {}).get("INFERENCE_PRECISION_HINT")
    if requested == "int8" or hint is None:
        return requested
    return {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(str(hint), str(hint))


def fastest(rows: list[RuntimeRow], statistic: str) -> RuntimeRow | None:
    timed = [r for r in rows if r.stats is not None]
    return min(timed, key=lambda r: r.stats.value(statistic)) if timed else None  # type: ignore[union-attr]


def table(rows: list[RuntimeRow], statistic: str) -> str:
    best = fastest(rows, statistic)
    lines = [f"{'runtime':<12} {'version':<34} {'prec':<5} {'p50 ms':>9} {'p90 ms':>9}  {statistic} vs fastest"]
    for r in rows:
        if r.stats is None:
            lines.append(f"{r.name:<12} {'-':<34} {'-':<5} {'-':>9} {'-':>9}  {r.error}")
            continue
        ratio = r.stats.value(statistic) / best.stats.value(statistic) if best and best.stats else float("nan")
        mark = "  <- fastest" if r is best else f"  {ratio:.2f}x"
        lines.append(f"{r.name:<12} {r.runtime[:34]:<34} {r.precision:<5} {r.stats.p50:>9.3f} "
                     f"{r.stats.p90:>9.3f}{mark}")
    return "\n".join(lines)


def runs_on_this_cpu(cfg: TargetConfig) -> bool:
    """Whether the study's own target runs on this machine's CPU (not an agent, a GPU or an Edge TPU)."""
    providers = getattr(cfg, "providers", ["CPUExecutionProvider"])
    return (cfg.backend in ("litert", "tvm") or (cfg.backend == "openvino" and getattr(cfg, "device", "") == "CPU")
            or (cfg.backend == "onnxruntime" and list(providers) == ["CPUExecutionProvider"]))


def card_runtimes(cfg: SearchConfig, arch: Arch, num_classes: int) -> dict[str, Any]:
    """For the model card: ``arch``'s latency under every CPU runtime of this machine (``cfg.card_runtimes``), with
    the study's protocol; measured (or from the cache), never assumed."""
    stat = str(cfg.target.statistic)
    if not cfg.card_runtimes:
        return {"note": "not measured (card_runtimes=[])"}
    if not runs_on_this_cpu(cfg.target):
        return {"note": f"not measured: target {cfg.target.name} does not run on this machine's CPU"}
    rows = measure_runtimes(arch, cfg.target, list(cfg.card_runtimes), workdir_path(cfg.workdir),
                            num_classes)
    best = fastest(rows, stat)
    return {"statistic": stat, "fastest": best.name if best else None,
            "measured": {r.name: {"runtime": r.runtime, "precision": r.precision, "p50": r.stats.p50,
                                  "p90": r.stats.p90,
                                  stat: r.stats.value(stat)} for r in rows if r.stats is not None},
            "unavailable": {r.name: r.error for r in rows if r.stats is None}}


def card_runtimes_md(card: dict[str, Any]) -> str:
    """The model card's line for ``card_runtimes``."""
    if "measured" not in card:
        return f"Other CPU runtimes: {card.get('note', 'not measured')}."
    stat = card["statistic"]
    parts = [f"{name} ({m['runtime']}{', ' + m['precision'] if m.get('precision') else ''}) {m[stat]:.3f} ms"
             for name, m in card["measured"].items()]
    parts += [f"{name}: {why}" for name, why in card["unavailable"].items()]
    return f"This model under each CPU runtime here ({stat}; fastest: {card['fastest']}): " + "; ".join(parts) + "."


__all__ = ["CPU_RUNTIMES", "RuntimeRow", "card_runtimes", "card_runtimes_md", "measure_runtimes"]
