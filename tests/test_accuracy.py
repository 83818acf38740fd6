"""The accuracy side: training resolution from the deployment resolution, successive-halving rungs, the
re-evaluated winner, the datasets' failure lines, and training on a GPU where there is one."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nas.accuracy.reeval import Reevaluation, pick, ranked
from nas.accuracy.train import Recipe, resolve_device, train_run
from nas.config import DatasetConfig
from nas.core.arch import Arch
from nas.core.errors import ConfigError, DatasetError
from nas.core.records import TrialRecord
from nas.data.datasets import ElpvConfig, ImageFolderConfig, load_dataset, train_resolution
from nas.search.trial import latency_class, promoted
from nas.search_spaces.references import reference_archs
from tests.conftest import FAST, run_nas


def test_training_resolution_follows_the_deployment_resolution():
    digits = DatasetConfig()
    assert train_resolution(224, digits.proxy_scale, digits.min_resolution) == 32
    assert train_resolution(128, digits.proxy_scale, digits.min_resolution) == 18
    assert train_resolution(64, digits.proxy_scale, digits.min_resolution) == 16  # floored
    data = load_dataset(digits, 32)
    assert data.at(18).x_train.shape[-1] == 18 and data.at(32).x_train.shape[-1] == 32
    assert data.at(18).x_train.shape[1] == 3


def test_successive_halving_promotes_the_best_fraction_and_stops_the_rest():
    peers = [0.50, 0.60, 0.70, 0.80, 0.90]
    assert promoted(0.95, peers, 0.34)  # best of six: promoted
    assert promoted(0.85, peers, 0.34)  # second of six: ceil(6 x 0.34) = 3 go on
    assert not promoted(0.55, peers, 0.34)  # stopped
    assert promoted(0.1, [], 0.34)  # the first of its class has nobody to lose to


def test_latency_classes_are_fractions_of_the_budget():
    edges = [0.5, 0.8, 1.0]
    assert [latency_class(ms, 10.0, edges) for ms in (2, 6, 9, 10, 10.5)] == [0, 1, 2, 2, 3]


def _record(number: int, latency: float, accuracy: float, fidelity: int) -> TrialRecord:
    arch = reference_archs()["mobilenetv2_100"]
    return TrialRecord("s", number, "complete", arch, accuracy, latency, None, None, None, None, None,
                       {"fidelity_epochs": fidelity, "train_resolution": 32})


def test_ranking_never_puts_a_lower_fidelity_first():
    low, high = _record(0, 5.0, 0.95, 1), _record(1, 5.0, 0.80, 9)
    assert [r.number for r in ranked([low, high], 10.0)] == [1, 0]


def test_the_reevaluation_picks_the_faster_of_two_tied_candidates():
    slow, fast = _record(0, 9.0, 0.9, 9), _record(1, 4.0, 0.9, 9)
    a = Reevaluation(slow, 9, 32, {0: 0.95, 1: 0.93, 2: 0.97})  # mean 0.950, se 0.0115
    b = Reevaluation(fast, 9, 32, {0: 0.94, 1: 0.945, 2: 0.935})  # mean 0.940: within one se of a
    c = Reevaluation(_record(2, 3.0, 0.9, 9), 9, 32, {0: 0.80, 1: 0.81, 2: 0.79})  # clearly worse
    winner, tied = pick([a, b, c])
    assert winner is b and {t.record.number for t in tied} == {0, 1}
    d = Reevaluation(fast, 9, 32, {0: 0.90, 1: 0.905, 2: 0.895})  # not within one se: the better mean wins
    assert pick([a, d])[0] is a


def test_a_missing_elpv_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)
    with pytest.raises(DatasetError, match=r"pip install 'nas\[elpv\]'"):
        load_dataset(ElpvConfig(), 32)


def test_elpv_loads_when_installed():
    pytest.importorskip("elpv_dataset", reason="elpv-dataset is an extra: pip install '.[elpv]'")
    data = load_dataset(ElpvConfig(), 32)
    assert data.num_classes == 4 and len(data.y_train) + len(data.y_val) == 2624
    assert data.at(32).x_train.shape[1:] == (3, 32, 32)


def _tree(root, classes=("ok", "bad"), n=6, size=20):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_an_image_folder_streams_at_each_resolution(tmp_path):
    _tree(tmp_path / "imgs")
    data = load_dataset(ImageFolderConfig(path=str(tmp_path / "imgs"), workers=0), 24)
    splits = data.at(16)
    x, y = next(iter(splits.train_batches(4, torch.Generator().manual_seed(0))))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64
    xv, yv = splits.validation_arrays()
    assert xv.shape[1:] == (3, 16, 16) and len(xv) == len(yv) == 2  # 20% of 6 per class


@pytest.mark.parametrize(("setup", "expect"), [
    ("empty", "find any class folder"),
    ("one_class", "1 class folder(s)"),
    ("corrupt", "cannot read"),
])
def test_a_broken_image_folder_is_one_line(tmp_path, setup, expect):
    root = tmp_path / "imgs"
    root.mkdir()
    if setup == "one_class":
        _tree(root, classes=("only",))
    elif setup == "corrupt":
        _tree(root)
        (root / "ok" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    wd = tmp_path / "wd"
    res = run_nas("search", "dataset=imagefolder", f"dataset.path={root}", f"workdir={wd}", "study.n_trials=1",
                  *[o for o in FAST if not o.startswith("dataset.")])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr[-2000:]
    assert not wd.exists()  # nothing written


def test_study_device_cuda_without_a_gpu_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the GPU training path is not run here")
def test_training_on_the_gpu_matches_the_cpu_in_kind():
    arch: Arch = reference_archs(resolution=64)["mobilenetv3_small_100"]
    data = load_dataset(DatasetConfig(), 16).at(16)
    gpu = train_run(arch, data, 2, 0, Recipe(device="cuda"))
    cpu = train_run(arch, data, 2, 0, Recipe(device="cpu"))
    assert gpu.epochs == cpu.epochs == 2 and gpu.top1 > 0.3  # chance is 0.1
    assert abs(gpu.top1 - cpu.top1) < 0.25  # mixed precision: close, not identical


def test_a_short_training_beats_chance_by_far():
    """Three epochs of digits at 32 px (chance: 10 classes, top-1 0.1): a training loop that learns reaches 0.8-0.9
    here; a broken one (labels shuffled against images, a frozen network, a wrong loss) stays near 0.1."""
    arch = reference_archs(resolution=32)["mobilenetv3_small_100"]
    run = train_run(arch, load_dataset(DatasetConfig(), 32).at(32), 3, 0, Recipe())
    assert run.top1 > 0.5
