"""``nas <command> [overrides]``: a small dispatcher in front of one ``@hydra.main`` per command.

Hydra keeps ``--help``, ``--cfg job`` and ``-m`` working. Before Hydra runs, the overrides are composed once
and validated against the structured configs, so a wrong override ends in one line and exit 2, with nothing
written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

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
            cfg = compose(config_name=CONFIG_OF[command], overrides=overrides)
        OmegaConf.to_object(cfg)
    except Exception as e:  # Hydra and OmegaConf raise many types; the message is what matters
        return _one_line(e)
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


def _one_line(e: Exception) -> str:
    # Hydra wraps OmegaConf's error ("Invalid value 'x', expected one of [...]", with its key) in its own.
    cause = e.__cause__ if e.__cause__ is not None and "Error merging override" in str(e) else e
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
    keep = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    if any("Available options in" in ln for ln in keep):  # a wrong group option: list the real choices only
        i = next(i for i, ln in enumerate(keep) if "Available options in" in ln)
        end = next((j for j, ln in enumerate(keep) if ln.startswith("Config search path")), len(keep))
        options = [ln for ln in keep[i + 1:end] if not ln.endswith("_schema")]
        keep = [*keep[:i], f"{keep[i].rstrip(':')}: {', '.join(options)}"]
    msg = "; ".join(keep) or type(e).__name__
    if key and key not in msg:
        msg = f"{key}: {msg}"
    if "is not in struct" in msg or "not found in" in msg:
        msg += " (see `nas <command> --cfg job` for the valid keys)"
    return msg


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
    if not any(a.startswith("-") for a in rest):  # flags (--help, -m, --cfg) go to Hydra untouched
        error = validate_overrides(command, rest)
        if error:
            print(f"nas {command}: error: {error}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [f"nas-{command.replace(' ', '-')}", *rest]
    MAINS[command]()


if __name__ == "__main__":
    main()
