"""Every name a trial leaves in Optuna and MLflow, in one place (as MLflow keeps its tag keys in ``mlflow_tags``).

Code reads and writes these through the constants and functions here, never through literals, so a metric cannot
be renamed by accident in one place and not another.
"""

from __future__ import annotations

# -- Optuna user attributes of a trial ---------------------------------------------------------------------------
ARCH = "arch"  # the Arch as a dict
ARCH_HASH = "arch_hash"
REFERENCE = "reference"  # timm's name, for an enqueued reference
WORKER = "worker"  # host, PID and start time of the process running the trial
RUN_ID = "mlflow_run_id"
TRAIN_RESOLUTION = "train_resolution"
PREDICTED_MS = "predicted_ms"  # the latency predictor's (or the analytic model's) mean
PRIOR_TOP1 = "prior_top1"  # accuracy=train: the ImageNet accuracy model's prediction (rung 0), percent
PRIOR_DOMAIN = "prior_domain"  # accuracy_nasbench | scaled | extrapolated: how far to trust it
REPORT_TOP1 = "report_top1"  # top-1 on the validation half never used to choose (the card's figure)
SKIPPED = "skipped"  # surely over budget by the predictor: COMPLETE in Optuna (so NSGA-II sees it), not measured
PREDICTED_STD_MS = "predicted_std_ms"
LATENCY = "latency"  # LatencyStats as a dict
LATENCY_MS = "latency_ms"  # the budget statistic
PARAMS = "params"
MACS = "macs"
RUNG_TOP1 = "rung_top1"  # {epochs: validation top-1 of the run of that many epochs}, one entry per rung reached
FIDELITY = "fidelity_epochs"  # the highest rung reached: the fidelity of the trial's accuracy
FAIL_REASON = "fail_reason"
TIMES = "times"  # seconds per step
ACCURACY_FP32 = "accuracy_fp32"  # int8 targets: the float model's top-1 beside the deployed one
ACCURACY_STD = "accuracy_std"  # accuracy=imagenet: the prediction's uncertainty (top-1 points)
ACCURACY_DOMAIN = "accuracy_domain"  # accuracy=imagenet: accel_nasbench | scaled | extrapolated
SCREENED = "screened"  # accuracy=imagenet: the pick's screening round (candidates scored, predicted latency, z)

# -- Optuna study attributes -------------------------------------------------------------------------------------
STUDY_NUM_CLASSES = "num_classes"
STUDY_FINGERPRINT = "fingerprint"  # the target set-up every latency of the study was measured on
STUDY_TRACKING = "mlflow"  # the MLflow store and parent run the study's runs live in (redacted URI)
STUDY_COMMAND = "command"  # the overrides of the search that made the study (the model card's reproduce line)
STUDY_WORKERS = "workers"  # the workers that joined the study: host, PID, start time, index (sampler seed offset)
STUDY_EXPORTED = "exported"  # trials finished when the study last exported (the last worker to finish exports)
STUDY_SCREENED = "screened_total"  # accuracy=imagenet: candidates scored on the predictors, all rounds and runs
DUPLICATE_OF = "duplicate_of"  # a trial whose arch the study already had: not measured or trained again

# -- Optuna constraint -------------------------------------------------------------------------------------------
CONSTRAINT = "latency"  # latency - budget: <= 0 is feasible

# -- MLflow metrics ----------------------------------------------------------------------------------------------
ACCURACY = "accuracy"
TRAIN_SECONDS = "train_seconds"
MEASURE_SECONDS = "measure_seconds"
def val_top1_metric(epochs: int) -> str:
    """Per-epoch validation top-1 (step = epoch) of the rung run of ``epochs`` epochs."""
    return f"val_top1_e{epochs}"


def rung_metric(epochs: int) -> str:
    return f"top1_e{epochs}"


REEVAL_MEAN = "reeval_top1_mean"  # the re-evaluation before export: mean over seeds at the top rung
REEVAL_STD = "reeval_top1_std"
REEVAL_SEEDS = "reeval_seeds"
LATENCY_CV = "latency_cv"
LATENCY_CI_LOW = "latency_ci_low_ms"  # 95% bootstrap interval over rounds of the budget statistic
LATENCY_CI_HIGH = "latency_ci_high_ms"
LATENCY_ROUNDS = "latency_rounds"
LATENCY_ROUND_SPREAD = "latency_round_spread"
LATENCY_SETTLED = "latency_settled"  # 1: the interval got within target.tolerance; 0: the time limit came first
PREDICTED_STD_METRIC = "predicted_latency_std_ms"


def latency_metric(statistic: str, predicted: bool) -> str:
    """``latency_p90_ms``, or ``predicted_latency_p90_ms`` where no device ran the model."""
    return f"{'predicted_' if predicted else ''}latency_{statistic}_ms"


# -- MLflow tags -------------------------------------------------------------------------------------------------
STUDY_TAG = "nas.study"
TRIAL_TAG = "nas.trial"
STATE = "state"  # complete | failed | skipped
FEASIBLE = "feasible"
PARETO = "pareto"
LATENCY_SOURCE = "latency_source"  # measured | predicted
LATENCY_CACHED = "latency_cached"
FIDELITY_TAG = "fidelity_epochs"
REEVAL_KEY = "reeval"  # study attribute prefix: reeval:<arch hash>:<epochs>e:<resolution>px -> {seed: top-1}
FINGERPRINT_TAG = "fingerprint"

# -- MLflow review and hand-over (tags MLflow itself reads, and what the export registers) -----------------------
PARENT_RUN = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID
NOTE = "mlflow.note.content"  # mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE: a run's or an experiment's description
LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # mlflow.utils.mlflow_tags.MLFLOW_LOGGED_ARTIFACTS: the run's tables
# The UI picks an experiment's view from this tag (MLflow 3's ExperimentKind): "custom_model_development" opens the
# runs ("Model training"); without it MLflow 3.17 opens the GenAI overview.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
FRONT_TABLE = "pareto/front_table.json"  # the parent run's front as an MLflow table (log_table)
CHAMPION = "champion"  # the registered model's alias for the current export of its budget
TIMM_NAME = "timm_name"  # card key and model-version tag: the name the bundle's timm_register.py registers
TIMM_MODULE = "timm_register.py"  # the bundle's registration module
BUDGET_TAG = "budget_ms"
STATISTIC_TAG = "statistic"
WEIGHTS_TAG = "weights"  # seeded | trained
