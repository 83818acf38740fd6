"""``nas <command> [overrides]``: a small dispatcher in front of one ``@hydra.main`` per command.

Hydra keeps ``--help``, ``--cfg job`` and ``-m`` working. Before Hydra runs, the overrides are composed once
and validated against the structured configs, so a wrong override ends in one line and exit 2, with nothing
written.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nas import builtins
from nas.core.errors import NasError

CONF = "pkg://nas.conf"
COMMANDS = {
    "search": "search (sample, measure, train, track) and export the best model for the budget",
    "export": "export the best stored trial for budget_ms=X without searching again",
    "measure": "measure one model: arch=NAME|arch.json or model=path.onnx",
    "predictor fit": "measure diverse archs and fit a latency predictor for the target",
    "predictor eval": "test the target's predictor on fresh held-out archs (RMSE, MAPE, ±5/±10%, Kendall tau)",
    "agent": "serve measurements on this device over HTTP (for target=remote)",
    "runtimes": "which CPU runtime runs arch=NAME fastest here: p50/p90 under each one installed",
    "accuracy predict": "predicted ImageNet top-1 of arch=NAME|arch.json (any timm MobileNet/EfficientNet)",
    "accuracy eval": "the accuracy model against data=CSV (Accel-NASBench format): Kendall tau, Spearman, MAE",
    "accuracy fit": "fit the ImageNet accuracy model on the shipped data (out=FILE)",
}
CONFIG_OF = {"search": "search", "export": "export", "measure": "measure", "predictor fit": "predictor",
             "predictor eval": "predictor", "agent": "agent", "runtimes": "runtimes",
             "accuracy predict": "accuracy_cmd", "accuracy eval": "accuracy_cmd", "accuracy fit": "accuracy_cmd"}



def _run(command: str, cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from nas.cli import commands, policy

    policy.configure()

    try:
        typed = OmegaConf.to_object(cfg)
        typed.overrides = list(HydraConfig.get().overrides.task)  # the model card's reproduce line
        code = getattr(commands, command.replace(" ", "_"))(typed)
    except NasError as e:
        print(f"nas {command}: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print(f"nas {command}: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:
        if (store := store_failure(e)) is None:
            raise  # a bug: the traceback is what a maintainer needs
        print(f"nas {command}: error: {store}", file=sys.stderr)
        code = 1
    if code:
        sys.exit(code)


@hydra.main(config_path=CONF, config_name="search", version_base=None)
def search_main(cfg: DictConfig) -> None:
    _run("search", cfg)


@hydra.main(config_path=CONF, config_name="export", version_base=None)
def export_main(cfg: DictConfig) -> None:
    _run("export", cfg)


@hydra.main(config_path=CONF, config_name="measure", version_base=None)
def measure_main(cfg: DictConfig) -> None:
    _run("measure", cfg)


@hydra.main(config_path=CONF, config_name="predictor", version_base=None)
def predictor_fit_main(cfg: DictConfig) -> None:
    _run("predictor fit", cfg)


@hydra.main(config_path=CONF, config_name="predictor", version_base=None)
def predictor_eval_main(cfg: DictConfig) -> None:
    _run("predictor eval", cfg)


@hydra.main(config_path=CONF, config_name="agent", version_base=None)
def agent_main(cfg: DictConfig) -> None:
    _run("agent", cfg)


@hydra.main(config_path=CONF, config_name="runtimes", version_base=None)
def runtimes_main(cfg: DictConfig) -> None:
    _run("runtimes", cfg)


@hydra.main(config_path=CONF, config_name="accuracy_cmd", version_base=None)
def accuracy_fit_main(cfg: DictConfig) -> None:
    _run("accuracy fit", cfg)


@hydra.main(config_path=CONF, config_name="accuracy_cmd", version_base=None)
def accuracy_eval_main(cfg: DictConfig) -> None:
    _run("accuracy eval", cfg)


@hydra.main(config_path=CONF, config_name="accuracy_cmd", version_base=None)
def accuracy_predict_main(cfg: DictConfig) -> None:
    _run("accuracy predict", cfg)


MAINS: dict[str, Callable[[], None]] = {
    "search": search_main, "export": export_main, "measure": measure_main, "predictor fit": predictor_fit_main,
    "predictor eval": predictor_eval_main, "agent": agent_main, "runtimes": runtimes_main,
    "accuracy fit": accuracy_fit_main, "accuracy eval": accuracy_eval_main, "accuracy predict": accuracy_predict_main,
}


def validate_overrides(command: str, overrides: list[str]) -> str | None:
    """Compose the command's config with ``overrides``; the error as one line, or None when valid."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="nas.conf", version_base=None):
            try:
                cfg = compose(config_name=CONFIG_OF[command], overrides=overrides)
                OmegaConf.to_object(cfg)
                if added := [o for o in overrides if o.startswith("+")]:  # Hydra appends keys the schema lacks
                    plain = compose(config_name=CONFIG_OF[command], overrides=[o for o in overrides if o not in added])
                    if extra := sorted(set(_keys(cfg)) - set(_keys(plain))):
                        return f"unknown key {extra[0]!r}: `nas` accepts only the keys of its schema (no `+key=`)"
            except Exception as e:  # Hydra and OmegaConf raise many types; read the key from OmegaConf's own error
                return _one_line(e, lambda: compose(config_name=CONFIG_OF[command]))
    finally:
        GlobalHydra.instance().clear()
    return None


