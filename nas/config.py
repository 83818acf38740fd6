"""Structured configs: the typed schema every Hydra override is validated against.

OmegaConf checks types, enum values and unknown keys while composing; the ``__post_init__`` checks run when
``to_object`` builds these dataclasses, so a bad value ends before anything is written. Each target backend and
each dataset has its own config dataclass (a subclass of ``TargetConfig`` / ``DatasetConfig``) in its own module,
registered with it (``nas.core.registry``); the YAML in ``conf/<group>/`` only names it and what differs from its
defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from nas.core.errors import ConfigError

ACTS = ("relu", "relu6", "hard_swish", "swish")
CPU_RUNTIMES = ("cpu", "tflite_cpu", "openvino", "tvm")  # target options that run on this machine's CPU


class Statistic(StrEnum):
    """Which latency statistic the budget applies to."""

    p50 = "p50"
    p90 = "p90"
    p95 = "p95"
    p99 = "p99"
    mean = "mean"


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    bf16 = "bf16"  # target=openvino on CPUs with AVX512-BF16 or AMX: the model stays fp32, the runtime computes bf16


class Scope(StrEnum):
    """What the budget covers: the model alone, or the pipeline (decode, resize, normalise, model, top-5)."""

    model = "model"
    pipeline = "pipeline"


class AccuracySource(StrEnum):
    """Where a candidate's accuracy comes from."""

    imagenet = "imagenet"  # predicted ImageNet top-1 from the accuracy model (microseconds, no training)
    train = "train"  # trained on `dataset`: rungs, re-evaluation with seeds


class Exporter(StrEnum):
    legacy = "legacy"  # TorchScript: several times faster here (benchmarks/trial_breakdown.py)
    dynamo = "dynamo"


def workdir_path(workdir: str) -> Path:
    """The one reading of a ``workdir=`` value: ``~`` expanded (a quoted or YAML ``~/w`` is not expanded by the
    shell), made absolute."""
    return Path(workdir).expanduser().resolve()


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class TargetConfig:
    """What every target shares: the deployment shape and the measuring protocol. Backends subclass it."""

    name: str = "cpu"
    backend: str = "onnxruntime"  # the registered implementation (nas.latency.targets)
    threads: int = 1  # intra-op threads, fixed; 1 is the most repeatable on a shared 2-vCPU VM
    input_shape: list[int] = field(default_factory=lambda: [1, 3, 224, 224])  # height/width follow the arch
    warmup: int = 10
    repeats: int = 100  # timed runs, split into rounds of repeats // rounds
    rounds: int = 5  # at least this many rounds; percentiles are medians over rounds (robust to bursts of load)
    round_pause_s: float = 0.05
    # More rounds until the 95% interval of the budget statistic is within tolerance (0: no stopping rule), at
    # most max_rounds or time_limit_s; a measurement that never settles is labelled so.
    tolerance: float = 0.03
    max_rounds: int = 25
    time_limit_s: float = 15.0
    # A fixed probe workload timed before and after each measurement; a speed change beyond this fraction means
    # the machine drifted during it, and it is measured again (0: no probe).
    drift_tolerance: float = 0.05
    # Before each round: wait up to this long for the other processes' runnable threads and ours to fit the cores;
    # past it the measurement is refused (an oversubscribed CPU times the scheduler, not the model). The default
    # is $NAS_BUSY_WAIT_S, else 60: a machine that runs parallel jobs (a CI runner) sets a longer wait once.
    busy_wait_s: float = field(default_factory=lambda: float(os.environ.get("NAS_BUSY_WAIT_S", "60")))
    statistic: Statistic = Statistic.p90
    precision: Precision = Precision.fp32
    exporter: Exporter = Exporter.legacy
    opset: int = 17
    scope: Scope = Scope.model
    source_size: list[int] = field(default_factory=lambda: [480, 640])  # pipeline: the JPEG's height, width

    BF16: ClassVar[bool] = False  # whether the backend runs precision=bf16 (OpenVINO does)

    def __post_init__(self) -> None:
        require(self.precision != Precision.bf16 or self.BF16,
                f"target.precision=bf16: target {self.name} does not run bf16; target=openvino does (on CPUs with "
                "AVX512-BF16 or AMX)")
        require(self.threads >= 1, f"target.threads={self.threads} must be >= 1")
        require(self.warmup >= 0, f"target.warmup={self.warmup} must be >= 0")
        require(self.repeats >= 5, f"target.repeats={self.repeats} must be >= 5 for percentiles to mean anything")
        require(1 <= self.rounds <= self.repeats, f"target.rounds={self.rounds} must be in [1, target.repeats]")
        require(self.round_pause_s >= 0, f"target.round_pause_s={self.round_pause_s} must be >= 0")
        require(self.tolerance >= 0, f"target.tolerance={self.tolerance} must be >= 0")
        require(self.max_rounds >= self.rounds, f"target.max_rounds={self.max_rounds} must be >= target.rounds")
        require(self.time_limit_s > 0, f"target.time_limit_s={self.time_limit_s} must be > 0")
        require(self.drift_tolerance >= 0, f"target.drift_tolerance={self.drift_tolerance} must be >= 0")
        require(self.busy_wait_s >= 0, f"target.busy_wait_s={self.busy_wait_s} must be >= 0")
        require(len(self.input_shape) == 4 and all(d >= 1 for d in self.input_shape),
                f"target.input_shape={list(self.input_shape)} must be [batch, channels, height, width]")
        require(len(self.source_size) == 2 and all(8 <= d <= 8192 for d in self.source_size),
                f"target.source_size={list(self.source_size)} must be [height, width] within 8..8192")

    def setup_tag(self) -> str:
        """What the user chose that changes what a latency means, for the study name ('' for the backend's
        defaults: a target that runs int8 anyway, like the Edge TPU, gets no tag for it)."""
        default_precision = type(self).__dataclass_fields__["precision"].default
        parts = [] if self.precision == default_precision else [str(self.precision)]
        if self.input_shape[0] != 1:
            parts.append(f"b{self.input_shape[0]}")
        if self.scope != Scope.model:
            parts.append(str(self.scope))
        if self.statistic != Statistic.p90:
            parts.append(str(self.statistic))
        return "-".join(parts)


