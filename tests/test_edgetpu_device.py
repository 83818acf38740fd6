"""Edge TPU path: clear errors where the compiler, runtime or device is missing; the compiler's output parsed as
documented (edgetpu_compiler 16.0); a real compile-and-measure only where a Coral device is attached."""

from __future__ import annotations

import ctypes.util
import shutil
import stat
from pathlib import Path

import pytest

from nas.core.errors import CandidateFailed, TargetError
from nas.latency.targets.edgetpu_device import (
    EdgeTpuDevice,
    EdgeTpuUnavailable,
    compile_model,
    find_compiler,
    load_delegate,
    parse_compiler_output,
    probe,
)

HAS_COMPILER = shutil.which("edgetpu_compiler") is not None
HAS_RUNTIME = ctypes.util.find_library("edgetpu") is not None

# The format documented for edgetpu_compiler 16.0 (https://coral.ai/docs/edgetpu/compiler/).
STDOUT_PARTIAL = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1140 ms.

Input model: mobilenet_v2_1.0_224_quant.tflite
Input size: 3.39MiB
Output model: mobilenet_v2_1.0_224_quant_edgetpu.tflite
Output size: 3.85MiB
On-chip memory used for caching model parameters: 3.73MiB
On-chip memory remaining for caching model parameters: 4.18MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 65
Operation log: mobilenet_v2_1.0_224_quant_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will \
instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported \
by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 64
Number of operations that will run on CPU: 1
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""

LOG_PARTIAL = """\
Edge TPU Compiler version 16.0.384591198
Input: mobilenet_v2_1.0_224_quant.tflite
Output: mobilenet_v2_1.0_224_quant_edgetpu.tflite

Operator                       Count      Status

ADD                            10         Mapped to Edge TPU
CONV_2D                        36         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
AVERAGE_POOL_2D                1          Mapped to Edge TPU
RESHAPE                        1          Mapped to Edge TPU
SOFTMAX                        1          Operation is otherwise supported, but not mapped due to some unspecified \
limitation
"""

STDOUT_ALL_MAPPED = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 412 ms.

Input model: tiny.tflite
Input size: 20.50KiB
Output model: tiny_edgetpu.tflite
Output size: 96.25KiB
On-chip memory used for caching model parameters: 24.00KiB
On-chip memory remaining for caching model parameters: 7.89MiB
Off-chip memory used for streaming uncached model parameters: 512.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 5
Operation log: tiny_edgetpu.log
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""


@pytest.mark.skipif(HAS_COMPILER, reason="edgetpu_compiler is installed here")
def test_missing_compiler_says_what_to_install() -> None:
    with pytest.raises(EdgeTpuUnavailable) as e:
        find_compiler()
    msg = str(e.value)
    assert "edgetpu_compiler" in msg and "apt-get install edgetpu-compiler" in msg
    assert "\n" not in msg
    assert isinstance(e.value, TargetError)  # the CLI prints it as its one error line


