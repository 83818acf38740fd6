"""ONNX Runtime's GPU providers: installing the GPU build, loading its CUDA libraries, and saying why a provider
did not load (ONNX Runtime itself logs that to the process's stderr and goes on running on the CPU)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from importlib.metadata import PackageNotFoundError, version
from typing import Any

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

# pip cannot swap onnxruntime for onnxruntime-gpu in one step: both install the same `onnxruntime` folder.
GPU_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]>=1.31'"


def wants_gpu(providers: list[str]) -> bool:
    return any(p in GPU_PROVIDERS for p in providers)


def unloaded_gpu_providers(requested: list[str], loaded: list[str]) -> list[str]:
    """GPU providers asked for that a session did not register: ONNX Runtime then runs on the CPU without failing."""
    return [p for p in requested if p in GPU_PROVIDERS and p not in loaded]


def installed_builds() -> dict[str, str]:
    """The ONNX Runtime distributions installed, with their versions."""
    found = {}
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def clash(builds: dict[str, str]) -> str | None:
    """Why two installed builds make the GPU provider unreliable, or None."""
    if len(builds) < 2:
        return None
    return (f"onnxruntime {builds['onnxruntime']} and onnxruntime-gpu {builds['onnxruntime-gpu']} are both installed "
            f"and share one folder, so the files of whichever was installed last are used; keep the GPU build only: "
            f"{GPU_INSTALL}")


def preload_cuda_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries that pip installed (nvidia-* wheels, outside the loader's search path).

    ``import torch`` does this too when torch and onnxruntime-gpu share a CUDA major version; a model file
    measured without torch imported (``nas agent``, ``nas measure model=...``) needs it done explicitly.
    """
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    # It prints its own warnings; the probe session reports a failed load, with its cause.
    with native_stderr(), redirect_stdout(io.StringIO()):
        try:
            preload()
        except Exception:  # the probe session says what is missing
            pass


@contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 inside the block, as lines (filled on exit)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_failure(log: list[str]) -> str:
    """The cause of a provider's load failure, from ONNX Runtime's log lines, with what to do about it."""
    text = _ANSI.sub("", "\n".join(log))
    causes = [m.strip() for m in re.findall(r"with error: ([^\n]+)", text)]
    needs = re.search(r"Require ([^\n]+?)\. Please", text)
    cause = "; ".join(c + (f" ({h})" if (h := _hint(c)) else "") for c in dict.fromkeys(causes)) or "no reason logged"
    if needs:
        cause += f"; this onnxruntime-gpu build needs {needs.group(1)}"
    return cause


def _hint(cause: str) -> str:
    if "libcuda.so" in cause:
        return "the NVIDIA driver is not installed: this machine has no usable GPU"
    if "libnvinfer" in cause or "libnvonnxparser" in cause:
        return "TensorRT 10 is not installed; install it, or leave TensorrtExecutionProvider out of target.providers"
    if any(lib in cause for lib in ("libcudart", "libcublas", "libcudnn", "libcufft", "libcurand")):
        return f"the CUDA libraries this build needs are missing: {GPU_INSTALL}"
    return ""


def gpu_name() -> str:
    """The GPU ONNX Runtime's CUDA provider runs on (device 0 of those visible), with its driver when known."""
    try:
        import torch

        if torch.cuda.is_available():  # respects CUDA_VISIBLE_DEVICES, as ONNX Runtime does
            return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    except Exception:  # a CPU-only torch, or a driver torch cannot talk to
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
        name, _, driver = out.partition(",")
        return f"{name.strip()} (driver {driver.strip()})"
    except (OSError, subprocess.SubprocessError):
        return "unknown NVIDIA GPU"
