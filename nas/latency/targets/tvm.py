"""Apache TVM backend (``target=tvm``): the candidate's ONNX compiled for this CPU by TVM's Relax pipeline,
optionally tuned by MetaSchedule, and timed in TVM's virtual machine.

Tuning records go into one JSON database per tuning set-up (``tuning_db``, by default the workdir's ``tvm-tuning``
folder, one sub-folder per TVM version, compiler target and thread count), so that layer shapes which candidates
share are tuned once for the whole search: a candidate tunes only the workloads that have no record yet.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import Precision, Scope, TargetConfig, require
from nas.core.errors import CandidateFailed, TargetError, first_line
from nas.latency.targets.base import Measurement, Target, fingerprint_hash, targets
from nas.latency.targets.ort import cpu_model
from nas.latency.targets.timing import run_rounds

log = logging.getLogger(__name__)

# Not an extra of nas: apache-tvm-ffi needs typing-extensions>=4.13, which litert-torch's pins (xdsl) refuse, so
# pip cannot resolve both in one install; installed afterwards it works (pip warns about xdsl's pin). MetaSchedule
# of apache-tvm 0.27 segfaults with apache-tvm-ffi 0.1.15 (creating a tuning task), hence the pin.
# xgboost: MetaSchedule's learned cost model (xgboost-cpu: the same module without the CUDA wheels).
INSTALL = ("pip install 'apache-tvm==0.27.*' 'apache-tvm-ffi<0.1.15' 'xgboost-cpu>=3.2,<4' (after nas itself: see "
           "the README, 'OpenVINO and TVM')")


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
    """What tuning one candidate did: its workloads, how many already had records, the seconds spent, and the
    search strategy ("" when nothing was left to tune)."""

    tasks: int
    already_tuned: int
    seconds: float
    trials: int
    strategy: str = ""
    startup_s: float = 0.0  # of ``seconds``: starting the builder and runner, once per process (the first tuning)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "already_tuned": self.already_tuned, "tune_s": round(self.seconds, 3),
                "startup_s": round(self.startup_s, 3), "trials": self.trials, "strategy": self.strategy}


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
                  f"metaschedule, {self.cfg.tune_trials} trials per candidate for workloads without a record "
                  f"(at least one each), {strategy_rule(self.cost_model)}, records shared by candidates")
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
        """MetaSchedule's builder and runner, started once for all candidates. The builder compiles in this process
        (``in_process_builder``); the runner keeps one worker process (it imports TVM once: seconds on a busy
        machine), with time to spare: under load the default limits fail.

        TVM's tensor intrinsics, which every build imports, are imported here: that import parses hundreds of
        TVMScript functions, each through ``inspect.getmodule`` over every loaded module, so it takes 1-3 minutes in a
        process that has torch loaded (186 s profiled here, 92% in ``inspect.getmodule``). Once per process; the
        first candidate's ``startup_s`` shows it."""
        if self._workers is None:
            import tvm.s_tir.tensor_intrin  # noqa: F401  (see above)
            from tvm.s_tir import meta_schedule as ms

            self._workers = (in_process_builder(), ms.runner.LocalRunner(timeout_sec=120))
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
    """MetaSchedule on the workloads of ``mod`` that ``database`` has no record for, about ``trials`` in all;
    ``workers()``: the builder and runner, started only when something is left to tune.

    Two steps, because MetaSchedule's own task scheduler spends a budget this small badly: it gives rounds in task
    order, so with 64 trials over a MobileNet's ~36 workloads some get none, and a workload without a record runs
    untuned (one such 1x1 convolution took 14 of 59 ms in mnasnet_100). First one schedule per new workload,
    which also measures what each costs the model: sampled, or the cost model's pick once earlier candidates have
    trained it; then the rest of the trials in proportion to that measured share (latency x calls), by
    evolutionary search under the learned cost model where xgboost is installed (replay-trace otherwise: a random
    cost model has nothing to evolve by). Candidates come one at a time, so the cost model is kept beside the
    database and learns across them."""
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()
    tasks = ms.relax_integration.extract_tasks(mod, target)
    new = new_workloads(tasks, database, target)
    done, startup = 0, 0.0
    if new:
        # MetaSchedule logs every task's table to the console (about 11,000 lines for three MobileNets); at WARNING
        # its console handler shows only problems, while the per-task logs under work_dir/logs keep everything.
        # Each tune_tasks call reconfigures that logger (to DEBUG, its console at the level it finds): set per call.
        ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
        console = ms_logger.level if ms_logger.level != logging.NOTSET else logging.WARNING
        t_start = time.perf_counter()
        builder, runner = workers()
        startup = time.perf_counter() - t_start
        model = load_cost_model(work_dir, cost_model)

        def tune(batch: list[Any], strategy: Any, n: int, per_task: int) -> None:
            ms_logger.setLevel(console)
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                batch, str(work_dir), strategy=strategy, seed=0)
            ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=n,
                               max_trials_per_task=per_task, num_trials_per_iter=per_task, database=database,
                               cost_model=model, builder=builder, runner=runner, task_scheduler="round-robin")

        tune(new, refining_strategy(cost_model) if trained(model) else "replay-trace", len(new), 1)
        shares = [measured_cost(t, database, target) for t in new]
        plan = zip(new, allocate(max(0, trials - len(new)), shares), strict=True)
        for task, n in sorted(plan, key=lambda tn: -tn[1]):
            if n:
                tune([task], refining_strategy(cost_model), n, n)
        ms_logger.setLevel(console)  # as found, for the next candidate
        save_cost_model(model, work_dir, cost_model)
        done = max(trials, len(new))
    return Tuning(len(tasks), len(tasks) - len(new), time.perf_counter() - t0, done,
                  strategy_rule(cost_model) if new else "", startup)


