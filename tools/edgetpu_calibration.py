"""Calibration tooling of the analytic Edge TPU model: published timings, the model zoo, fitting, validation.

Not imported by the search: ``edgetpu_model.py`` loads the constants this module fits. Everything here works from
the shipped CSVs in ``data/`` (features of the zoo included), so refitting needs no export; ``extract_features``
rebuilds those features from timm / torchvision models with random weights (no download).

The fit: one row per published timing (model, host, source, clock). Unknowns, solved by bounded linear least squares
on relative residuals (a 2 ms and a 1000 ms row weigh alike):

- the Edge TPU compute ``c`` (ms per array MAC) and ``b`` (ms per layer) at the 500 MHz reference clock, >= 0;
- per host link (``usb3``, ``usb2``, ``board``): ms per byte over the link and ms per layer (code and control
  traffic), >= 0;
- per host: the fixed overhead of an invocation, >= 0;
- per source other than Coral's Table 1: an offset of any sign (Python loops, p95 instead of means, harness
  differences), because sources time different things. Predictions use no source offset: they are Table 1's
  "model execution only" times.

The on-chip parameter memory and the channel tile are chosen by leave-one-architecture-out (LOAO) error; the
validation figures choose them again inside every outer fold (nested), so the held-out architecture never takes part
in any choice.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear
from scipy.stats import spearmanr

from nas.predictors.edgetpu_model import (
    ARRAY_TILE,
    CONSTANTS_JSON,
    DATA_DIR,
    MIN_ARCHITECTURES,
    MIN_ROWS,
    EdgeTpuFeatures,
    EdgeTpuModel,
    link_bytes,
    node_costs,
)

CORAL_CSV = DATA_DIR / "coral_edgetpu_benchmarks.csv"
PUBLIC_CSV = DATA_DIR / "edgetpu_public_calibration.csv"
VALIDATION_CSV = DATA_DIR / "edgetpu_validation.csv"
FEATURES_CSV = DATA_DIR / "edgetpu_features.csv"
TILE_MACS_CSV = DATA_DIR / "edgetpu_tile_macs.csv"  # tpu_array_macs of every zoo entry at every candidate tile

MIB = 1 << 20
REFERENCE_MHZ = 500.0  # Edge TPU clock of the published rows that do not state one (see README)
# libedgetpu: the throttled (std) build runs a USB Edge TPU at PerformanceExpectation_High = 250 MHz, the direct
# (max) build at 500 MHz; a PCIe/Dev Board Edge TPU is never throttled by the runtime.
CLOCKS: dict[str, dict[str, float]] = {"std": {"usb_mhz": 250.0, "board_mhz": 500.0},
                                       "max": {"usb_mhz": 500.0, "board_mhz": 500.0}}
# Candidate parameter memories: the chip has 8 MB of SRAM; edgetpu_compiler reports cap the parameters it caches at
# ~6.1-7.1 MiB, depending on the model (the rest holds activations and code).
CACHE_CANDIDATES: tuple[int, ...] = tuple(int(m * MIB) for m in (6.0, 6.5, 7.0, 7.5, 8.0))
TILE_CANDIDATES: tuple[int, ...] = (16, 32, 64, 128)
SELECT_TILES: tuple[int, ...] = (ARRAY_TILE,)  # the tile follows from the spec (4 TOPS = 64 x 64 MACs x 2 x 500 MHz)
REFERENCE_SOURCE = "coral_table1"
HUBER_DELTA = 0.15  # relative residual beyond which a row's weight shrinks (Huber)
HUBER_MAX_ITERATIONS = 200  # IRLS rounds at most; it stops once no weight moves by more than HUBER_TOLERANCE
HUBER_TOLERANCE = 1e-9


@dataclass(frozen=True)
class HostSpec:
    link: str  # usb3, usb2 or board
    description: str
    cpu: str  # which published CPU column gives its fallback throughput, and the scaling


HOSTS: dict[str, HostSpec] = {
    "desktop_usb3": HostSpec("usb3", "x86 desktop or laptop, Coral USB Accelerator on a USB 3.0 port",
                             "Coral Table 1 desktop-CPU column (median MACs/ms)"),
    "dev_board": HostSpec("board", "Coral Dev Board (Edge TPU on the board, Cortex-A53 host)",
                          "Coral Table 1 embedded-CPU column (the Dev Board's Cortex-A53 at 1.5 GHz)"),
    "rpi4_usb3": HostSpec("usb3", "Raspberry Pi 4, USB Accelerator on a USB 3.0 port",
                          "assumed no faster than the Dev Board's Cortex-A53 (no Pi CPU timings in the data)"),
    "rpi4_usb2": HostSpec("usb2", "Raspberry Pi 4, USB Accelerator at USB 2.0 speed",
                          "assumed no faster than the Dev Board's Cortex-A53 (no Pi CPU timings in the data)"),
    "rpi3_usb2": HostSpec("usb2", "Raspberry Pi 3B/3B+, USB Accelerator over USB 2.0",
                          "Dev Board's Cortex-A53 scaled to the Pi 3B's 1.2 GHz"),
}
_CPU_SCALE = {"desktop_usb3": ("desktop_cpu_ms", 1.0), "dev_board": ("embedded_cpu_ms", 1.0),
              "rpi4_usb3": ("embedded_cpu_ms", 1.0), "rpi4_usb2": ("embedded_cpu_ms", 1.0),
              "rpi3_usb2": ("embedded_cpu_ms", 1.2 / 1.5)}


# --- calibration rows --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One published timing."""

    model: str  # the source's name
    arch: str  # architecture group: leave-one-architecture-out leaves all its rows out at once
    zoo: str  # the zoo entry whose features stand for it
    size: int  # input px
    host: str
    source: str
    clock_mhz: float
    ms: float
    trust: str

    @property
    def key(self) -> str:
        return feature_key(self.zoo, self.size)


