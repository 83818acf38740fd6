"""Structured configs: the typed schema every Hydra override is validated against.

OmegaConf checks types and unknown keys while composing; the ``__post_init__`` checks run when
``to_object`` builds these dataclasses, so a bad value ends before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from nas.errors import ConfigError

STATISTICS = ("p50", "p90", "p95", "p99", "mean")
ACTS = ("relu", "relu6", "hard_swish", "swish")


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class EdgeTpuConfig:
    """target=edge_tpu: which Coral product, and whether latencies come from the device or the analytic model."""

    device: str = "usb"  # usb (USB Accelerator on a desktop host) or dev_board: selects the fitted constants
    mode: str = "auto"  # auto: measure when an Edge TPU is reachable, else predict; predict; measure (require one)
    compiler: str = "edgetpu_compiler"  # name on PATH, or a path
    library: str | None = None  # the Edge TPU runtime (libedgetpu.so.1 on Linux) when not the platform default

    def __post_init__(self) -> None:
        _require(self.device in ("usb", "dev_board"), f"target.edgetpu.device={self.device} must be usb or dev_board")
        _require(self.mode in ("auto", "predict", "measure"),
                 f"target.edgetpu.mode={self.mode} must be auto, predict or measure")


RUNTIMES = ("onnxruntime", "agent", "litert", "edgetpu")


@dataclass
class TargetConfig:
    name: str = "cpu"
    runtime: str = "onnxruntime"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 1
    input_shape: list[int] = field(default_factory=lambda: [1, 3, 224, 224])
    warmup: int = 10
    repeats: int = 100
    rounds: int = 5  # timed runs are split into rounds; percentiles are medians over rounds
    round_pause_s: float = 0.05
    statistic: str = "p90"  # which latency statistic the budget applies to
    precision: str = "fp32"
    exporter: str = "legacy"  # legacy (TorchScript) or dynamo; see benchmarks/trial_breakdown.py
    opset: int = 17
    scope: str = "model"  # what the budget covers: the model alone, or the pipeline (decode, resize, ..., top-5)
    source_size: list[int] = field(default_factory=lambda: [480, 640])  # pipeline: the JPEG's height, width
    url: str | None = None  # runtime=agent: where `nas agent` listens, e.g. http://127.0.0.1:8765
    token: str | None = None  # runtime=agent: the agent's token, when it has one
    timeout_s: float = 300.0  # runtime=agent: per request
    retries: int = 3  # runtime=agent: attempts on a dropped connection
    format: str = "onnx"  # runtime=agent: onnx (ONNX Runtime), tflite (LiteRT) or edgetpu (int8 TFLite, Edge TPU)
    edgetpu: EdgeTpuConfig = field(default_factory=EdgeTpuConfig)

    @property
    def deploy_format(self) -> str:
        """The file a device runs: onnx, or tflite (LiteRT, the Edge TPU, an agent running LiteRT)."""
        if self.runtime in ("litert", "edgetpu") or (self.runtime == "agent" and self.format != "onnx"):
            return "tflite"
        return "onnx"

    def __post_init__(self) -> None:
        _require(self.statistic in STATISTICS, f"target.statistic={self.statistic} must be one of {STATISTICS}")
        _require(self.threads >= 1, f"target.threads={self.threads} must be >= 1")
        _require(self.warmup >= 0, f"target.warmup={self.warmup} must be >= 0")
        _require(self.repeats >= 5, f"target.repeats={self.repeats} must be >= 5 for percentiles to mean anything")
        _require(1 <= self.rounds <= self.repeats, f"target.rounds={self.rounds} must be in [1, target.repeats]")
        _require(len(self.input_shape) == 4 and all(d >= 1 for d in self.input_shape),
                 f"target.input_shape={list(self.input_shape)} must be [batch, channels, height, width]")
        _require(self.exporter in ("legacy", "dynamo"), f"target.exporter={self.exporter} must be legacy or dynamo")
        _require(self.precision in ("fp32", "fp16", "int8"),
                 f"target.precision={self.precision} must be fp32, fp16 or int8")
        _require(self.runtime in RUNTIMES, f"target.runtime={self.runtime}: use one of {RUNTIMES}")
        _require(self.format in ("onnx", "tflite", "edgetpu"),
                 f"target.format={self.format} must be onnx, tflite or edgetpu")
        if self.runtime == "litert" or (self.runtime == "agent" and self.format == "tflite"):
            _require(self.precision in ("int8", "fp32"), f"target.precision={self.precision}: TFLite targets take "
                     "int8 (full-integer) or fp32")
        if self.runtime == "edgetpu" or (self.runtime == "agent" and self.format == "edgetpu"):
            _require(self.precision == "int8", f"target.precision={self.precision}: the Edge TPU runs int8 only")
        _require(self.runtime != "agent" or bool(self.url),
                 "target=remote needs target.url=http://HOST:PORT of a running `nas agent`")
        _require(self.scope in ("model", "pipeline"), f"target.scope={self.scope} must be model or pipeline")
        _require(self.retries >= 1, f"target.retries={self.retries} must be >= 1")


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
        _require(self.family in ("mobilenetv3", "efficientnet"),
                 f"search_space.family={self.family} must be mobilenetv3 or efficientnet")
        for key in ("act",):
            bad = [a for a in getattr(self, key) if a not in ACTS]
            _require(not bad, f"search_space.{key} has unknown activation(s) {bad}; use {ACTS}")
        for i, st in enumerate(self.stages):
            _require(st.kind in ("ds", "ir", "er", "cn"), f"search_space.stages[{i}].kind={st.kind} is unknown")
            _require(st.stride in (1, 2), f"search_space.stages[{i}].stride={st.stride} must be 1 or 2")
            for name in ("channels", "depth", "kernel", "expansion", "se", "act"):
                values = getattr(st, name)
                _require(values is None or len(values) > 0, f"search_space.stages[{i}].{name} is an empty list")
        for name in ("depth", "kernel", "expansion", "se", "act"):
            _require(len(getattr(self.choices, name)) > 0, f"search_space.choices.{name} is an empty list")


@dataclass
class DatasetConfig:
    name: str = "digits"
    path: str | None = None
    # A candidate trains at round(its deployment resolution x proxy_scale), at least min_resolution pixels:
    # the searched resolution reaches accuracy, while latency is measured at the deployment resolution itself.
    proxy_scale: float = 0.143
    min_resolution: int = 16
    val_fraction: float = 0.2
    seed: int = 0
    max_images: int | None = None

    def __post_init__(self) -> None:
        _require(self.name in ("digits", "imagefolder"), f"dataset={self.name}: use digits or imagefolder")
        _require(0.0 < self.val_fraction < 1.0, f"dataset.val_fraction={self.val_fraction} must be in (0, 1)")
        _require(0.0 < self.proxy_scale <= 4.0, f"dataset.proxy_scale={self.proxy_scale} must be in (0, 4]")
        _require(self.min_resolution >= 8, f"dataset.min_resolution={self.min_resolution} must be >= 8")


@dataclass
class StudyConfig:
    n_trials: int = 16  # trials this run adds (a rerun adds more to the same study)
    sampler: str = "nsga2"
    seed: int = 0
    name: str | None = None  # default: derived from target, space, dataset and budget
    timeout_s: float | None = None
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.01
    train_threads: int | None = None  # torch threads for proxy training; None: all cores
    cutoff_ratio: float = 0.5  # cut training when top-1 < ratio x median of earlier trials at that epoch
    experiment: str = "nas"  # MLflow experiment name

    def __post_init__(self) -> None:
        _require(self.n_trials >= 0, f"study.n_trials={self.n_trials} must be >= 0")
        _require(self.sampler in ("nsga2", "tpe", "random"), f"study.sampler={self.sampler}: use nsga2, tpe or random")
        _require(self.epochs >= 1, f"study.epochs={self.epochs} must be >= 1")
        _require(self.batch_size >= 2, f"study.batch_size={self.batch_size} must be >= 2")
        _require(self.lr > 0, f"study.lr={self.lr} must be > 0")


@dataclass
class PredictorSearchConfig:
    """How `nas search` uses a latency predictor to skip candidates that are surely over budget."""

    enabled: bool = True
    kind: str = "kernel_sum"  # the fitted file to load (`nas predictor fit kind=...`); online fits are kernel_sum
    z: float = 2.0  # skip when predicted - z * std > budget
    min_fit: int = 8  # measurements before an online predictor is fitted
    refit_every: int = 4  # new measurements between refits

    def __post_init__(self) -> None:
        _require(self.z >= 0, f"predictor.z={self.z} must be >= 0")
        _require(self.min_fit >= 3, f"predictor.min_fit={self.min_fit} must be >= 3")
        _require(self.refit_every >= 1, f"predictor.refit_every={self.refit_every} must be >= 1")


@dataclass
class SearchConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    predictor: PredictorSearchConfig = field(default_factory=PredictorSearchConfig)
    budget_ms: float = 10.0
    workdir: str = "nas-workdir"
    format: str = "text"

    def __post_init__(self) -> None:
        _require(self.budget_ms > 0, f"budget_ms={self.budget_ms} must be a positive number of milliseconds")
        _require(self.format in ("text", "json"), f"format={self.format} must be text or json")


@dataclass
class MeasureConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    arch: str | None = None  # a reference name or an arch.json path
    model: str | None = None  # an ONNX file
    num_classes: int = 1000
    workdir: str = "nas-workdir"
    format: str = "text"

    def __post_init__(self) -> None:
        _require((self.arch is None) != (self.model is None),
                 "nas measure needs exactly one of arch=NAME|arch.json or model=path/to/model.onnx")
        _require(self.format in ("text", "json"), f"format={self.format} must be text or json")


@dataclass
class PredictorCmdConfig:
    """`nas predictor fit` / `nas predictor eval`."""

    target: TargetConfig = field(default_factory=TargetConfig)
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    kind: str = "kernel_sum"
    n_samples: int = 200
    seed: int = 0
    num_classes: int = 10  # the classifier head the searches deploy (10 for digits)
    noise_repeats: int = 10  # eval: archs measured twice to show the measurement noise floor
    experiment: str = "nas-predictors"
    workdir: str = "nas-workdir"
    format: str = "text"

    def __post_init__(self) -> None:
        from nas.predictors.registry import PREDICTORS

        _require(self.kind in PREDICTORS, f"kind={self.kind} must be one of {sorted(PREDICTORS)}")
        _require(self.n_samples >= 5, f"n_samples={self.n_samples} must be >= 5")
        _require(self.num_classes >= 2, f"num_classes={self.num_classes} must be >= 2")
        _require(self.format in ("text", "json"), f"format={self.format} must be text or json")


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

    def __post_init__(self) -> None:
        loopback = self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
        _require(loopback or bool(self.token),
                 f"host={self.host} exposes the agent beyond this machine: set token=SECRET (clients send it as "
                 "target.token)")
        _require(0 < self.port < 65536, f"port={self.port} must be in 1..65535")
        _require(self.max_upload_mb > 0, f"max_upload_mb={self.max_upload_mb} must be > 0")
        _require(self.max_queue >= 0, f"max_queue={self.max_queue} must be >= 0")
        _require(self.measure_timeout_s > 0, f"measure_timeout_s={self.measure_timeout_s} must be > 0")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="search_schema", node=SearchConfig)
    cs.store(name="measure_schema", node=MeasureConfig)
    cs.store(name="predictor_schema", node=PredictorCmdConfig)
    cs.store(name="agent_schema", node=AgentConfig)
    cs.store(group="target", name="target_schema", node=TargetConfig)
    cs.store(group="search_space", name="search_space_schema", node=SearchSpaceConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="study", name="study_schema", node=StudyConfig)
