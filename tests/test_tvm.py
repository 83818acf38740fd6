"""target=tvm: an untuned compile-and-measure end to end on a real small model, the shared tuning database (a
workload with a record is not tuned again, by this candidate or the next), and a missing TVM in one line."""

import math
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from nas.config import Precision
from nas.core.errors import ConfigError, TargetError
from nas.latency.onnx_export import export_onnx
from nas.latency.targets import make_target
from nas.latency.targets.tvm import TvmConfig
from nas.search_spaces.references import reference_archs
from tests.conftest import last_json, run_nas

needs_tvm = pytest.mark.skipif(find_spec("tvm") is None,
                               reason="Apache TVM is not installed: pip install 'apache-tvm==0.27.*'")
QUICK = {"warmup": 2, "repeats": 10, "rounds": 2, "round_pause_s": 0.0}


def conv_net(head: int) -> torch.nn.Module:
    """Two small networks that share their convolution's workload and differ in the classifier's."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, head)).eval()


@needs_tvm
def test_untuned_measure_and_fingerprint(tmp_path):
    arch = tmp_path / "mnv3s_32.json"
    arch.write_text(reference_archs(32)["mobilenetv3_small_100"].to_json())
    res = run_nas("measure", f"arch={arch}", "target=tvm", "num_classes=10", f"workdir={tmp_path / 'wd'}",
                  "format=json", "target.warmup=2", "target.repeats=10", "target.rounds=2", "target.round_pause_s=0")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    fp = out["fingerprint"]
    assert fp["target"] == "tvm" and fp["runtime"].startswith("apache-tvm 0.27") and fp["tuning"] == "untuned"
    assert fp["compiler_target"].startswith("llvm -mcpu=") and fp["precision"] == "fp32" and fp["threads"] == 1
    assert out["tvm"]["compile_s"] > 0 and "tasks" not in out["tvm"]  # untuned: nothing looked up or tuned
    assert 0 < out["latency_ms"]["min"] <= out["latency_ms"]["p50"] <= out["latency_ms"]["p90"]


def _record_every_workload(target, onnx_path: Path) -> int:
    """Commit a (default-schedule) tuning record for each workload of the model: as if tuned already.

    MetaSchedule ignores a record whose trace has no instruction (``TuningRecord::IsValid``: ``get_top_k`` and so
    ``query_tuning_record`` skip it), and the trace of an untouched ``Schedule`` is empty: look up the root block and
    its children, which changes nothing in the schedule but makes the record one the database returns."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mod = target.lowered(target._import(onnx_path)[0])
    db_dir = target.database_dir()
    db_dir.mkdir(parents=True, exist_ok=True)
    db = ms.database.JSONDatabase(work_dir=str(db_dir))
    tasks = ms.relax_integration.extract_tasks(mod, target.compiler_target)
    for t in tasks:
        sch = tvm.s_tir.Schedule(t.dispatched[0])
        sch.get_child_blocks(sch.get_sblock("root"))
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(t.dispatched[0]),
                                                         [1e-3], target.compiler_target))
    return len(tasks)


