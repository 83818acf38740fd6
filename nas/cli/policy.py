"""The process's logging and warning policy, set once by the entry point (the CLI, the test suite), never on import."""

from __future__ import annotations

import logging
import os
import warnings

# Libraries whose INFO/WARNING lines repeat what our progress lines say once per candidate: Optuna's per-trial
# lines, MLflow's store migrations and the warning mlflow.pytorch gives on every pickled model (the export pickles
# on purpose, see nas/export/model.py), ONNX Runtime's quantizer (which logs through the root logger).
QUIET = ("alembic", "mlflow", "mlflow.store", "mlflow.tracking", "mlflow.pytorch", "onnxruntime.quantization", "root")


def configure() -> None:
    """Quiet the libraries above, MLflow's synchronous logging without progress bars, Optuna at ERROR."""
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per bundle file otherwise
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