@dataclass
class StageConfig:
    """One stage of the skeleton: fixed kind/stride, choice lists (None: the space's default choices)."""

    kind: str = "ir"
    stride: int = 1
    channels: list[int] = field(default_factory=lambda: [16])
    depth: list[int] | None = None
    kernel: list[int] | None = None
    expansion: list[float] | None = None
    se: list[float] | None = None
    act: list[str] | None = None


@dataclass
class ChoicesConfig:
    depth: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    kernel: list[int] = field(default_factory=lambda: [3, 5, 7])
    expansion: list[float] = field(default_factory=lambda: [3.0, 4.0, 6.0])
    se: list[float] = field(default_factory=lambda: [0.0, 0.25])
    act: list[str] = field(default_factory=lambda: list(ACTS))


@dataclass
class SearchSpaceConfig:
    name: str = "mbconv"
    kind: str = "factorized"  # the registered space implementation (nas.search_spaces)
    family: str = "efficientnet"
    stem_size: int = 32
    num_features: int = 1280
    act: list[str] = field(default_factory=lambda: list(ACTS))  # model-level (stem, head) activation
    width: list[float] = field(default_factory=lambda: [1.0])
    resolution: list[int] = field(default_factory=lambda: [224])
    choices: ChoicesConfig = field(default_factory=ChoicesConfig)
    stages: list[StageConfig] = field(default_factory=list)
    enqueue_references: bool = True

    def __post_init__(self) -> None:
        require(self.family in ("mobilenetv3", "efficientnet"),
                f"search_space.family={self.family} must be mobilenetv3 or efficientnet")
        bad = [a for a in self.act if a not in ACTS]
        require(not bad, f"search_space.act has unknown activation(s) {bad}; use {ACTS}")
        require(bool(self.width) and all(w > 0 for w in self.width), "search_space.width must list positive numbers")
        require(bool(self.resolution) and all(r >= 16 for r in self.resolution),
                "search_space.resolution must list resolutions of at least 16 px")
        for i, st in enumerate(self.stages):
            require(st.kind in ("ds", "ir", "er", "cn"), f"search_space.stages[{i}].kind={st.kind} is unknown")
            require(st.stride in (1, 2), f"search_space.stages[{i}].stride={st.stride} must be 1 or 2")
            for name in ("channels", "depth", "kernel", "expansion", "se", "act"):
                values = getattr(st, name)
                require(values is None or len(values) > 0, f"search_space.stages[{i}].{name} is an empty list")
        for name in ("depth", "kernel", "expansion", "se", "act"):
            require(len(getattr(self.choices, name)) > 0, f"search_space.choices.{name} is an empty list")
        ranges = {"depth": lambda v: v >= 1, "kernel": lambda v: v >= 1, "channels": lambda v: v >= 1,
                  "expansion": lambda v: v > 0, "se": lambda v: 0 <= v < 1}
        for where, group in [("choices", self.choices), *((f"stages[{i}]", st) for i, st in enumerate(self.stages))]:
            for name, ok in ranges.items():
                for v in getattr(group, name, None) or []:
                    require(ok(v), f"search_space.{where}.{name} has {v}: depth, kernel and channels must be >= 1, "
                                   "expansion > 0 and se in [0, 1)")


