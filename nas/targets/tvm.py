"""Apache TVM backend (``target=tvm``): the candidate's ONNX compiled for this CPU by TVM's Relax pipeline,
optionally tuned by MetaSchedule, and timed in TVM's virtual machine.

Tuning records go into one JSON database per tuning set-up (``tuning_db``, by default the workdir's ``tvm-tuning``
folder, one sub-folder per TVM version, compiler target and thread count), so that layer shapes which candidates
share are tuned once for the whole search: a candidate tunes only the workloads that have no record yet.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import Precision, Scope, TargetConfig, require
from nas.errors import CandidateFailed, TargetError, first_line
from nas.targets.base import Measurement, Target, fingerprint_hash, targets
from nas.targets.ort import cpu_model
from nas.targets.timing import run_rounds

# Not an extra of nas: apache-tvm-ffi needs typing-extensions>=4.13, which litert-torch's pins (xdsl) refuse, so
# pip cannot resolve both in one install; installed afterwards it works (pip warns about xdsl's pin). MetaSchedule
# of apache-tvm 0.27 segfaults with apache-tvm-ffi 0.1.15 (creating a tuning task), hence the pin.
INSTALL = ("pip install 'apache-tvm==0.27.*' 'apache-tvm-ffi<0.1.15' (after nas itself: see the README, "
           "'OpenVINO and TVM')")


@dataclass
class TvmConfig(TargetConfig):
    """TVM on this CPU (LLVM for the host's CPU model), fp32."""

    name: str = "tvm"
    backend: str = "tvm"
    tune_trials: int = 0  # MetaSchedule trials per candidate, for the workloads not tuned yet; 0: untuned
    # The tuning database's folder (conf/target/tvm.yaml puts it in the workdir); one sub-folder per set-up.
    tuning_db: str = "~/.cache/nas/tvm"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.tune_trials >= 0, f"target.tune_trials={self.tune_trials} must be >= 0 (0: untuned)")
        require(self.precision == Precision.fp32, f"target.precision={self.precision}: target=tvm runs fp32 only")
        require(self.scope == Scope.model, f"target.scope={self.scope}: target=tvm measures scope=model only")


def import_tvm(name: str) -> Any:
    """The ``tvm`` module, or one line naming the install command."""
    try:
        import tvm
        from tvm.relax.frontend.onnx import from_onnx  # noqa: F401  (the frontend needs onnx and more)
    except ImportError:
        raise TargetError(f"target {name}: Apache TVM is not installed; {INSTALL}") from None
    return tvm


@dataclass(frozen=True)
class Tuning:
    """What tuning one candidate did: its workloads, how many already had records, the seconds spent."""

    tasks: int
    already_tuned: int
    seconds: float
    trials: int

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "already_tuned": self.already_tuned, "tune_s": round(self.seconds, 3),
                "trials": self.trials}