def store_failure(e: BaseException) -> str | None:
    """One line for a store that failed under a command (a damaged or locked SQLite file, a lost database server),
    or None when ``e`` is not a store's failure."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    from nas.core.errors import first_line

    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, sqlite3.DatabaseError | DBAPIError):
            return (f"a store failed: {first_line(seen)}; check the workdir's optuna.db, mlflow.db and "
                    "measurements.db (restore a damaged one from a backup, or set workdir= to another folder)")
        seen = seen.__cause__ or seen.__context__
    return None


def _one_line(e: Exception, base: Callable[[], DictConfig] | None = None) -> str:
    """One line for a bad override. OmegaConf's exceptions carry the key (``full_key``); an unknown key gets the
    closest known keys (from ``base()``, the command's config without overrides), never Hydra's advice to append
    it with ``+`` (the schema would refuse it, or worse, a typo would run silently)."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    err = next((c for c in _chain(e) if isinstance(c, OmegaConfBaseException) and getattr(c, "full_key", None)), None)
    if isinstance(err, ConfigKeyError | AttributeError) and base is not None:
        key = str(err.full_key)
        close = difflib.get_close_matches(key, _keys(base()), n=3, cutoff=0.6)
        hint = (f"; did you mean {' or '.join(close)}?" if close
                else " (see `nas <command> --cfg job` for the valid keys)")
        return f"unknown key {key!r}{hint}"
    if err is not None and getattr(err, "msg", None):
        msg = str(err.msg).strip().splitlines()[0]
        return msg if str(err.full_key) in msg else f"{err.full_key}: {msg}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("To append")]
    if any("Available options in" in ln for ln in lines):  # a wrong group option: list the real choices only
        i = next(i for i, ln in enumerate(lines) if "Available options in" in ln)
        end = next((j for j, ln in enumerate(lines) if ln.startswith("Config search path")), len(lines))
        options = [ln for ln in lines[i + 1:end] if not ln.endswith("_schema")]
        lines = [*lines[:i], f"{lines[i].rstrip(':')}: {', '.join(options)}"]
    return "; ".join(lines) or type(e).__name__


def _chain(e: BaseException | None) -> list[BaseException]:
    out = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (``budget_ms``, ``study.n_trials``, ...)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)  # plain dicts; ??? and ${...} stay unread
    out = []
    for k, v in cfg.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, dict):
            out += _keys(v, f"{prefix}{k}.")
    return out


# `nas <command> --help`: what the command does, its main options and an example; Hydra's own page (every group,
# internal schemas included) stays behind `--help-hydra`.
OPTIONS = {
    "search": ("target=cpu|tflite_cpu|openvino|tvm|cuda|edge_tpu|remote  the device and runtime measured\n"
               "budget_ms=10          the latency budget (target.statistic: p90 by default)\n"
               "accuracy=imagenet     predicted ImageNet top-1 (default) | accuracy=train dataset=NAME: trained\n"
               "search_space=mbconv   mbconv (default) | mnasnet | accel_nasbench\n"
               "study.n_trials=16     candidates measured by this run (a re-run adds more: it resumes)\n"
               "workdir=nas-workdir   where the studies, measurements, MLflow runs and exports live",
               "nas search target=edge_tpu budget_ms=10"),
    "export": ("budget_ms=8           the budget to answer from the stored front (same target and space keys)",
               "nas export budget_ms=8"),
    "measure": ("arch=NAME|arch.json | model=path.onnx   what to measure; target=... as for search",
                "nas measure arch=mobilenetv2_100 target=cpu"),
    "accuracy predict": ("arch=NAME|arch.json   a timm model name or an exported arch.json",
                         "nas accuracy predict arch=mnasnet_100"),
    "predictor fit": ("target=...  n_samples=200   the set-up to fit for, and how many archs to measure",
                      "nas predictor fit target=cpu n_samples=200"),
    "runtimes": ("arch=NAME   runtimes=[onnxruntime,openvino,tvm,litert]", "nas runtimes arch=mobilenetv2_100"),
}


def command_help(command: str) -> str:
    opts, example = OPTIONS.get(command, ("", f"nas {command} --cfg job"))
    body = "\n".join(f"  {ln}" for ln in opts.splitlines())
    return (f"nas {command}: {COMMANDS[command]}\n\n" + (f"main options:\n{body}\n\n" if body else "")
            + f"example: {example}\n\nevery key and its value: nas {command} --cfg job;"
            f" Hydra's own page: nas {command} --help-hydra; the docs: docs/usage.md, docs/configuration.md")


def usage() -> str:
    rows = "\n".join(f"  {name:<17} {text}" for name, text in COMMANDS.items())
    return (f"usage: nas <command> [key=value ...] [--help | --cfg job | -m]\n\ncommands:\n{rows}\n\n"
            "example: nas search target=cpu budget_ms=5 study.n_trials=20")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["predictor"], ["accuracy"]) and len(args) > 1:  # two-word commands
        args = [f"{args[0]} {args[1]}", *args[2:]]
    if not args or args[0] in ("-h", "--help", "help") or args[0] not in MAINS:
        if args and args[0] not in ("-h", "--help", "help"):
            print(f"nas: unknown command {args[0]!r}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        sys.exit(2)
    command, rest = args[0], args[1:]
    try:
        builtins.register()  # built-in parts and plugins: a plugin that cannot be imported is one line
    except NasError as e:
        print(f"nas {command}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    if any(a in ("-h", "--help") for a in rest):
        print(command_help(command))
        sys.exit(0)
    rest = ["--help" if a == "--help-hydra" else a for a in rest]
    if not any(a.startswith("-") for a in rest):  # flags (--help, -m, --cfg) go to Hydra untouched
        error = validate_overrides(command, rest)
        if error:
            print(f"nas {command}: error: {error}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [f"nas-{command.replace(' ', '-')}", *rest]
    MAINS[command]()


if __name__ == "__main__":
    main()