@dataclass
class DatasetConfig:
    """What every dataset shares. Datasets with options of their own subclass it (nas.data.datasets)."""

    name: str = "digits"
    # A candidate trains at round(its deployment resolution x proxy_scale), at least min_resolution pixels:
    # the searched resolution reaches accuracy, while latency is measured at the deployment resolution itself.
    proxy_scale: float = 0.143
    min_resolution: int = 16
    val_fraction: float = 0.2
    seed: int = 0
    # A random subset of this many images (None: all), drawn before the split: big trees, quick smoke runs.
    max_images: int | None = None

    def __post_init__(self) -> None:
        require(self.max_images is None or self.max_images >= 20,
                f"dataset.max_images={self.max_images} must be at least 20 (or null for all)")
        require(0.0 < self.val_fraction < 1.0, f"dataset.val_fraction={self.val_fraction} must be in (0, 1)")
        require(0.0 < self.proxy_scale <= 4.0, f"dataset.proxy_scale={self.proxy_scale} must be in (0, 4]")
        require(self.min_resolution >= 8, f"dataset.min_resolution={self.min_resolution} must be >= 8")


@dataclass
class AccuracyConfig:
    """``accuracy=imagenet`` (default) or ``accuracy=train``: what the search optimises besides latency."""

    name: AccuracySource = AccuracySource.imagenet
    model: str | None = None  # imagenet: a fitted model file (`nas accuracy fit out=...`); None: the shipped one
    # imagenet: Once-for-All-style screening. Each round evolves `population` candidates for `generations`
    # generations on the accuracy model and a latency predictor, then measures the `batch` best predicted to meet
    # the budget (at several fractions of it, as the latency prediction is uncertain).
    population: int = 100
    generations: int = 20
    batch: int = 4

    def __post_init__(self) -> None:
        require(self.population >= 4, f"accuracy.population={self.population} must be >= 4")
        require(self.generations >= 1, f"accuracy.generations={self.generations} must be >= 1")
        require(self.batch >= 1, f"accuracy.batch={self.batch} must be >= 1")