def feature_key(zoo: str, size: int) -> str:
    return f"{zoo}@{size}"


# Table 1 subset (coral_edgetpu_benchmarks.csv): name -> (architecture group, zoo entry)
_CORAL_MODELS = {
    "mobilenet_v1_1.0": ("mobilenet_v1", "mobilenetv1_100"), "mobilenet_v2_1.0": ("mobilenet_v2", "mobilenetv2_100"),
    "efficientnet_edgetpu_s": ("efficientnet_edgetpu_s", "efficientnet_es"),
    "inception_v1": ("inception_v1", "googlenet"), "resnet50_v1": ("resnet50", "resnet50"),
    "vgg16": ("vgg16", "vgg16"), "inception_resnet_v2": ("inception_resnet_v2", "inception_resnet_v2"),
}
# edgetpu_public_calibration.csv: model -> (architecture group, zoo entry). Width variants of MobileNet v1 share its
# group (a width multiplier does not make a new architecture). Left out: 'tfhub_popular_us_products' (an unknown
# MobileNet with 100k classes: no model to take features from).
_PUBLIC_MODELS = {
    "inception_v1": ("inception_v1", "googlenet"),
    "mobilenet_v1_1.0": ("mobilenet_v1", "mobilenetv1_100"), "keras_mobilenet": ("mobilenet_v1", "mobilenetv1_100"),
    "tf2_mobilenet_v1_1.0": ("mobilenet_v1", "mobilenetv1_100"),
    "mobilenet_v1_0.75": ("mobilenet_v1", "mobilenetv1_075"), "mobilenet_v1_0.5": ("mobilenet_v1", "mobilenetv1_050"),
    "mobilenet_v1_0.25": ("mobilenet_v1", "mobilenetv1_025"),
    "mobilenet_v2_1.0": ("mobilenet_v2", "mobilenetv2_100"), "keras_mobilenetv2": ("mobilenet_v2", "mobilenetv2_100"),
    "tf2_mobilenet_v2_1.0": ("mobilenet_v2", "mobilenetv2_100"),
    "mobilenet_v2_1.0_inat_bird": ("mobilenet_v2", "mobilenetv2_100"),
    "mobilenet_v2_1.0_inat_insect": ("mobilenet_v2", "mobilenetv2_100"),
    "mobilenet_v2_1.0_inat_plant": ("mobilenet_v2", "mobilenetv2_100"),
    "keras_nasnetmobile": ("nasnet_mobile", "nasnet_mobile"), "keras_resnet50": ("resnet50", "resnet50"),
    "tfhub_resnet50_v1 (TF2)": ("resnet50", "resnet50"),
    "efficientnet_edgetpu_s": ("efficientnet_edgetpu_s", "efficientnet_es"),
}
# The public CSV's host column -> host key. Fischer et al.'s Pi 4 streams ResNet-50's parameters at USB 2.0 speed
# (~529 ms, as Coral's Pi 3 over USB 2.0 streams Inception v4), so it is a Pi 4 with a USB 2.0 link; Coral's own
# rp4b host is taken as USB 3.0. Coral's model pages do not name their host: a desktop over USB 3.0.
_HOST_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^Raspberry Pi 3B", "rpi3_usb2"), (r"^Raspberry Pi 4B", "rpi4_usb3"), (r"^Raspberry Pi 4 \(", "rpi4_usb2"),
    (r"^Coral Dev Board", "dev_board"), (r"^Intel", "desktop_usb3"), (r"^$", "desktop_usb3"),
)


