"""Every wrong input ends in one clear line on stderr, a non-zero exit, and nothing written."""

import pytest

from tests.conftest import run_nas


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("budget_ms=-1", "budget_ms=-1.0 must be a positive number"),
        ("budget_ms=abc", "budget_ms"),
        ("target=nope", "target/nope"),
        ("foo=1", "foo"),
        ("target.statistic=p42", "target.statistic: Invalid value 'p42', expected one of [p50, p90"),
        ("target.precision=fp64", "target.precision: Invalid value 'fp64'"),
        ("target=nope", "Available options in 'target': cpu, cuda, edge_tpu, openvino, remote, tflite_cpu, tvm"),
        ("study.sampler=grid", "study.sampler=grid"),
        # Values that used to pass validation and fail late (after measuring) or with a traceback:
        ("study.train_threads=-1", "study.train_threads=-1 must be >= 1"),
        ("search_space.choices.kernel=[0]", "search_space.choices.kernel has 0"),
        ("search_space.choices.depth=[0]", "search_space.choices.depth has 0"),
        ("predictor.kind=kernel_summ", "predictor.kind=kernel_summ must be one of kernel_sum, lut"),
        ("study.latency_classes=[]", "study.latency_classes=[] leaves no class"),
        # A typo names the closest key, and a key the schema lacks cannot be appended with `+`:
        ("budjet_ms=5", "unknown key 'budjet_ms'; did you mean budget_ms?"),
        ("study.n_trails=3", "did you mean study.n_trials"),
        ("+budjet_ms=5", "unknown key 'budjet_ms'"),
        ("+study.xyz=1", "unknown key 'study.xyz'"),
    ],
)
def test_bad_override_is_one_line_exit_2_nothing_written(tmp_path, override, expect):
    wd = tmp_path / "wd"
    res = run_nas("search", override, f"workdir={wd}", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("nas search: error:") and expect in lines[0]
    assert "+" not in lines[0].split("error:", 1)[1].replace("(no `+key=`)", "")  # never advises appending a key
    assert not wd.exists()
    assert list(tmp_path.iterdir()) == []  # no Hydra outputs/ folder either


def test_no_command_lists_commands_and_exits_2():
    res = run_nas()
    assert res.returncode == 2
    assert "search" in res.stderr and "export" in res.stderr and "measure" in res.stderr


def test_unknown_command_exits_2():
    res = run_nas("serach")
    assert res.returncode == 2
    assert "unknown command 'serach'" in res.stderr


def test_hydra_flags_still_work(tmp_path):
    res = run_nas("search", "--cfg", "job", "budget_ms=7", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "budget_ms: 7" in res.stdout
    assert "search_space:" in res.stdout


def test_command_help_says_what_it_does_with_an_example(tmp_path):
    res = run_nas("search", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0].startswith("nas search: search") and "budget" in out[0]
    assert any(ln.startswith("example: nas search target=") for ln in out)
    assert "_schema" not in res.stdout and len(out) < 30
    hydra = run_nas("search", "--help-hydra", cwd=tmp_path)  # Hydra's full page stays reachable
    assert hydra.returncode == 0 and "Configuration groups" in hydra.stdout


def test_missing_imagefolder_is_one_line(tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", "accuracy=train", "dataset=imagefolder", f"dataset.path={tmp_path / 'nope'}",
                  f"workdir={wd}")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("nas search: error: dataset.path=")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not wd.exists()


@pytest.mark.parametrize("override", ["dataset=elpv", "study.epochs=3"])
def test_a_training_setting_without_accuracy_train_is_refused_not_ignored(override, tmp_path):
    """The default accuracy=imagenet trains nothing: a dataset or training setting named with it is one line."""
    wd = tmp_path / "wd"
    res = run_nas("search", override, f"workdir={wd}")
    assert res.returncode == 2
    assert res.stderr.strip() == (f"nas search: error: {override} only applies to accuracy=train (training on a "
                                  "dataset); the default accuracy=imagenet predicts ImageNet top-1 and trains nothing: "
                                  "add accuracy=train")
    assert not wd.exists()


def test_export_without_a_study_is_one_line(tmp_path):
    res = run_nas("export", f"workdir={tmp_path / 'wd'}", "budget_ms=3")
    assert res.returncode == 1
    assert "no study in workdir" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_reading_the_configuration_loads_no_torch_timm_or_mlflow(tmp_path):
    """`nas search --cfg job`, `--help` and a bad override answer from the schema alone (fast: no heavy imports)."""
    import subprocess
    import sys

    code = ("import sys\nfrom nas.cli.main import main\n"
            "for argv in (['search', '--cfg', 'job'], ['search', 'budjet_ms=5'], ['--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'timm', 'mlflow', 'onnxruntime', 'scipy') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_export_refuses_to_merge_studies_of_different_set_ups(tmp_path):
    """Two studies under one prefix (two budgets) measured on different machines' set-ups are not one front; the
    export says so in one line, writes nothing, and names the way out (study.name=)."""
    import optuna

    wd = tmp_path / "wd"
    wd.mkdir()
    storage = f"sqlite:///{wd / 'optuna.db'}"
    for budget, threads in ((10, 1), (8, 2)):
        s = optuna.create_study(study_name=f"cpu-mbconv-imagenet-{budget}ms", storage=storage,
                                directions=["maximize", "minimize"])
        s.set_user_attr("fingerprint", {"device": "cpu", "threads": threads})
        s.set_user_attr("num_classes", 1000)
    res = run_nas("export", f"workdir={wd}", "budget_ms=9", cwd=tmp_path)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "different set-ups" in lines[0] and "study.name=" in lines[0], res.stderr
    assert not (wd / "exports").exists()