@dataclass
class StudyConfig:
    n_trials: int = 16  # trials this process adds (a rerun adds more to the same study)
    # Where the study lives: None for optuna.db in workdir; postgresql://USER@HOST:5432/DB for a study shared by
    # many workers (the password from PGPASSWORD, or ${oc.env:VAR} in the URL, never on the command line).
    storage: str | None = None
    max_trials: int | None = None  # study-wide: every worker stops once the study holds this many trials
    workers: int = 1  # local worker processes this command runs on the study (each adds trials until max_trials)
    # Measuring on this host waits for other workers' training (and vice versa): their CPU load would skew it.
    host_lock: bool = True
    sampler: str = "nsga2"  # a registered sampler (nas.search.samplers)
    seed: int = 0
    name: str | None = None  # default: derived from target, its set-up, space, dataset and budget
    timeout_s: float | None = None
    # Accuracy fidelity: every candidate trains rungs[0] epochs; the best `promote` fraction of each rung, among
    # candidates of its latency class, trains the next rung (a complete run of that many epochs).
    # The default [1, 3] keeps the default search (and its 3-seed re-evaluation at 3 epochs) within 15 minutes (12
    # measured) on a 2-core VM. On digits no longer rung was measured to rank better (accuracy_fidelity.py: 1, 3 and
    # 6 epochs all below the long training's own seed-to-seed agreement; see the README).
    rungs: list[int] = field(default_factory=lambda: [1, 3])
    epochs: int | None = None  # shorthand for a single rung: rungs=[epochs]
    promote: float = 0.34
    # Latency classes (latency / budget): a candidate is promoted against those of its class, not the whole study;
    # over-budget candidates (the last class) are never promoted: no export can pick them.
    latency_classes: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])
    reeval_top_k: int = 3  # before export: the top feasible candidates retrained at the top rung ...
    reeval_seeds: int = 3  # ... with this many seeds; the export picks by mean (ties: the faster)
    # 32, not 64: twice the optimizer steps per epoch, so that a 1-epoch rung already separates candidates on a
    # small dataset (mnasnet_100 on digits after one epoch: top-1 0.20 with 64, 0.44 with 32).
    batch_size: int = 32
    lr: float = 0.01
    ema_decay: float | None = None  # timm's ModelEmaV3 of the weights, evaluated instead of them (e.g. 0.998)
    population: int | None = None  # NSGA-II's population; None: n_trials // 4, within 4..50 (4 generations)
    train_threads: int | None = None  # torch threads for training; None: all cores
    device: str = "auto"  # auto (CUDA when torch sees one, else cpu), cpu, cuda, cuda:N
    experiment: str = "nas"  # MLflow experiment name

    def __post_init__(self) -> None:
        from nas.core.registry import samplers

        if self.epochs is not None:
            require(self.epochs >= 1, f"study.epochs={self.epochs} must be >= 1")
            self.rungs = [self.epochs]
        require(self.n_trials >= 0, f"study.n_trials={self.n_trials} must be >= 0")
        require(self.workers >= 1, f"study.workers={self.workers} must be >= 1")
        require(self.max_trials is None or self.max_trials >= 1, f"study.max_trials={self.max_trials} must be >= 1")
        require(self.storage is None or self.storage.startswith(("sqlite:", "postgresql")),
                f"study.storage={self.storage}: use postgresql://USER@HOST:PORT/DB (or sqlite:///path)")
        require(self.sampler in samplers, f"study.sampler={self.sampler}: use one of {', '.join(samplers.names())}")
        require(bool(self.rungs) and all(r >= 1 for r in self.rungs) and list(self.rungs) == sorted(set(self.rungs)),
                f"study.rungs={list(self.rungs)} must be increasing epoch counts >= 1")
        require(0.0 < self.promote <= 1.0, f"study.promote={self.promote} must be in (0, 1]")
        require(list(self.latency_classes) == sorted(self.latency_classes) and all(c > 0 for c in self.latency_classes),
                f"study.latency_classes={list(self.latency_classes)} must be increasing fractions of the budget")
        require(self.reeval_top_k >= 0, f"study.reeval_top_k={self.reeval_top_k} must be >= 0")
        require(self.reeval_seeds >= 1, f"study.reeval_seeds={self.reeval_seeds} must be >= 1")
        require(self.batch_size >= 2, f"study.batch_size={self.batch_size} must be >= 2")
        require(self.lr > 0, f"study.lr={self.lr} must be > 0")
        require(self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
                f"study.ema_decay={self.ema_decay} must be in (0, 1) (or null: no EMA)")
        require(self.population is None or self.population >= 2,
                f"study.population={self.population} must be >= 2 (or null: n_trials // 4, within 4..50)")
        require(self.train_threads is None or self.train_threads >= 1,
                f"study.train_threads={self.train_threads} must be >= 1 (or null for all cores)")
        require(len(self.latency_classes) > 0, "study.latency_classes=[] leaves no class to promote within: give "
                                               "increasing fractions of the budget, e.g. [0.5,0.8,1.0]")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                f"study.device={self.device}: use auto, cpu, cuda or cuda:N")