def _read(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def _host_of(host: str) -> str:
    for pattern, key in _HOST_PATTERNS:
        if re.search(pattern, host):
            return key
    raise ValueError(f"no host key for {host!r}")


def _clock(text: str) -> float:
    return float(text.removesuffix("MHz")) if text else REFERENCE_MHZ


def read_coral_csv(path: str | Path = CORAL_CSV) -> list[dict[str, str]]:
    return _read(path)


def calibration_rows(coral: str | Path = CORAL_CSV, public: str | Path = PUBLIC_CSV) -> list[Row]:
    """Coral's Table 1 subset (two hosts) and the public rows, every one with its host, source and clock."""
    rows = []
    for r in _read(coral):
        arch, zoo = _CORAL_MODELS[r["model"]]
        for col, host in (("usb_accelerator_ms", "desktop_usb3"), ("dev_board_ms", "dev_board")):
            rows.append(Row(r["model"], arch, zoo, int(r["input_size"]), host, REFERENCE_SOURCE, REFERENCE_MHZ,
                            float(r[col]), "A"))
    for r in _read(public):
        if r["model"] not in _PUBLIC_MODELS:
            continue
        arch, zoo = _PUBLIC_MODELS[r["model"]]
        rows.append(Row(r["model"], arch, zoo, int(r["input_size"]), _host_of(r["host"]), r["source_id"],
                        _clock(r["edgetpu_clock"]), float(r["latency_ms"]), r["trust"]))
    return rows


def validation_rows(path: str | Path = VALIDATION_CSV) -> list[Row]:
    """Published timings of architectures outside the calibration rows (held out)."""
    return [Row(r["model"], r["arch"], r["zoo"], int(r["input_size"]), r["host"], r["source_id"],
                float(r["edgetpu_clock_mhz"]) if r["edgetpu_clock_mhz"] else REFERENCE_MHZ, float(r["latency_ms"]),
                r["trust"]) for r in _read(path)]


# --- features of the zoo -----------------------------------------------------------------------------------------


def read_features_csv(path: str | Path = FEATURES_CSV) -> dict[str, EdgeTpuFeatures]:
    with open(path, newline="") as fh:
        return {row["model"]: EdgeTpuFeatures.from_row(row) for row in csv.DictReader(fh)}


def write_features_csv(features: Mapping[str, EdgeTpuFeatures], path: str | Path = FEATURES_CSV) -> None:
    names = ["model", *(f.name for f in fields(EdgeTpuFeatures))]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names, lineterminator="\n")
        w.writeheader()
        for model, f in sorted(features.items()):
            w.writerow({"model": model, **f.to_row()})


def read_tile_macs_csv(path: str | Path = TILE_MACS_CSV) -> dict[str, dict[int, int]]:
    """feature key -> {tile: tpu_array_macs at that tile} (columns ``tpu_array_macs_t<tile>``)."""
    with open(path, newline="") as fh:
        return {row["model"]: {int(k.removeprefix("tpu_array_macs_t")): int(v) for k, v in row.items()
                               if k.startswith("tpu_array_macs_t")} for row in csv.DictReader(fh)}


def write_tile_macs_csv(tile_macs: Mapping[str, Mapping[int, int]], path: str | Path = TILE_MACS_CSV) -> None:
    tiles = sorted({t for by_tile in tile_macs.values() for t in by_tile})
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["model", *(f"tpu_array_macs_t{t}" for t in tiles)])
        for model, by_tile in sorted(tile_macs.items()):
            w.writerow([model, *(by_tile[t] for t in tiles)])


def at_tile(features: EdgeTpuFeatures, tile_macs: Mapping[int, int], tile: int) -> EdgeTpuFeatures:
    """The features with the compute term at another tile (only tpu_array_macs depends on the tile)."""
    return replace(features, tpu_array_macs=tile_macs[tile])


@dataclass(frozen=True)
class ZooModel:
    """A model built here (random weights, 1000 classes) for a published architecture."""

    library: str  # timm, torchvision, or custom
    name: str
    kwargs: tuple[tuple[str, object], ...] = ()