@pytest.mark.skipif(HAS_RUNTIME, reason="libedgetpu is installed here")
def test_missing_runtime_says_what_to_install(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(EdgeTpuUnavailable) as e:
        load_delegate()
    msg = str(e.value)
    assert "libedgetpu" in msg and "libedgetpu1-std" in msg and "Coral" in msg
    assert "\n" not in msg
    assert "Traceback" not in capfd.readouterr().err  # no half-built LiteRT delegate complaining on stderr


@pytest.mark.skipif(HAS_COMPILER and HAS_RUNTIME, reason="Edge TPU tools are installed here")
def test_probe_gives_a_reason_and_does_not_raise() -> None:
    reason = probe()
    assert isinstance(reason, str) and reason
    assert probe(compiler="/nonexistent/edgetpu_compiler", library="/nonexistent/libedgetpu.so.1")
    with pytest.raises(EdgeTpuUnavailable):
        EdgeTpuDevice(_cfg())


def test_parse_partially_mapped_output_and_log() -> None:
    info = parse_compiler_output(STDOUT_PARTIAL + "\n" + LOG_PARTIAL)
    assert info["version"] == "16.0.384591198"
    assert (info["tpu_ops"], info["cpu_ops"], info["total_ops"]) == (64, 1, 65)
    assert info["on_chip_mib"] == pytest.approx(3.73)
    assert info["off_chip_mib"] == 0.0
    assert info["subgraphs"] == 1
    assert info["output_model"] == "mobilenet_v2_1.0_224_quant_edgetpu.tflite"
    assert info["log_file"] == "mobilenet_v2_1.0_224_quant_edgetpu.log"
    ops = {r["op"]: r for r in info["ops"]}
    assert list(ops) == ["ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX"]
    assert ops["CONV_2D"] == {"op": "CONV_2D", "count": 36, "status": "Mapped to Edge TPU", "mapped": True}
    assert not ops["SOFTMAX"]["mapped"] and ops["SOFTMAX"]["count"] == 1
    assert sum(r["count"] for r in info["ops"]) == 66  # the table is the log's, as is: not re-derived


def test_parse_table_printed_twice_is_counted_once() -> None:
    # With -s the compiler prints the table to stdout too; stdout + .log must not double the rows.
    info = parse_compiler_output(STDOUT_PARTIAL + LOG_PARTIAL + "\n" + LOG_PARTIAL)
    assert len(info["ops"]) == 6


def test_parse_all_mapped_output() -> None:
    info = parse_compiler_output(STDOUT_ALL_MAPPED)
    assert (info["tpu_ops"], info["cpu_ops"], info["total_ops"]) == (5, 0, 5)
    assert info["on_chip_mib"] == pytest.approx(24 / 1024)
    assert info["off_chip_mib"] == pytest.approx(512 / 2**20)
    assert info["ops"] == []


def test_parse_log_alone_counts_from_the_table() -> None:
    info = parse_compiler_output(LOG_PARTIAL)
    assert (info["tpu_ops"], info["cpu_ops"]) == (65, 1)
    assert info["on_chip_mib"] is None and info["version"] == "16.0.384591198"


def test_compiler_failure_reports_the_compilers_reason(tmp_path: Path) -> None:
    # Our error path only: a script that fails as the compiler does on a float model. It never stands in for a
    # successful compile.
    script = tmp_path / "edgetpu_compiler"
    script.write_text("#!/bin/sh\n"
                      "echo 'Edge TPU Compiler version 16.0.384591198'\n"
                      "echo 'Started a compilation timeout timer of 180 seconds.'\n"
                      "echo 'ERROR: Model not quantized'\n"
                      "echo 'Compilation child process completed within timeout period.'\n"
                      "echo 'Compilation failed!'\n"
                      "exit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    model = tmp_path / "float.tflite"
    model.write_bytes(b"TFL3")
    with pytest.raises(CandidateFailed) as e:  # this candidate failed, not the device: the study goes on
        compile_model(model, tmp_path / "out", compiler=str(script))
    assert not isinstance(e.value, EdgeTpuUnavailable)
    assert "Model not quantized" in str(e.value) and "float.tflite" in str(e.value)
    assert "\n" not in str(e.value)


def test_explicit_compiler_path_that_is_missing(tmp_path: Path) -> None:
    with pytest.raises(EdgeTpuUnavailable, match="apt-get install edgetpu-compiler"):
        compile_model(tmp_path / "m.tflite", tmp_path / "out", compiler=str(tmp_path / "edgetpu_compiler"))


def _cfg():
    from nas.latency.targets.edgetpu import EdgeTpuConfig

    return EdgeTpuConfig(name="edgetpu", input_shape=[1, 3, 32, 32], warmup=2, repeats=10, rounds=2, round_pause_s=0,
                         tolerance=0, drift_tolerance=0)


_REASON = probe()


@pytest.mark.skipif(_REASON is not None, reason=f"no Edge TPU attached ({_REASON})")
def test_compile_and_measure_on_the_edge_tpu(tmp_path: Path) -> None:
    import torch

    from nas.latency.tflite_convert import to_tflite

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()
    cfg = _cfg()
    conv = to_tflite(model, tuple(cfg.input_shape), tmp_path / "tiny.tflite", "int8")
    dev = EdgeTpuDevice(cfg)
    m = dev.measure(conv.path)
    stats, report = m.stats, m.details["compile"]
    assert report["tpu_ops"] > 0
    assert stats.p50 > 0 and stats.n == cfg.repeats
