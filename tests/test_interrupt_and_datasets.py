"""Ctrl-C keeps finished trials; the imagefolder dataset loads a class-per-folder tree."""

import json
import os
import signal
import subprocess

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nas.config import DatasetConfig
from nas.core.errors import DatasetError
from nas.data.datasets import ImageFolderConfig, load_dataset
from nas.data.images import balanced_sample
from tests.conftest import FAST, nas_bin, run_nas


def test_ctrl_c_keeps_finished_trials_and_resumes(tmp_path):
    wd = tmp_path / "wd"
    # As in a terminal: a runner started in the background (no job control) ignores SIGINT, and children inherit it.
    proc = subprocess.Popen([nas_bin(), "search", f"workdir={wd}", "study.n_trials=50", *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("[  2/50]"):
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert "interrupted" in out
    study = optuna.load_study(study_name="cpu-mbconv-digits-10ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2
    assert optuna.trial.TrialState.RUNNING not in states
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("nas").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs)
    kept = len(study.trials)
    res = run_nas("search", f"workdir={wd}", "study.n_trials=1", *FAST)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{kept} trial(s) stored" in res.stdout


def _write_images(root, n_per_class=10, size=20):
    rng = np.random.default_rng(0)
    for c, level in (("cats", 40), ("dogs", 210)):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            px = np.clip(rng.normal(level, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.png")


def test_imagefolder_loads_resized_rgb_stratified(tmp_path):
    _write_images(tmp_path / "imgs")
    data = load_dataset(ImageFolderConfig(path=str(tmp_path / "imgs")), 24).at(24)
    assert data.num_classes == 2
    x, _y = next(iter(data.train_batches(64, torch.Generator().manual_seed(0))))
    assert tuple(x.shape) == (16, 3, 24, 24) and data.n_train == 16  # streamed, cropped to the resolution
    x_val, y_val = data.validation_arrays(part="all")
    assert x_val.shape == (4, 3, 24, 24) and sorted(y_val.tolist()) == [0, 0, 1, 1]  # stratified
    _, y_select = data.validation_arrays()  # choices read one stratified half
    assert sorted(y_select.tolist()) == [0, 1]


def test_int8_calibration_images_come_from_every_class(tmp_path):
    """The calibration sample is seeded and class-balanced: not the first class's folder (cats, dark) alone."""
    _write_images(tmp_path / "imgs")
    data = load_dataset(ImageFolderConfig(path=str(tmp_path / "imgs")), 24).at(24)
    calib = data.calibration(8)
    assert calib.shape == (8, 3, 24, 24)
    bright = (calib.mean(axis=(1, 2, 3)) > 0).sum()  # normalised: dogs (bright) above the mean, cats below
    assert bright == 4
    assert np.array_equal(calib, data.calibration(8))  # seeded: the same images each time
    digits = load_dataset(DatasetConfig(), 16).at(16)
    labels = digits.y_train.numpy()[balanced_sample(digits.y_train.numpy(), 64)]
    assert np.bincount(labels, minlength=10).min() >= 6  # 64 images over 10 classes: 6 or 7 each


def test_imagefolder_with_one_class_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DatasetError, match="class folder"):
        load_dataset(ImageFolderConfig(path=str(tmp_path)), 16)


def test_search_on_an_imagefolder(tmp_path):
    _write_images(tmp_path / "imgs")
    wd = tmp_path / "wd"
    res = run_nas("search", "dataset=imagefolder", f"dataset.path={tmp_path / 'imgs'}", "dataset.proxy_scale=0.25",
                  "dataset.min_resolution=16",  # the 96 px default (a 3x3 last stage) is tested in test_training
                  f"workdir={wd}", "study.n_trials=1", "search_space.enqueue_references=false", "budget_ms=1000",
                  *[o for o in FAST if not o.startswith("dataset.")])
    assert res.returncode == 0, res.stderr[-2000:]
    card = json.loads((wd / "exports" / "cpu-1000ms" / "model_card.json").read_text())
    # Trained on the folder's two classes, at the proxy's resolution, and the card says so.
    assert card["num_classes"] == 2 and card["accuracy_dataset"].startswith("imagefolder at 16px")
    assert card["train_resolution"] == 16