@targets.register("tvm", TvmConfig, option=False)
class TvmTarget(Target):
    """Compiles each ONNX file with ``tvm.compile`` (Relax) and times ``vm["main"]`` on a fixed input."""

    cfg: TvmConfig

    def __init__(self, cfg: TvmConfig) -> None:
        super().__init__(cfg)
        self._tvm = import_tvm(cfg.name)
        self.cpu = cpu = str(self._tvm.target.codegen.llvm_get_system_cpu())
        # num-cores: the parallelism MetaSchedule schedules for, the same threads the runtime gets below.
        self.compiler_target = self._tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": cfg.threads})
        self._tvm.get_global_func("runtime.config_threadpool")(1, cfg.threads)  # 1: the big cores, `threads` of them
        if cfg.tune_trials and _ffi_version() >= (0, 1, 15):
            raise TargetError(f"target.tune_trials={cfg.tune_trials}: MetaSchedule crashes with apache-tvm-ffi "
                              f"{'.'.join(map(str, _ffi_version()))}; pip install 'apache-tvm-ffi<0.1.15' "
                              "(or target.tune_trials=0)")
        self.cost_model = _cost_model()
        self._workers: tuple[Any, Any] | None = None

    def facts(self) -> dict[str, Any]:
        tuning = ("untuned" if not self.cfg.tune_trials else
                  f"metaschedule, {self.cfg.tune_trials} trials per candidate for workloads without a record, "
                  f"{self.cost_model} cost model, records shared by candidates")
        return {"device": cpu_model(), "machine": platform.machine(), "runtime": f"apache-tvm {self._tvm.__version__}",
                "compiler_target": f"llvm -mcpu={self.cpu}", "tuning": tuning}

    def database_dir(self) -> Path:
        """This set-up's tuning database: records of one TVM version, compiler target and thread count."""
        key = {"tvm": self._tvm.__version__, "target": str(self.compiler_target), "threads": self.cfg.threads}
        return Path(self.cfg.tuning_db).expanduser() / fingerprint_hash(key)

    def measure(self, path: Path) -> Measurement:
        t0 = time.perf_counter()
        try:
            mod, shape = self._import(path)
        except TargetError:
            raise
        except Exception as e:  # the frontend raises many types on operators or graphs it cannot take
            raise CandidateFailed(f"TVM cannot import {path.name}: {type(e).__name__}: {first_line(e)}") from None
        t1 = time.perf_counter()
        executable, tuning = self.compile(mod)
        t2 = time.perf_counter()
        from tvm import relax

        vm = relax.VirtualMachine(executable, self._tvm.cpu())
        main = vm["main"]
        x = self._tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))

        def step() -> dict[str, float]:
            s = time.perf_counter_ns()
            main(x)  # returns once the output is computed: CPU execution is synchronous
            return {"model": (time.perf_counter_ns() - s) / 1e6}

        stats = run_rounds(step, self.cfg)
        compile_s = t2 - t1 - (tuning.seconds if tuning else 0.0)
        details = {"tvm": {"compile_s": round(compile_s, 3), **(tuning.to_dict() if tuning else {})}}
        return Measurement(stats, details, {"import": t1 - t0, "compile": compile_s,
                                            **({"tune": tuning.seconds} if tuning else {}),
                                            "measure": time.perf_counter() - t2})

    def _import(self, path: Path) -> tuple[Any, list[int]]:
        """The ONNX file as a Relax module, at its static input shape (symbolic dimensions: the target's shape)."""
        import onnx
        from tvm.relax.frontend.onnx import from_onnx

        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise TargetError(f"model={path}: target {self.name} runs single-input image models "
                              f"({len(inputs)} inputs here)")
        dims = inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.dim_value > 0 else self.cfg.input_shape[i] for i, d in enumerate(dims)]
        return from_onnx(model, shape_dict={inputs[0].name: shape}), shape

    def workers(self) -> tuple[Any, Any]:
        """MetaSchedule's builder and runner, started once for all candidates (their worker processes import TVM:
        seconds to minutes on a busy machine). One worker each, and time to spare: under load the default 30 s
        limit fails every build."""
        if self._workers is None:
            from tvm.s_tir import meta_schedule as ms

            self._workers = (ms.builder.LocalBuilder(max_workers=1, timeout_sec=300),
                             ms.runner.LocalRunner(timeout_sec=120))
        return self._workers

    def lowered(self, mod: Any) -> Any:
        """The Relax module legalised to TIR and fused: its TIR functions are the workloads tuning sees."""
        from tvm import relax
        from tvm.relax import transform

        with self.compiler_target:
            return self._tvm.transform.Sequential([transform.DecomposeOpsForInference(),
                                                   transform.CanonicalizeBindings(),
                                                   relax.pipeline.zero_pipeline()])(mod)

    def compile(self, mod: Any) -> tuple[Any, Tuning | None]:
        """Legalise and fuse, tune the workloads without records (``tune_trials`` > 0), apply the records, build."""
        tvm = self._tvm
        from tvm.relax import transform
        from tvm.s_tir import meta_schedule as ms

        tuning = None
        try:
            mod = self.lowered(mod)
            if self.cfg.tune_trials:
                db_dir = self.database_dir()
                db_dir.mkdir(parents=True, exist_ok=True)
                database = ms.database.JSONDatabase(work_dir=str(db_dir))
                tuning = tune_new_workloads(mod, self.compiler_target, database, db_dir, self.cfg.tune_trials,
                                            self.cost_model, self.workers)
                with self.compiler_target, database:
                    mod = transform.MetaScheduleApplyDatabase()(mod)
            return tvm.compile(mod, target=self.compiler_target), tuning
        except Exception as e:  # TVM's passes and LLVM raise TVMError and others on graphs they cannot lower
            raise CandidateFailed(f"TVM cannot compile the model: {type(e).__name__}: {first_line(e)}") from None


def new_workloads(tasks: list[Any], database: Any, target: Any) -> list[Any]:
    """The extracted tasks whose workload has no tuning record in ``database`` yet."""
    return [t for t in tasks if database.query_tuning_record(t.dispatched[0], target, t.task_name) is None]


def tune_new_workloads(mod: Any, target: Any, database: Any, work_dir: Path, trials: int, cost_model: str,
                       workers: Callable[[], tuple[Any, Any]]) -> Tuning:
    """MetaSchedule on the workloads of ``mod`` that ``database`` has no record for, ``trials`` in all;
    ``workers()``: the builder and runner, started only when something is left to tune."""
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()
    tasks = ms.relax_integration.extract_tasks(mod, target)
    new = new_workloads(tasks, database, target)
    if new:
        per_task = max(1, math.ceil(trials / len(new)))
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(new, str(work_dir), seed=0)
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
                           max_trials_per_task=per_task, num_trials_per_iter=min(64, per_task), database=database,
                           cost_model=cost_model, builder=workers()[0], runner=workers()[1])
    return Tuning(len(tasks), len(tasks) - len(new), time.perf_counter() - t0, trials if new else 0)


def _cost_model() -> str:
    """MetaSchedule's XGBoost cost model where xgboost is installed, else random proposals (fewer good ones)."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def _ffi_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("apache-tvm-ffi").split(".")[:3] if p.isdigit())