@dataclass
class PredictorSearchConfig:
    """How `nas search` uses a latency predictor to skip candidates that are surely over budget."""

    enabled: bool = True
    kind: str = "kernel_sum"  # the fitted file to load (`nas predictor fit kind=...`); online fits are kernel_sum
    z: float = 2.0  # skip when predicted - z * std > budget
    min_fit: int = 8  # measurements before an online predictor is fitted
    refit_every: int = 4  # new measurements between refits
    # Median |relative error| of the last 3 predictions (then measured) beyond which the predictor is not used to
    # skip: a quiet machine's repeat floor is a few percent, a predictor fitted beside other work is off by 300%.
    max_error: float = 0.5

    def __post_init__(self) -> None:
        from nas.core.registry import predictors

        require(self.kind in predictors, f"predictor.kind={self.kind} must be one of {', '.join(predictors.names())}")
        require(self.z >= 0, f"predictor.z={self.z} must be >= 0")
        require(self.min_fit >= 3, f"predictor.min_fit={self.min_fit} must be >= 3")
        require(self.refit_every >= 1, f"predictor.refit_every={self.refit_every} must be >= 1")
        require(self.max_error > 0, f"predictor.max_error={self.max_error} must be > 0")


@dataclass
class TrackingConfig:
    """Where MLflow records runs: None for mlflow.db in workdir; http://HOST:5000 for a tracking server; or a
    database URL."""

    uri: str | None = None


@dataclass
class SearchConfig:
    target: TargetConfig = MISSING
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    dataset: DatasetConfig = MISSING
    study: StudyConfig = field(default_factory=StudyConfig)
    predictor: PredictorSearchConfig = field(default_factory=PredictorSearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    budget_ms: float = 10.0
    workdir: str = "nas-workdir"
    format: str = "text"
    # The export's model card lists the winner's latency under these CPU runtimes too (latency/runtimes.py), measured
    # with the study's protocol when the study's target runs on this CPU; [] skips it.
    card_runtimes: list[str] = field(default_factory=lambda: list(CPU_RUNTIMES))
    overrides: list[str] = field(default_factory=list)  # what the command line set: filled in by the CLI

    def __post_init__(self) -> None:
        require(self.budget_ms > 0, f"budget_ms={self.budget_ms} must be a positive number of milliseconds")
        require(self.format in ("text", "json"), f"format={self.format} must be text or json")

    @property
    def trains(self) -> bool:
        """Whether candidates are trained on ``dataset`` (accuracy=train), rather than scored by the ImageNet model."""
        return self.accuracy.name == AccuracySource.train

    @property
    def accuracy_domain(self) -> str:
        """What the accuracy is measured on: the dataset's name, or ``imagenet`` (part of the study's name)."""
        return self.dataset.name if self.trains else "imagenet"

    def check_accuracy_keys(self) -> None:
        """A dataset or training setting named with accuracy=imagenet would be silently ignored: refuse it."""
        if self.trains:
            return
        training = ("dataset", "study.rungs", "study.epochs", "study.reeval_top_k", "study.reeval_seeds",
                    "study.promote", "study.batch_size", "study.lr", "study.train_threads", "study.latency_classes")
        named = [o for o in self.overrides if o.lstrip("+~").split("=")[0].split(".")[0] == "dataset"
                 or o.lstrip("+~").split("=")[0] in training]
        if named:
            raise ConfigError(f"{named[0]} only applies to accuracy=train (training on a dataset); the default "
                              "accuracy=imagenet predicts ImageNet top-1 and trains nothing: add accuracy=train")


@dataclass
class AccuracyCmdConfig:
    """`nas accuracy fit | eval | predict`: the ImageNet accuracy model."""

    arch: str | None = None  # predict: a timm model name, a reference, an arch.json path, or an Arch as JSON
    resolution: int | None = None  # predict: the input size (default: timm's, or the arch's)
    data: str | None = None  # eval: a CSV in accel_nasbench.csv's format (block{0..6}_{e,k,l,se}, val_top1)
    model: str | None = None  # predict/eval: a fitted model file; None: the one shipped in the package
    out: str | None = None  # fit: where to write the model (default: WORKDIR/imagenet_accuracy.json)
    seed: int = 0
    workdir: str = "nas-workdir"
    format: str = "text"
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self.resolution is None or 32 <= self.resolution <= 1024,
                f"resolution={self.resolution} must be within 32..1024 px")
        require(self.format in ("text", "json"), f"format={self.format} must be text or json")


