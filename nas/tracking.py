"""MLflow tracking in ``workdir``: one parent run per study, one nested run per trial."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

for _name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
    logging.getLogger(_name).setLevel(logging.ERROR)
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from nas.stores import workdir_lock  # noqa: E402

STUDY_TAG = "nas.study"


def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


class Tracker:
    """A thin, explicit wrapper over ``MlflowClient`` (no global active-run state)."""

    def __init__(self, workdir: Path, experiment: str) -> None:
        self.uri = tracking_uri(workdir)
        # Schema creation and migration (tracking and registry stores) must not run in two processes at once.
        with workdir_lock(workdir):
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                artifacts = (workdir / "mlartifacts").resolve().as_uri()
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
            else:
                self.experiment_id = exp.experiment_id
            self.client.search_registered_models(max_results=1)

    def find_study_run(self, study_name: str) -> str | None:
        """The study's parent run, if one exists. Trial runs carry the study tag too: only a run named after the
        study and without a parent qualifies."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=50, order_by=["attributes.start_time ASC"],
            filter_string=f"tags.`{STUDY_TAG}` = '{study_name}' AND attributes.run_name = '{study_name}'")
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        return parents[0].info.run_id if parents else None

    def study_run(self, study_name: str, tags: dict[str, str]) -> str:
        """The study's parent run: reused when the study is resumed."""
        run_id = self.find_study_run(study_name)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=study_name, tags={STUDY_TAG: study_name, **tags})
        return run.info.run_id

    def trial_run(self, parent_id: str, study_name: str, number: int, params: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:04d}", tags={
            "mlflow.parentRunId": parent_id, STUDY_TAG: study_name, "nas.trial": str(number)})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def log(self, run_id: str, metrics: dict[str, float] | None = None, tags: dict[str, Any] | None = None,
            step: int = 0) -> None:
        """Metrics and tags in one batch (one database transaction)."""
        import time

        ts = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, step) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def fail_run(self, run_id: str, reason: str) -> None:
        """Close a trial run whose worker is gone, saying so; a run already closed is left as it is."""
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.log(run_id, tags={"state": "failed", "fail_reason": reason, "feasible": "false", "pareto": "false"})
            self.end(run_id, "FAILED")

    def register(self, name: str, run_id: str, artifact_path: str, tags: dict[str, str]) -> str:
        """Register the logged bundle as a new version of model ``name``; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # already registered: add a version
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        return mv.version