ZOO: dict[str, ZooModel] = {
    "mobilenetv1_100": ZooModel("timm", "mobilenetv1_100"),
    "mobilenetv1_075": ZooModel("custom", "mobilenet_v1", (("width", 0.75),)),
    "mobilenetv1_050": ZooModel("custom", "mobilenet_v1", (("width", 0.5),)),
    "mobilenetv1_025": ZooModel("custom", "mobilenet_v1", (("width", 0.25),)),
    "mobilenetv2_100": ZooModel("timm", "mobilenetv2_100"),
    "efficientnet_es": ZooModel("timm", "efficientnet_es"),
    "googlenet": ZooModel("torchvision", "googlenet", (("aux_logits", False), ("init_weights", False))),
    "resnet50": ZooModel("timm", "resnet50"),
    "vgg16": ZooModel("torchvision", "vgg16"),
    "inception_resnet_v2": ZooModel("timm", "inception_resnet_v2"),
    "nasnet_mobile": ZooModel("custom", "nasnet_mobile"),
    # validation only
    "densenet121": ZooModel("timm", "densenet121"), "densenet169": ZooModel("timm", "densenet169"),
    "densenet201": ZooModel("timm", "densenet201"), "inception_v4": ZooModel("timm", "inception_v4"),
    "resnetv2_50": ZooModel("timm", "resnetv2_50"), "resnetv2_101": ZooModel("timm", "resnetv2_101"),
    "resnetv2_152": ZooModel("timm", "resnetv2_152"), "resnet101": ZooModel("timm", "resnet101"),
    "squeezenet1_0": ZooModel("torchvision", "squeezenet1_0"), "vgg19": ZooModel("torchvision", "vgg19"),
    "tf_efficientnet_em": ZooModel("timm", "tf_efficientnet_em"),
    "tf_efficientnet_el": ZooModel("timm", "tf_efficientnet_el"),
    "inception_v3": ZooModel("timm", "inception_v3"), "legacy_xception": ZooModel("timm", "legacy_xception"),
    "efficientnet_b0": ZooModel("timm", "efficientnet_b0"),
}


def build_zoo_model(key: str) -> Any:
    """The torch module of a zoo entry, random weights, eval mode (never downloads weights)."""
    spec = ZOO[key]
    kw = dict(spec.kwargs)
    if spec.library == "timm":
        import timm

        model = timm.create_model(spec.name, pretrained=False, num_classes=1000, **kw)
    elif spec.library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, spec.name)(weights=None, num_classes=1000, **kw)
    elif spec.name == "mobilenet_v1":
        from timm.models.efficientnet import _gen_mobilenet_v1

        model = _gen_mobilenet_v1(key, channel_multiplier=kw["width"], num_classes=1000)
    else:
        model = _nasnet_mobile()
    return model.eval()


def _nasnet_mobile() -> Any:
    """NASNet-A Mobile (4 @ 1056) from timm's NASNet-A Large class: 4 normal cells per stage instead of 6 (the
    dropped cells pass their left input through). 5,289,978 parameters, as Keras' NASNetMobile."""
    from timm.models.nasnet import NASNetALarge
    from torch import nn

    class PassLeft(nn.Module):
        def forward(self, x_left: Any, x_right: Any) -> Any:
            return x_left

    model = NASNetALarge(num_classes=1000, stem_size=32, num_features=1056)
    for i in (4, 5, 10, 11, 16, 17):
        setattr(model, f"cell_{i}", PassLeft())
    return model


def export_onnx(model: Any, input_size: int, path: str | Path, exporter: str = "legacy") -> Path:
    """Export at batch 1 (legacy TorchScript exporter, opset 17, as the shipped features were made)."""
    from nas.latency.onnx_export import export_onnx as export

    return export(model, (1, 3, input_size, input_size), Path(path), exporter)


def extract_features(keys: Iterable[str], log: Any = print) -> tuple[dict[str, EdgeTpuFeatures], dict]:
    """Features (at ARRAY_TILE) and array MACs at every candidate tile of each ``zoo@size`` key."""
    import tempfile
    import time

    import onnx

    from nas.predictors.edgetpu_model import features_of

    feats, tile_macs = {}, {}
    keys = sorted(set(keys))
    with tempfile.TemporaryDirectory() as tmp:
        for i, key in enumerate(keys, 1):
            zoo, size = key.rsplit("@", 1)
            t0 = time.perf_counter()
            path = export_onnx(build_zoo_model(zoo), int(size), Path(tmp) / "m.onnx")
            proto = onnx.load(str(path))
            path.unlink()  # VGG is ~550 MB
            feats[key] = features_of(proto)
            tile_macs[key] = {t: sum(c.array_macs for c in node_costs(proto, t)[0] if not c.on_cpu)
                              for t in TILE_CANDIDATES}
            f = feats[key]
            log(f"[{i}/{len(keys)}] {key}: {f.macs / 1e9:.2f} GMAC, {f.param_bytes / 1e6:.1f} MB int8, "
                f"{f.layers} layers, cpu_ops={f.cpu_ops} ({time.perf_counter() - t0:.0f} s)")
    return feats, tile_macs