def measured_cost(task: Any, database: Any, target: Any) -> float:
    """Seconds this workload costs one inference: its best record's mean run time times its calls; infinite
    without a record (its sampled schedule failed), so that it is tuned first."""
    record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
    if record is None or not record.run_secs:
        return math.inf
    return float(np.mean([float(s) for s in record.run_secs])) * task.weight


def allocate(trials: int, costs: list[float]) -> list[int]:
    """``trials`` split in proportion to ``costs`` (largest remainders get the odd ones; they sum to ``trials``);
    infinite costs share the trials first, one each in turn."""
    inf = [i for i, c in enumerate(costs) if math.isinf(c)]
    out = [0] * len(costs)
    if inf:
        for k in range(trials):
            out[inf[k % len(inf)]] += 1
        return out
    total = sum(costs)
    if not trials or total <= 0:
        return out
    exact = [trials * c / total for c in costs]
    out = [int(e) for e in exact]
    for i in sorted(range(len(costs)), key=lambda i: out[i] - exact[i])[:trials - sum(out)]:
        out[i] += 1
    return out


EVOLUTION = {"population_size": 64, "init_measured_ratio": 0.2, "init_min_unmeasured": 16, "genetic_num_iters": 2}
"""MetaSchedule's evolutionary search, shrunk for a few trials per workload: its default population of 512 took
15-35 s per round to generate here, for rounds of 1-10 trials. Measured on the quick search of the three
references: a population of 128 and rounds of 2 trials (evolving from each round's measurements) took 12 min
against 9 and tuned them no faster (mobilenetv2_100 31.7 ms against 25.9)."""


def refining_strategy(cost_model: str) -> Any:
    """The search for the trials after the first sample: evolutionary under a learned cost model, else
    replay-trace (a random cost model scores the population at random: it would draw what sampling draws)."""
    if cost_model != "xgb":
        return "replay-trace"
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(**EVOLUTION)


def strategy_rule(cost_model: str) -> str:
    """How trials are spent, as the fingerprint and the tuning record state it."""
    search = (f"evolutionary search (population {EVOLUTION['population_size']}) under the xgb cost model"
              if cost_model == "xgb" else
              "replay-trace (random cost model)")
    first = "the cost model's pick once trained, else sampled" if cost_model == "xgb" else "sampled"
    return f"one schedule per new workload ({first}), the rest by measured share of latency, {search}"


COST_MODEL_FILE = "cost_model.tar"


def load_cost_model(work_dir: Path, cost_model: str) -> Any:
    """MetaSchedule's cost model: for xgb, the one earlier candidates trained (``work_dir/cost_model.tar``) where
    it loads, else a new one; it predicts after 32 measured schedules (MetaSchedule waits for 100, more than one
    candidate's first samples)."""
    from tvm.s_tir import meta_schedule as ms

    if cost_model != "xgb":
        return ms.cost_model.CostModel.create(cost_model)
    def fresh() -> Any:
        return ms.cost_model.XGBModel(num_warmup_samples=32, verbose_eval=0)

    model = fresh()
    path = work_dir / COST_MODEL_FILE
    if path.exists():
        try:
            with warnings.catch_warnings():  # xgboost guessing the format of the booster TVM wrote
                warnings.simplefilter("ignore", UserWarning)
                model.load(str(path))
                if model.booster is None:  # TVM 0.27's load reads the booster into a local and drops it
                    model.booster = _read_booster(path)
        except Exception as e:  # a file cut short by a killed run, or from another xgboost: start afresh
            log.warning("TVM cost model %s unreadable (%s: %s); training a new one", path, type(e).__name__,
                        first_line(e))
            model = fresh()
    return model


def _read_booster(path: Path) -> Any:
    """The XGBoost booster in a cost-model file MetaSchedule wrote (a tar of ``model.bin`` and ``data.npy``)."""
    import xgboost

    with tarfile.open(path) as tar, tempfile.TemporaryDirectory() as tmp:
        tar.extract("model.bin", tmp, filter="data")
        booster = xgboost.Booster()
        booster.load_model(str(Path(tmp) / "model.bin"))
    return booster


def trained(model: Any) -> bool:
    """Whether ``model`` ranks schedules (an xgb model past its warm-up); a random one does not."""
    return getattr(model, "booster", None) is not None and model.data_size >= model.num_warmup_samples


def save_cost_model(model: Any, work_dir: Path, cost_model: str) -> None:
    """Keeps an xgb cost model for the next candidate: written beside and then renamed, so a run killed while
    writing leaves the previous file whole."""
    if cost_model != "xgb":
        return
    tmp = work_dir / f".{COST_MODEL_FILE}.{os.getpid()}"
    with warnings.catch_warnings():  # xgboost's note that it now saves UBJSON by default
        warnings.simplefilter("ignore", UserWarning)
        model.save(str(tmp))
    tmp.replace(work_dir / COST_MODEL_FILE)


def in_process_builder() -> Any:
    """A MetaSchedule builder that compiles in this process. TVM's ``LocalBuilder`` starts a new process pool for
    every batch, and each new process imports TVM's tensor intrinsics: about 30 s per batch of two schedules on
    this VM (the import of ``tvm.s_tir.tensor_intrin.cuda`` alone took 87 s under load, against about 0.5 s for a
    build), which made tuning 64 trials take 50 minutes. Here it is imported once. A build error fails that
    schedule only, as in ``LocalBuilder``."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for b in build_inputs:
                try:
                    results.append(BuilderResult(default_export(default_build(b.mod, b.target, None)), None))
                except Exception as e:  # LLVM and TVM's passes raise several types on schedules they reject
                    results.append(BuilderResult(None, f"in-process build: {type(e).__name__}: {first_line(e)}"))
            return results

    return InProcessBuilder()


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
