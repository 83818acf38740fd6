"""The CUDA target: a clear error without the GPU build; a real measurement where a GPU is present."""

import onnxruntime as ort
import pytest

from nas.targets.onnxruntime_cpu import unloaded_gpu_providers
from tests.conftest import last_json, run_nas

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has the CUDA execution provider")
def test_cuda_target_without_the_gpu_build_is_one_line(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=cuda", f"workdir={tmp_path}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks ['CUDAExecutionProvider']" in lines[0] and "pip install '.[gpu]'" in lines[0]


def test_a_gpu_provider_that_did_not_register_is_caught():
    # ONNX Runtime runs on the CPU without an error when the CUDA libraries are missing; that must not pass as a GPU.
    assert unloaded_gpu_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                                  ["CPUExecutionProvider"]) == ["CUDAExecutionProvider"]
    assert unloaded_gpu_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                                  ["CUDAExecutionProvider", "CPUExecutionProvider"]) == []


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA execution provider (no GPU or CPU-only onnxruntime)")
def test_cuda_target_measures_on_the_gpu(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_large_100", "target=cuda", f"workdir={tmp_path}", "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["fingerprint"]["providers"][0] == "CUDAExecutionProvider"  # registered, not merely requested
    assert out["fingerprint"]["accelerator"] != "unknown NVIDIA GPU"  # the GPU is part of the set-up
    assert out["latency_ms"]["p50"] > 0

    fp16 = run_nas("measure", "arch=mobilenetv3_large_100", "target=cuda", "target.precision=fp16",
                   f"workdir={tmp_path}", "format=json")
    assert fp16.returncode == 0, fp16.stderr[-2000:]
    assert last_json(fp16.stdout)["fingerprint"]["precision"] == "fp16"