# --- the fit ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    tile: int
    cache_bytes: int


@dataclass(frozen=True)
class Fit:
    """Fitted constants (see the module docstring)."""

    settings: Settings
    c: float
    b: float
    links: dict[str, tuple[float, float]]  # link -> (ms per byte, ms per layer)
    overhead: dict[str, float]  # host -> ms
    offsets: dict[str, float]  # source -> ms (the reference source is 0)
    cpu_macs_per_ms: dict[str, float]  # host -> fallback throughput

    def predict(self, f: EdgeTpuFeatures, host: str, clock_mhz: float = REFERENCE_MHZ, source: str | None = None
                ) -> float:
        d, e = self.links.get(HOSTS[host].link, (0.0, 0.0))
        mapped = f.tpu_ops > 0
        t = REFERENCE_MHZ / clock_mhz * (self.c * f.tpu_array_macs + self.b * f.tpu_layers)
        if mapped:
            t += self.overhead.get(host, 0.0) + d * link_bytes(f, self.settings.cache_bytes) + e * f.tpu_layers
        t += f.cpu_macs / self.cpu_macs_per_ms[host]
        return t + (self.offsets.get(source, 0.0) if source else 0.0)


def cpu_throughputs(coral: Sequence[dict[str, str]], features: Mapping[str, EdgeTpuFeatures]) -> dict[str, float]:
    """Host CPU throughput (MACs/ms) for fallback ops, from Coral's CPU columns: the median over the rows shrugs off
    efficientnet_edgetpu_s's 5431 ms desktop figure (~50x what its MACs suggest)."""
    def median(col: str) -> float:
        return float(np.median([features[_coral_key(r)].macs / float(r[col]) for r in coral]))

    cols = {col: median(col) for col in ("desktop_cpu_ms", "embedded_cpu_ms")}
    return {h: cols[col] * scale for h, (col, scale) in _CPU_SCALE.items()}


def cpu_loo_error(coral: Sequence[dict[str, str]], features: Mapping[str, EdgeTpuFeatures]) -> float:
    """LOO median abs error of the CPU term: each CPU-column time predicted from the other rows' median throughput."""
    pred, measured = [], []
    for col in ("desktop_cpu_ms", "embedded_cpu_ms"):
        for i, held in enumerate(coral):
            others = [r for j, r in enumerate(coral) if j != i]
            throughput = float(np.median([features[_coral_key(r)].macs / float(r[col]) for r in others]))
            pred.append(features[_coral_key(held)].macs / throughput)
            measured.append(float(held[col]))
    return mdape(pred, measured)


def _coral_key(r: Mapping[str, str]) -> str:
    return feature_key(_CORAL_MODELS[r["model"]][1], int(r["input_size"]))


