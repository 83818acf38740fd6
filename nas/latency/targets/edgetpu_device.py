"""Coral Edge TPU: compile an int8 ``.tflite`` with ``edgetpu_compiler`` and time it through the libedgetpu delegate.

Three things must exist, and each missing one is reported as :class:`EdgeTpuUnavailable` with what to install:
the compiler (x86-64 Debian/Ubuntu Linux only), the runtime library ``libedgetpu`` and an attached Coral device
(USB Accelerator, Dev Board, M.2 or PCIe card). Ops the compiler cannot map stay on the CPU; they are part of the
real latency, so such models are still measured and the split is kept in :attr:`EdgeTpuDevice.last_compile`.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nas.config import TargetConfig
from nas.core.errors import CandidateFailed, TargetError
from nas.latency.targets.base import Measurement

COMPILER_DOCS = "https://coral.ai/docs/edgetpu/compiler/"
CORAL_APT = "https://coral.ai/software/#debian-packages"
RUNTIME_PACKAGE = "libedgetpu1-std"
DEVICE_HINT = ("a Coral device must be attached: USB Accelerator (USB 3 recommended), Dev Board, M.2 or PCIe card "
               "(PCIe needs the gasket-dkms driver and /dev/apex_0)")

_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
_UNITS_MIB = {"B": 1 / 2**20, "KiB": 1 / 2**10, "MiB": 1.0, "GiB": 2**10}
# Lines the compiler prints on every run, failed or not: never the reason for a failure.
_BOILERPLATE = ("Edge TPU Compiler version", "Started a compilation timeout timer", "Compilation child process",
                "Compilation failed!", "Compilation succeeded!")


class EdgeTpuUnavailable(TargetError):
    """The Edge TPU compiler, runtime library or device is missing; the message says what to install."""


def default_library() -> str:
    """The libedgetpu file name the delegate loader looks for on this OS."""
    return _LIBRARIES.get(platform.system(), _LIBRARIES["Linux"])


def find_compiler(name: str = "edgetpu_compiler") -> str:
    """Absolute path of the Edge TPU compiler: ``name`` on PATH, or an explicit path to it."""
    found = shutil.which(name)
    if found:
        return found
    where = f"at {name} (not an executable file)" if os.sep in name else "on PATH"
    msg = (f"Edge TPU compiler {Path(name).name} not found {where}: it runs only on x86-64 Debian/Ubuntu Linux; "
           f"add Coral's apt repository ({CORAL_APT}) and `sudo apt-get install edgetpu-compiler` "
           f"(see {COMPILER_DOCS})")
    if (platform.system(), platform.machine().lower()) not in (("Linux", "x86_64"), ("Linux", "amd64")):
        msg += f"; this machine is {platform.system()} {platform.machine()}, so compile on another one"
    raise EdgeTpuUnavailable(msg)


@dataclass(frozen=True)
class CompileReport:
    """What ``edgetpu_compiler`` made of one model."""

    path: Path  # the compiled *_edgetpu.tflite
    tpu_ops: int
    cpu_ops: int  # ops left on the CPU: they still run, slower, and count in the latency
    on_chip_mib: float | None  # parameters cached in the Edge TPU's 8 MiB SRAM
    off_chip_mib: float | None  # parameters streamed from host memory on every invoke
    compiler_version: str | None
    log: str  # the compiler's output and its operation log
    ops: list[dict[str, Any]] = field(default_factory=list)  # per operator: op, count, status, mapped

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _mib(value: str, unit: str) -> float:
    return float(value) * _UNITS_MIB[unit]


def parse_compiler_output(text: str) -> dict[str, Any]:
    """Fields of ``edgetpu_compiler`` stdout and/or its ``.log`` operation table (either or both concatenated).

    Keys: version, output_model, log_file, on_chip_mib, off_chip_mib, subgraphs, total_ops, tpu_ops, cpu_ops, ops;
    a key whose line is absent is None (ops: empty). Without the "will run on" lines every op was mapped.
    """
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, text, re.MULTILINE)

    def size(label: str) -> float | None:
        m = find(rf"^{label}:\s*([\d.]+)\s*(B|KiB|MiB|GiB)\s*$")
        return _mib(m[1], m[2]) if m else None

    def number(pattern: str) -> int | None:
        m = find(pattern)
        return int(m[1]) if m else None

    version = find(r"Edge TPU Compiler version\s+(\S+)")
    output = find(r"^Output(?: model)?:\s*(\S.*?)\s*$")
    log_file = find(r"^Operation log:\s*(\S.*?)\s*$")
    total = number(r"^Total number of operations:\s*(\d+)")
    tpu = number(r"^Number of operations that will run on Edge TPU:\s*(\d+)")
    cpu = number(r"^Number of operations that will run on CPU:\s*(\d+)")

    # With -s the table is in stdout as well as in the .log: keep one copy (the last) rather than double counts.
    tables: list[list[dict[str, Any]]] = []
    rows: list[dict[str, Any]] | None = None
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            rows = []
            tables.append(rows)
            continue
        if rows is None:
            continue
        m = re.match(r"^\s*(\S+)\s+(\d+)\s+(\S.*?)\s*$", line)
        if m:
            rows.append({"op": m[1], "count": int(m[2]), "status": m[3],
                         "mapped": m[3].startswith("Mapped to Edge TPU")})
        elif line.strip() or rows:
            rows = None  # the table ends at the first line after its rows that is not a row
    ops = next((t for t in reversed(tables) if t), [])

    if total is None and ops:
        total = sum(r["count"] for r in ops)
    if tpu is None and cpu is None:
        if ops and not all(r["mapped"] for r in ops):
            tpu = sum(r["count"] for r in ops if r["mapped"])
            cpu = sum(r["count"] for r in ops if not r["mapped"])
        elif total is not None:
            tpu, cpu = total, 0
    elif total is not None:
        tpu = total - (cpu or 0) if tpu is None else tpu
        cpu = total - tpu if cpu is None else cpu

    return {
        "version": version[1] if version else None,
        "output_model": output[1] if output else None,
        "log_file": log_file[1] if log_file else None,
        "on_chip_mib": size("On-chip memory used for caching model parameters"),
        "off_chip_mib": size("Off-chip memory used for streaming uncached model parameters"),
        "subgraphs": number(r"^Number of Edge TPU subgraphs:\s*(\d+)"),
        "total_ops": total,
        "tpu_ops": tpu,
        "cpu_ops": cpu,
        "ops": ops,
    }


def _failure_line(output: str, returncode: int) -> str:
    """The line that says why the compiler failed: its last ERROR line, else its last non-boilerplate line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "rror:" in ln]
    meaningful = [ln for ln in lines if not ln.startswith(_BOILERPLATE)]
    line = (errors or meaningful or [f"exit code {returncode}"])[-1]
    return line[:300]