@needs_tvm
@pytest.mark.isolated
def test_tuning_database_is_shared_by_candidates(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from nas.latency.targets.tvm import new_workloads

    a = export_onnx(conv_net(4), (1, 3, 16, 16), tmp_path / "a.onnx")
    b = export_onnx(conv_net(6), (1, 3, 16, 16), tmp_path / "b.onnx")
    target = make_target(TvmConfig(tune_trials=8, tuning_db=str(tmp_path / "db"), **QUICK))
    assert "8 trials per candidate" in target.fingerprint()["tuning"]

    def tasks_and_left(onnx_path):
        mod = target.lowered(target._import(onnx_path)[0])
        tasks = ms.relax_integration.extract_tasks(mod, target.compiler_target)
        db = ms.database.JSONDatabase(work_dir=str(target.database_dir()))
        return tasks, new_workloads(tasks, db, target.compiler_target)

    n = _record_every_workload(target, a)
    # The records are found (checked first: if they were not, measure() below would tune for minutes).
    assert tasks_and_left(a)[1] == []
    # Every workload of candidate a has a record: measuring it tunes nothing (no builder or runner is started).
    m = target.measure(a)
    assert m.details["tvm"]["tasks"] == n and m.details["tvm"]["already_tuned"] == n
    assert m.details["tvm"]["trials"] == 0 and target._workers is None
    assert m.stats.source == "measured" and m.stats.n > 0 and 0 < m.stats.min <= m.stats.p50 <= m.stats.p90
    # Candidate b shares the convolution (same shape) but not the classifier: only its new workloads are left.
    tasks, left = tasks_and_left(b)
    names = {t.task_name for t in left}
    assert 0 < len(left) < len(tasks) and not any("conv2d" in name for name in names)


@needs_tvm
@pytest.mark.isolated
def test_tuning_gives_every_workload_a_record_and_keeps_the_cost_model(tmp_path):
    """Real MetaSchedule tuning on a tiny model (about two minutes, most of it TVM's one-time import of its
    tensor intrinsics): every new workload gets a schedule (one left without a record would run untuned, 10-50x slower),
    the trials left over are spent, and the next candidate tunes only its own new workloads."""
    from tvm.s_tir import meta_schedule as ms

    from nas.latency.targets.tvm import COST_MODEL_FILE, new_workloads

    a = export_onnx(conv_net(4), (1, 3, 16, 16), tmp_path / "a.onnx")
    b = export_onnx(conv_net(6), (1, 3, 16, 16), tmp_path / "b.onnx")
    target = make_target(TvmConfig(tune_trials=5, tuning_db=str(tmp_path / "db"), **QUICK))
    db_dir = target.database_dir()

    def left(onnx_path):
        mod = target.lowered(target._import(onnx_path)[0])
        tasks = ms.relax_integration.extract_tasks(mod, target.compiler_target)
        return new_workloads(tasks, ms.database.JSONDatabase(work_dir=str(db_dir)), target.compiler_target)

    m = target.measure(a)
    t = m.details["tvm"]
    # a has fewer workloads than trials: one each, then the rest where the measured time is.
    assert t["already_tuned"] == 0 and 2 <= t["tasks"] < 5 and t["trials"] == 5
    assert "one schedule per new workload" in t["strategy"] and m.stats.p50 > 0
    assert left(a) == []
    xgb = target.cost_model == "xgb"
    if xgb:
        assert (db_dir / COST_MODEL_FILE).is_file()
        before = (db_dir / COST_MODEL_FILE).stat().st_mtime_ns
    n_new = len(left(b))
    t = target.measure(b).details["tvm"]
    assert 0 < n_new < t["tasks"] and t["already_tuned"] == t["tasks"] - n_new and t["trials"] == max(5, n_new)
    assert left(b) == []
    if xgb:  # loaded, trained on b's schedules too, and written back
        assert (db_dir / COST_MODEL_FILE).stat().st_mtime_ns > before


def test_trials_go_where_the_measured_time_is():
    from nas.latency.targets.tvm import allocate

    assert allocate(10, [3e-3, 1e-3, 1e-3]) == [6, 2, 2]
    assert sum(allocate(7, [5.0, 3.0, 1.0, 1.0])) == 7 and allocate(7, [5.0, 3.0, 1.0, 1.0])[0] >= 3
    assert allocate(0, [1.0, 2.0]) == [0, 0]
    # A workload whose sampled schedule failed has no measured time: it gets the trials first.
    assert allocate(3, [math.inf, 1.0, math.inf]) == [2, 0, 1]


@needs_tvm
@pytest.mark.isolated
def test_the_database_is_keyed_by_setup(tmp_path):
    one = make_target(TvmConfig(tuning_db=str(tmp_path), threads=1))
    two = make_target(TvmConfig(tuning_db=str(tmp_path), threads=2))
    assert one.database_dir() != two.database_dir() and one.database_dir().parent == tmp_path


def test_tvm_settings_it_cannot_run_are_one_line():
    with pytest.raises(ConfigError, match=r"target\.precision=int8: target=tvm runs fp32 only"):
        TvmConfig(precision=Precision.int8)
    with pytest.raises(ConfigError, match=r"target\.tune_trials=-1 must be >= 0"):
        TvmConfig(tune_trials=-1)


def test_missing_tvm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tvm", None)  # as if not installed
    with pytest.raises(TargetError) as e:
        make_target(TvmConfig())
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("target tvm: Apache TVM is not installed; pip install 'apache-tvm==0.27.*'")