def fit(rows: Sequence[Row], features: Mapping[str, EdgeTpuFeatures], settings: Settings,
        cpu: Mapping[str, float]) -> Fit:
    """Bounded least squares on relative residuals; parameters no training row touches stay 0."""
    links = sorted({HOSTS[r.host].link for r in rows})
    hosts = sorted({r.host for r in rows})
    sources = sorted({r.source for r in rows} - {REFERENCE_SOURCE})
    names = ["c", "b", *(f"d:{k}" for k in links), *(f"e:{k}" for k in links), *(f"a:{h}" for h in hosts),
             *(f"o:{s}" for s in sources)]
    col = {n: i for i, n in enumerate(names)}
    x = np.zeros((len(rows), len(names)))
    y = np.zeros(len(rows))
    for i, r in enumerate(rows):
        f = features[r.key]
        k = REFERENCE_MHZ / r.clock_mhz
        x[i, col["c"]], x[i, col["b"]] = k * f.tpu_array_macs, k * f.tpu_layers
        if f.tpu_ops:
            link = HOSTS[r.host].link
            x[i, col[f"d:{link}"]] = link_bytes(f, settings.cache_bytes)
            x[i, col[f"e:{link}"]] = f.tpu_layers
            x[i, col[f"a:{r.host}"]] = 1.0
        if r.source != REFERENCE_SOURCE:
            x[i, col[f"o:{r.source}"]] = 1.0
        y[i] = r.ms - f.cpu_macs / cpu[r.host]
    ms = np.array([r.ms for r in rows])
    scale = np.maximum(np.abs(x).max(axis=0), 1e-30)  # columns span 1 .. 1e10
    bounds = (np.array([-np.inf if n.startswith("o:") else 0.0 for n in names]), np.full(len(names), np.inf))
    # Relative residuals, Huber-weighted (IRLS): one row the physics cannot explain (Inception-ResNet-v2 streams
    # ~49 MB in 57 ms, where VGG16 and ResNet-50 agree on ~440 MB/s) must not set every host's bandwidth.
    # Iterated until the weights settle, not a fixed number of rounds: a thin link converges late. The Dev Board's
    # (3 streaming rows, Inception-ResNet-v2 one of them) stood at 557 MB/s after the 8 rounds this loop used to
    # stop at, on its way from 622 to 421 MB/s: faster than USB 3.0, although every streaming model of Coral's Table 1
    # is 14-21% slower on the board, with its ResNet-50 and VGG16 rows fitted 22% and 27% low.
    robust = np.ones(len(rows))
    for _ in range(HUBER_MAX_ITERATIONS):
        w = robust / ms
        sol = lsq_linear((x / scale) * w[:, None], y * w, bounds=bounds, method="bvls").x / scale
        rel = np.abs(x @ sol - y) / ms
        robust, previous = np.minimum(1.0, HUBER_DELTA / np.maximum(rel, 1e-12)), robust
        if np.max(np.abs(robust - previous)) < HUBER_TOLERANCE:
            break
    p = dict(zip(names, sol.tolist(), strict=True))
    return Fit(settings=settings, c=p["c"], b=p["b"],
               links={k: (p[f"d:{k}"], p[f"e:{k}"]) for k in links},
               overhead={h: p[f"a:{h}"] for h in hosts},
               offsets={REFERENCE_SOURCE: 0.0, **{s: p[f"o:{s}"] for s in sources}}, cpu_macs_per_ms=dict(cpu))


def with_tile(features: Mapping[str, EdgeTpuFeatures], tile_macs: Mapping[str, Mapping[int, int]], tile: int
              ) -> dict[str, EdgeTpuFeatures]:
    return {k: at_tile(f, tile_macs[k], tile) for k, f in features.items()} if tile != ARRAY_TILE else dict(features)


def predictions(fit_: Fit, rows: Sequence[Row], features: Mapping[str, EdgeTpuFeatures]) -> np.ndarray:
    """Each row's prediction with its own source's offset (what that source would have timed)."""
    return np.array([fit_.predict(features[r.key], r.host, r.clock_mhz, r.source) for r in rows])


def loo(rows: Sequence[Row], features: Mapping[str, EdgeTpuFeatures], settings: Settings,
        cpu: Mapping[str, float], group: str = "row") -> np.ndarray:
    """Out-of-fold predictions: ``group='row'`` leaves one row out, ``'arch'`` all rows of one architecture."""
    labels = list(range(len(rows))) if group == "row" else [r.arch for r in rows]
    out = np.zeros(len(rows))
    for g in dict.fromkeys(labels):
        test = [i for i, lab in enumerate(labels) if lab == g]
        train = [r for i, r in enumerate(rows) if labels[i] != g]
        f = fit(train, features, settings, cpu)
        out[test] = predictions(f, [rows[i] for i in test], features)
    return out


def selection_score(rows: Sequence[Row], features: Mapping[str, EdgeTpuFeatures], settings: Settings,
                    cpu: Mapping[str, float]) -> tuple[float, float]:
    """(LOAO median abs error, LOAO mean abs log error): the key the tile and memory are chosen by, least first."""
    pred = loo(rows, features, settings, cpu, "arch")
    y = np.array([r.ms for r in rows])
    return mdape(pred, y), float(np.mean(np.abs(np.log(np.maximum(pred, 1e-6) / y))))


def select_settings(rows: Sequence[Row], features: Mapping[str, EdgeTpuFeatures],
                    tile_macs: Mapping[str, Mapping[int, int]], cpu: Mapping[str, float],
                    tiles: Sequence[int] = SELECT_TILES, caches: Sequence[int] = CACHE_CANDIDATES
                    ) -> tuple[Settings, tuple[float, float]]:
    """The (tile, on-chip memory) of least LOAO error on ``rows`` (ties: the first candidate)."""
    scored = []
    for tile in tiles:
        fs = with_tile(features, tile_macs, tile)
        for cache in caches:
            s = Settings(tile, cache)
            scored.append((selection_score(rows, fs, s, cpu), s))
    score, best = min(scored, key=lambda t: t[0])
    return best, score


