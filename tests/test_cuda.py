"""The CUDA target: a clear error without the GPU build; a real measurement where a GPU is present."""

import onnxruntime as ort
import pytest

from tests.conftest import last_json, run_nas

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has the CUDA execution provider")
def test_cuda_target_without_the_gpu_build_is_one_line(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=cuda", f"workdir={tmp_path}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks ['CUDAExecutionProvider']" in lines[0] and "pip install '.[gpu]'" in lines[0]


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA execution provider (no GPU or CPU-only onnxruntime)")
def test_cuda_target_measures_on_the_gpu(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_large_100", "target=cuda", f"workdir={tmp_path}", "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["fingerprint"]["providers"][0] == "CUDAExecutionProvider"
    assert out["latency_ms"]["p50"] > 0