@dataclass
class MeasureConfig:
    target: TargetConfig = MISSING
    arch: str | None = None  # a reference name, a timm model name or an arch.json path
    resolution: int | None = None  # with arch=: the input size (default: timm's, or the arch's)
    model: str | None = None  # an ONNX (or, for TFLite targets, .tflite) file
    num_classes: int = 1000
    workdir: str = "nas-workdir"
    format: str = "text"
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require((self.arch is None) != (self.model is None),
                "nas measure needs exactly one of arch=NAME|arch.json or model=path/to/model.onnx")
        require(self.format in ("text", "json"), f"format={self.format} must be text or json")


@dataclass
class RuntimesConfig:
    """`nas runtimes arch=NAME`: one architecture under several runtimes of this CPU, with one protocol."""

    target: TargetConfig = MISSING  # the shared protocol (threads, precision, warm-up, rounds, statistic)
    arch: str = MISSING  # a reference name or an arch.json path
    runtimes: list[str] = field(default_factory=lambda: list(CPU_RUNTIMES))  # target options (conf/target/)
    num_classes: int = 1000
    workdir: str = "nas-workdir"
    format: str = "text"
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(len(self.runtimes) > 0, "runtimes=[] names no runtime: e.g. runtimes=[cpu,openvino]")
        require(self.format in ("text", "json"), f"format={self.format} must be text or json")


@dataclass
class PredictorCmdConfig:
    """`nas predictor fit` / `nas predictor eval`."""

    target: TargetConfig = MISSING
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    kind: str = "kernel_sum"
    n_samples: int = 200
    seed: int = 0
    num_classes: int = 10  # the classifier head the searches deploy (10 for digits)
    noise_repeats: int = 10  # eval: archs measured twice to show the measurement noise floor
    experiment: str = "nas-predictors"
    workdir: str = "nas-workdir"
    format: str = "text"
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from nas.core.registry import predictors

        require(self.kind in predictors, f"kind={self.kind} must be one of {', '.join(predictors.names())}")
        require(self.n_samples >= 5, f"n_samples={self.n_samples} must be >= 5")
        require(self.num_classes >= 2, f"num_classes={self.num_classes} must be >= 2")
        require(self.format in ("text", "json"), f"format={self.format} must be text or json")


@dataclass
class AgentConfig:
    """`nas agent`: the measurement server that runs on the device."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # required to bind anything but loopback
    max_upload_mb: float = 64.0
    request_timeout_s: float = 60.0  # to receive an upload
    measure_timeout_s: float = 600.0  # to answer a measurement, queue included; an overrun one is killed
    max_queue: int = 4  # requests that may wait behind the running measurement; more are answered 429
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        loopback = self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
        require(loopback or bool(self.token),
                f"host={self.host} exposes the agent beyond this machine: set token=SECRET (clients send it as "
                "target.token)")
        require(0 < self.port < 65536, f"port={self.port} must be in 1..65535")
        require(self.max_upload_mb > 0, f"max_upload_mb={self.max_upload_mb} must be > 0")
        require(self.max_queue >= 0, f"max_queue={self.max_queue} must be >= 0")
        require(self.measure_timeout_s > 0, f"measure_timeout_s={self.measure_timeout_s} must be > 0")


def register_schemas() -> None:
    """Store the command schemas in Hydra's ConfigStore (the parts' schemas are stored as they register)."""
    cs = ConfigStore.instance()
    cs.store(name="search_schema", node=SearchConfig)
    cs.store(name="measure_schema", node=MeasureConfig)
    cs.store(name="predictor_schema", node=PredictorCmdConfig)
    cs.store(name="agent_schema", node=AgentConfig)
    cs.store(name="runtimes_schema", node=RuntimesConfig)
    cs.store(name="accuracy_cmd_schema", node=AccuracyCmdConfig)
    cs.store(group="search_space", name="search_space_schema", node=SearchSpaceConfig)
    cs.store(group="study", name="study_schema", node=StudyConfig)
    cs.store(group="accuracy", name="accuracy_schema", node=AccuracyConfig)
