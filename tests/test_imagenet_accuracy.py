"""The ImageNet accuracy model: a portable JSON file, predictions with a domain and an uncertainty, the command-line
interfaces other tools call (`nas accuracy eval data=... format=json`, `nas accuracy predict arch=... format=json`)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from nas.predictors.imagenet_accuracy import (
    ANB_CSV,
    TIMM_CSV,
    ImageNetAccuracyModel,
    anb_arch,
    load_default,
    load_timm_archs,
    read_rows,
)
from nas.search_spaces.arch_spec import load_arch
from nas.search_spaces.references import reference_archs
from tests.conftest import last_json, run_nas


@pytest.fixture(scope="module")
def anb_rows():
    return read_rows(ANB_CSV)


def test_a_fitted_model_survives_a_json_round_trip_with_identical_predictions(anb_rows, tmp_path):
    """A real (small) fit, saved as plain JSON and loaded back: the same predictions, bit for bit."""
    model = ImageNetAccuracyModel(n_mlp=2, mlp_hidden=16, gp_subset=60).fit(
        anb_rows[:300], read_rows(TIMM_CSV), load_timm_archs())
    path = model.save(tmp_path / "model.json")
    text = path.read_text()
    assert "pickle" not in text and json.loads(text)["unit"]
    again = ImageNetAccuracyModel.load(path)
    archs = [anb_arch(r) for r in anb_rows[300:340]] + list(reference_archs().values())
    for a, b in zip(model.predict(archs), again.predict(archs), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(model.predict_benchmark(archs)[0], again.predict_benchmark(archs)[0])


def test_shipped_model_knows_its_domain_and_is_less_sure_outside_it(anb_rows):
    model = load_default()
    inside = anb_arch(anb_rows[0])
    scaled = replace(inside, width=0.75, resolution=160)
    outside = reference_archs()["mobilenetv2_100"]  # relu6, other channels
    assert [model.domain(a) for a in (inside, scaled, outside)] == ["accel_nasbench", "scaled", "extrapolated"]
    mean, std = model.predict([inside, scaled, outside])
    assert np.all((mean > 40) & (mean < 90)) and std[0] < std[2]


def test_predicted_top1_rises_with_resolution_and_width(anb_rows):
    """What the search trades against latency must point the right way: more pixels or channels, more accuracy."""
    model = load_default()
    arch = anb_arch(anb_rows[1])
    by_res = model.predict([replace(arch, resolution=r) for r in (128, 160, 192, 224, 256)])[0]
    by_width = model.predict([replace(arch, width=w, resolution=192) for w in (0.5, 0.75, 1.0, 1.25, 1.4)])[0]
    assert np.all(np.diff(by_res) > 0) and np.all(np.diff(by_width) > 0)


def test_published_series_keep_their_order():
    """Held-in sanity: timm's own width and depth/resolution series are predicted in their published order."""
    model = load_default()
    for series in (["mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140"],
                   ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"]):
        top1 = model.predict([load_arch(n) for n in series])[0]
        assert np.all(np.diff(top1) > 0), dict(zip(series, top1, strict=True))


def test_predict_interface_in_and_out_of_domain(anb_rows, tmp_path):
    spec = tmp_path / "arch.json"
    spec.write_text(anb_arch(anb_rows[2]).to_json())
    res = run_nas("accuracy", "predict", f"arch={spec}", "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    inside = last_json(res.stdout)
    assert inside["domain"] == "accel_nasbench" and inside["std"] > 0 and 40 < inside["top1"] < 90
    res = run_nas("accuracy", "predict", "arch=mobilenetv2_140", "resolution=192", "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["domain"] == "extrapolated" and out["resolution"] == 192 and out["std"] > inside["std"]


def test_an_inexpressible_or_unknown_model_is_one_line_exit_1():
    for name, words in (("mobilenetv4_conv_small", "cannot be expressed as an Arch"),
                        ("efficientnet_b9", "unknown timm model")):
        res = run_nas("accuracy", "predict", f"arch={name}", "format=json")
        assert res.returncode == 1 and res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and name in lines[0]


def test_eval_interface_reads_the_benchmark_format(anb_rows, tmp_path):
    """`nas accuracy eval data=CSV format=json`: '#' lines are comments; the last stdout line is the summary."""
    header = next(ln for ln in ANB_CSV.read_text().splitlines() if not ln.startswith("#"))
    cols = header.split(",")
    csv = tmp_path / "rows.csv"
    csv.write_text("# a comment\n" + header + "\n" + "\n".join(",".join(r[c] for c in cols) for r in anb_rows[:40]))
    res = run_nas("accuracy", "eval", f"data={csv}", "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert set(out) == {"kendall_tau", "spearman", "mae", "n"} and out["n"] == 40
    assert out["kendall_tau"] > 0.8  # rows the shipped model was fitted on: this checks the interface, not fidelity
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4\n")
    res = run_nas("accuracy", "eval", f"data={bad}")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