def nested_loao(rows: Sequence[Row], features: Mapping[str, EdgeTpuFeatures],
                tile_macs: Mapping[str, Mapping[int, int]], cpu: Mapping[str, float],
                tiles: Sequence[int] = SELECT_TILES, caches: Sequence[int] = CACHE_CANDIDATES
                ) -> tuple[np.ndarray, dict[str, Settings]]:
    """LOAO predictions with the tile and memory chosen inside each fold, on the other architectures only."""
    out = np.zeros(len(rows))
    chosen = {}
    for arch in dict.fromkeys(r.arch for r in rows):
        test = [i for i, r in enumerate(rows) if r.arch == arch]
        train = [r for r in rows if r.arch != arch]
        s, _ = select_settings(train, features, tile_macs, cpu, tiles, caches)
        fs = with_tile(features, tile_macs, s.tile)
        out[test] = predictions(fit(train, fs, s, cpu), [rows[i] for i in test], fs)
        chosen[arch] = s
    return out, chosen


def mdape(pred: Iterable[float], measured: Iterable[float]) -> float:
    """Median absolute percentage error, as a fraction (NaN for no rows)."""
    p, y = np.asarray(list(pred), float), np.asarray(list(measured), float)
    return float(np.median(np.abs(p - y) / y)) if len(y) else float("nan")


def spearman(pred: Sequence[float], measured: Sequence[float]) -> float:
    if len(measured) < 3 or len(set(measured)) < 2:
        return float("nan")
    return float(spearmanr(measured, pred)[0])


def summarize(rows: Sequence[Row], pred: np.ndarray, by: str) -> dict[str, dict[str, float]]:
    """Per ``by`` (host, source, arch) and overall: rows, median abs error, Spearman, median signed error."""
    y = np.array([r.ms for r in rows])
    groups: dict[str, list[int]] = {"all": list(range(len(rows)))}
    for i, r in enumerate(rows):
        groups.setdefault(getattr(r, by), []).append(i)
    return {g: {"rows": len(ix), "mdape": mdape(pred[ix], y[ix]), "spearman": spearman(pred[ix], y[ix]),
                "median_signed": float(np.median((pred[ix] - y[ix]) / y[ix]))} for g, ix in groups.items()}


# --- the shipped constants ----------------------------------------------------------------------------------------


@dataclass
class CalibrationRun:
    """The shipped constants and the out-of-fold predictions behind their error figures."""

    constants: dict
    rows: list[Row]
    features: dict[str, EdgeTpuFeatures]  # at the chosen tile
    fit: Fit
    loo: np.ndarray  # leave-one-row-out predictions (settings fixed)
    loao: np.ndarray  # nested leave-one-architecture-out predictions
    loao_settings: dict[str, Settings]  # the settings each outer fold chose


def calibrate(rows: Sequence[Row] | None = None, features: Mapping[str, EdgeTpuFeatures] | None = None,
              tile_macs: Mapping[str, Mapping[int, int]] | None = None,
              coral: Sequence[dict[str, str]] | None = None) -> CalibrationRun:
    """Settings chosen by LOAO on all rows, the fit on all rows, and per host the rows it rests on with its LOO and
    nested-LOAO errors. Deterministic: refitting the shipped CSVs reproduces the shipped JSON."""
    rows = calibration_rows() if rows is None else list(rows)
    features = read_features_csv() if features is None else features
    tile_macs = read_tile_macs_csv() if tile_macs is None else tile_macs
    coral = read_coral_csv() if coral is None else coral
    cpu = cpu_throughputs(coral, features)
    settings, _ = select_settings(rows, features, tile_macs, cpu)
    fs = with_tile(features, tile_macs, settings.tile)
    full = fit(rows, fs, settings, cpu)
    loo_pred = loo(rows, fs, settings, cpu, "row")
    loao_pred, chosen = nested_loao(rows, features, tile_macs, cpu)
    y = np.array([r.ms for r in rows])
    hosts = {}
    for h, spec in HOSTS.items():
        ix = [i for i, r in enumerate(rows) if r.host == h]
        streams = [i for i in ix if fs[rows[i].key].tpu_param_bytes > settings.cache_bytes]
        cached = [i for i in ix if i not in streams]
        archs = len({rows[i].arch for i in ix})
        facts = {"description": spec.description, "rows": len(ix), "architectures": archs,
                 "streaming_rows": len(streams), "loo_error": mdape(loo_pred[ix], y[ix]),
                 "loao_error": mdape(loao_pred[ix], y[ix]), "loao_spearman": spearman(loao_pred[ix], y[ix]),
                 "too_few_rows": len(ix) < MIN_ROWS or archs < MIN_ARCHITECTURES}
        hosts[h] = {"link": spec.link, "overhead_ms": full.overhead.get(h, 0.0), "cpu_macs_per_ms": cpu[h],
                    "cpu_source": spec.cpu, "rel_error": facts["loao_error"],
                    "rel_error_cached": mdape(loao_pred[cached], y[cached]),
                    "rel_error_streaming": mdape(loao_pred[streams], y[streams]), "facts": facts}
    constants = {
        "format": 2,
        "sources": {"coral_table1": "Coral documentation, 'Edge TPU performance benchmarks', Table 1 "
                                    "(coral_edgetpu_benchmarks.csv)",
                    "public": "edgetpu_public_calibration.csv (four public sources; see its header)"},
        "reference_mhz": REFERENCE_MHZ, "clocks": CLOCKS, "default_clock": "std",
        "array_tile": settings.tile, "cache_bytes": settings.cache_bytes,
        "tpu": {"c": full.c, "b": full.b},
        "links": {k: {"ms_per_byte": d, "ms_per_layer": e} for k, (d, e) in full.links.items()},
        "hosts": hosts, "source_offsets_ms": full.offsets, "rel_error_cpu": cpu_loo_error(coral, features),
        "rows": len(rows), "architectures": len({r.arch for r in rows}),
    }
    return CalibrationRun(constants, rows, fs, full, loo_pred, loao_pred, chosen)


