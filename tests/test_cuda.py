"""The CUDA target: one clear line without the GPU build or without a GPU; a real measurement where one works."""

import onnxruntime as ort
import pytest

from nas.agent.server import gpu_status
from nas.core.errors import TargetError
from nas.latency.targets.gpu import clash, load_failure, unloaded_gpu_providers
from nas.latency.targets.ort import OnnxRuntimeTarget, OrtConfig
from tests.conftest import last_json, run_nas

CUDA_BUILD = "CUDAExecutionProvider" in ort.get_available_providers()


def _cuda_problem() -> str | None:
    """Why the CUDA provider cannot run here (None where it can): the GPU build can be installed without a GPU."""
    if not CUDA_BUILD:
        return "no CUDA execution provider (CPU-only onnxruntime)"
    try:
        OnnxRuntimeTarget(OrtConfig(name="cuda", providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    except TargetError as e:
        return str(e)
    return None


CUDA_PROBLEM = _cuda_problem()


@pytest.mark.skipif(CUDA_BUILD, reason="this machine has the CUDA execution provider")
def test_cuda_target_without_the_gpu_build_is_one_line(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=cuda", f"workdir={tmp_path}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks ['CUDAExecutionProvider']" in lines[0]
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]" in lines[0]


@pytest.mark.skipif(not CUDA_BUILD or CUDA_PROBLEM is None, reason="needs the GPU build on a machine it cannot use")
def test_gpu_build_that_cannot_load_its_provider_says_why_in_one_line(tmp_path):
    # ONNX Runtime would log two screens of its own and time the CPU; the user gets the cause instead.
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=cuda", f"workdir={tmp_path}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not load ['CUDAExecutionProvider']" in lines[0], res.stderr[-2000:]
    assert "could not load" in gpu_status()["error"]  # what `nas agent` prints and serves in /info


def test_a_gpu_provider_that_did_not_register_is_caught():
    # ONNX Runtime runs on the CPU without an error when the CUDA libraries are missing; that must not pass as a GPU.
    assert unloaded_gpu_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                                  ["CPUExecutionProvider"]) == ["CUDAExecutionProvider"]
    assert unloaded_gpu_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                                  ["CUDAExecutionProvider", "CPUExecutionProvider"]) == []


def test_load_failure_names_the_missing_library_and_what_it_means():
    # onnxruntime-gpu 1.31.1's log on a machine without the NVIDIA driver, with TensorRT listed first.
    log = [
        "\x1b[1;31m2026-11-24 14:19:43.0 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
        "Failed to load library libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open shared "
        "object file: No such file or directory\x1b[m",
        "\x1b[1;31m2026-11-24 14:19:43.0 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
        "Failed to load library libonnxruntime_providers_cuda.so with error: libcuda.so.1: cannot open shared object "
        "file: No such file or directory\x1b[m",
        "\x1b[0;93m2026-11-24 14:19:43.0 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:1295 "
        "CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA "
        "13.*. Please install all dependencies as mentioned in the GPU requirements page\x1b[m",
    ]
    why = load_failure(log)
    assert why.startswith("libnvinfer.so.10: cannot open shared object file")
    assert "TensorRT 10 is not installed" in why and "NVIDIA driver is not installed" in why
    assert why.endswith("needs cuDNN 9.* and CUDA 13.*") and "\x1b" not in why
    assert load_failure([]) == "no reason logged"


def test_both_onnxruntime_builds_installed_is_named_with_its_fix():
    assert clash({"onnxruntime": "1.32.0"}) is None
    msg = clash({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})
    assert msg is not None and "pip uninstall -y onnxruntime onnxruntime-gpu" in msg


@pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"no usable CUDA provider: {CUDA_PROBLEM}")
def test_cuda_target_measures_on_the_gpu(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_large_100", "target=cuda", f"workdir={tmp_path}", "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["fingerprint"]["providers"][0] == "CUDAExecutionProvider"  # registered, not merely requested
    assert out["fingerprint"]["accelerator"] != "unknown NVIDIA GPU"  # the GPU is part of the set-up
    lat = out["latency_ms"]
    assert lat["source"] == "measured" and lat["n"] >= 10 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert gpu_status() == {"accelerator": out["fingerprint"]["accelerator"]}  # `nas agent` and /info

    fp16 = run_nas("measure", "arch=mobilenetv3_large_100", "target=cuda", "target.precision=fp16",
                   f"workdir={tmp_path}", "format=json")
    assert fp16.returncode == 0, fp16.stderr[-2000:]
    assert last_json(fp16.stdout)["fingerprint"]["precision"] == "fp16"

    # On the GPU the pipeline's copies to and from device memory are timed apart from the model.
    pipe = run_nas("measure", "arch=mobilenetv3_large_100", "target=cuda", "target.scope=pipeline",
                   f"workdir={tmp_path}", "format=json")
    assert pipe.returncode == 0, pipe.stderr[-2000:]
    split = last_json(pipe.stdout)["latency_ms"]["split_ms"]
    assert split["transfer"] > 0 and split["model"] > 0