def compile_model(tflite: Path, out_dir: Path, compiler: str = "edgetpu_compiler",
                  timeout_s: float = 180) -> CompileReport:
    """Compile an int8 ``tflite`` for the Edge TPU into ``out_dir``; TargetError with the compiler's reason if not."""
    exe = find_compiler(compiler)
    tflite = Path(tflite)
    if not tflite.is_file():
        raise TargetError(f"Edge TPU compile: model {tflite} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # -s prints the operation table; -t is the compiler's own timeout, ours only guards against a hang past it.
    cmd = [exe, "-s", "-o", str(out_dir), "-t", str(max(1, round(timeout_s))), str(tflite)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        raise CandidateFailed(f"edgetpu_compiler did not finish {tflite.name} within {timeout_s + 30:.0f} s") from None
    except OSError as e:
        raise TargetError(f"cannot run {exe}: {e.strerror or e}") from None
    stdout = proc.stdout or ""
    if proc.returncode != 0:
        raise CandidateFailed(f"edgetpu_compiler failed on {tflite.name}: {_failure_line(stdout, proc.returncode)}")

    head = parse_compiler_output(stdout)
    compiled = out_dir / Path(head["output_model"] or f"{tflite.stem}_edgetpu.tflite").name
    if not compiled.is_file():
        raise CandidateFailed(f"edgetpu_compiler exited 0 on {tflite.name} but wrote no {compiled}: "
                          f"{_failure_line(stdout, proc.returncode)}")
    log_path = out_dir / Path(head["log_file"] or f"{tflite.stem}_edgetpu.log").name
    log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    full = stdout + ("\n" + log_text if log_text else "")
    info = parse_compiler_output(full)
    return CompileReport(path=compiled, tpu_ops=info["tpu_ops"] or 0, cpu_ops=info["cpu_ops"] or 0,
                         on_chip_mib=info["on_chip_mib"], off_chip_mib=info["off_chip_mib"],
                         compiler_version=info["version"], log=full, ops=info["ops"])


def _runtime_hint(library: str) -> str:
    if platform.system() == "Linux":
        install = (f"add Coral's apt repository ({CORAL_APT}) and `sudo apt-get install {RUNTIME_PACKAGE}` "
                   "(or libedgetpu1-max for the maximum clock)")
    else:
        install = f"install the Edge TPU runtime ({library}; {RUNTIME_PACKAGE} on Linux) from https://coral.ai/software/"
    return f"{install}; {DEVICE_HINT}"


def load_delegate(library: str | None = None, device: str | None = None) -> Any:
    """The libedgetpu delegate for ``device`` (e.g. ``usb``, ``usb:0``, ``pci:0``; default: the first found)."""
    from ai_edge_litert.interpreter import load_delegate as litert_load_delegate

    lib = library or default_library()
    # Load the library ourselves first: when it is missing, LiteRT's Delegate fails half-built and its __del__
    # prints an AttributeError traceback on top of our message.
    try:
        ctypes.CDLL(lib)
    except OSError as e:
        raise EdgeTpuUnavailable(f"Edge TPU runtime {lib} cannot be loaded ({_last_line(e)}): "
                                 f"{_runtime_hint(lib)}") from None
    try:
        return litert_load_delegate(lib, {"device": device} if device else {})
    except (ValueError, OSError, RuntimeError) as e:
        which = f"device {device}" if device else "any Edge TPU"
        raise EdgeTpuUnavailable(f"Edge TPU runtime {lib} loaded but cannot open {which} ({_last_line(e)}): "
                                 f"{_runtime_hint(lib)}") from None


def _last_line(e: BaseException) -> str:
    """The reason, which libedgetpu puts last: load_delegate's ValueError starts with "Failed to load delegate from
    LIB"."""
    # load_delegate's ValueError starts with "Failed to load delegate from LIB" and puts libedgetpu's reason after.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def probe(compiler: str = "edgetpu_compiler", library: str | None = None) -> str | None:
    """None when the compiler is installed and an Edge TPU opens; otherwise why not. Never raises."""
    try:
        find_compiler(compiler)
        delegate = load_delegate(library)
        del delegate  # a USB Accelerator serves one client at a time: let go before anyone measures
        return None
    except EdgeTpuUnavailable as e:
        return str(e)
    except Exception as e:
        return f"Edge TPU probe failed: {type(e).__name__}: {_last_line(e)}"


class EdgeTpuDevice:
    """Latency of int8 ``.tflite`` models compiled for and run on an attached Coral Edge TPU (the Edge TPU
    target's device half, and what `nas agent` runs for ``runtime=edgetpu``)."""

    def __init__(self, cfg: TargetConfig, compiler: str = "edgetpu_compiler", library: str | None = None) -> None:
        # Fail at construction, not at the first trial, when the tools are missing; the device opens in measure().
        self.compiler = find_compiler(compiler)
        self.library = library or default_library()
        try:
            ctypes.CDLL(self.library)
        except OSError as e:
            raise EdgeTpuUnavailable(f"Edge TPU runtime {self.library} cannot be loaded ({_last_line(e)}): "
                                     f"{_runtime_hint(self.library)}") from None
        self.cfg = cfg
        self._version: str | None = None

    def compiler_version(self) -> str | None:
        if self._version is None:
            try:
                out = subprocess.run([self.compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                return None
            self._version = parse_compiler_output(out)["version"]
        return self._version

    def facts(self) -> dict[str, Any]:
        return {"device": "Coral Edge TPU", "library": self.library,
                "compiler": f"edgetpu_compiler {self.compiler_version()}"}

    def measure(self, tflite_int8: Path) -> Measurement:
        from nas.latency.targets.litert import time_interpreter
        from nas.latency.tflite_convert import interpreter

        tflite_int8 = Path(tflite_int8)
        t0 = time.perf_counter()
        report = compile_model(tflite_int8, tflite_int8.parent / "edgetpu", self.compiler)
        t1 = time.perf_counter()
        delegate = load_delegate(self.library)
        try:
            it = interpreter(report.path, self.cfg.threads, delegates=[delegate])
        except (ValueError, RuntimeError) as e:
            raise CandidateFailed(f"LiteRT cannot load {report.path.name} with the Edge TPU delegate: "
                                  f"{_last_line(e)}") from None
        t2 = time.perf_counter()
        try:
            stats = time_interpreter(it, self.cfg)
        finally:
            del it  # the interpreter must go before its delegate (LiteRT's own ordering requirement)
            del delegate
        # cpu_ops > 0 is kept in the report: the CPU fallback is measured, not refused.
        compiled = {k: v for k, v in report.to_dict().items() if k not in ("log", "path")}
        return Measurement(stats, {"compile": compiled},
                           {"compile": t1 - t0, "session": t2 - t1, "measure": time.perf_counter() - t2})