def fit_from_constants(data: Mapping[str, Any], offsets: Mapping[str, float] | None = None) -> Fit:
    """The shipped constants as a ``Fit`` (to predict published rows with their source offsets)."""
    return Fit(settings=Settings(data["array_tile"], data["cache_bytes"]), c=data["tpu"]["c"], b=data["tpu"]["b"],
               links={k: (v["ms_per_byte"], v["ms_per_layer"]) for k, v in data["links"].items()},
               overhead={h: v["overhead_ms"] for h, v in data["hosts"].items()},
               offsets=dict(offsets if offsets is not None else data["source_offsets_ms"]),
               cpu_macs_per_ms={h: v["cpu_macs_per_ms"] for h, v in data["hosts"].items()})


def load_constants(path: str | Path = CONSTANTS_JSON) -> dict:
    return json.loads(Path(path).read_text())


def check_model_matches(data: Mapping[str, Any], features: Mapping[str, EdgeTpuFeatures]) -> float:
    """Largest relative gap between ``EdgeTpuModel`` and ``Fit`` on the zoo at the max clock (both must agree)."""
    fit_ = fit_from_constants(data, offsets={})
    gap = 0.0
    for host in data["hosts"]:
        m = EdgeTpuModel.load(host, "max")
        for f in features.values():
            a, b = m.predict(f).ms, fit_.predict(f, host)
            gap = max(gap, abs(a - b) / b)
    return gap


# --- the compiler's split on int8 TFLite files -------------------------------------------------------------------

# TFLite builtin ops the Edge TPU compiler maps (Coral's supported-operations table, compiler 16). HARD_SWISH is not
# among them (google-coral/edgetpu#272, #353).
EDGETPU_TFLITE_OPS: frozenset[str] = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD",
    "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE",
    "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})


@dataclass(frozen=True)
class TfliteSplit:
    ops: tuple[str, ...]  # the file's ops in execution order
    tpu_ops: int  # the mapped prefix
    first_cpu_op: str  # "" when everything maps

    @property
    def cpu_ops(self) -> int:
        return len(self.ops) - self.tpu_ops

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_ops": self.cpu_ops}


def tflite_split(path: str | Path) -> TfliteSplit:
    """The Edge TPU compiler's single-subgraph split of an int8 TFLite file: the first op it cannot map (or any
    float op) and everything after it run on the CPU."""
    from nas.latency.tflite_convert import interpreter

    it = interpreter(Path(path))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = []
    for op in it._get_ops_details():
        if op["op_name"] == "DELEGATE":  # the interpreter's own XNNPACK delegate nodes, not part of the file
            continue
        floats = any(i >= 0 and tensors[i]["dtype"] == np.float32 for i in [*op["inputs"], *op["outputs"]])
        ops.append((op["op_name"], floats))
    first = next((i for i, (name, floats) in enumerate(ops) if floats or name not in EDGETPU_TFLITE_OPS), len(ops))
    return TfliteSplit(tuple(name for name, _ in ops), first, ops[first][0] if first < len(ops) else "")
