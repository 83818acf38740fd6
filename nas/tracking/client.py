"""MLflow tracking in ``workdir``: one parent run per study, one nested run per trial."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from nas.core import names
from nas.core.stores import workdir_lock

STUDY_TAG = "nas.study"


def tracking_uri(workdir: Path, uri: str | None = None) -> str:
    """``tracking.uri``, or the SQLite file in ``workdir`` (the default)."""
    return uri or f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def _reachable(uri: str) -> None:
    """An MLflow tracking server that does not answer is one line, not minutes of retries and a traceback."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    from nas.core.errors import StoreError

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
    except requests.RequestException as e:
        raise StoreError(f"cannot reach the MLflow tracking server at {uri} ({type(e).__name__}); start it with "
                         "`mlflow server`, or leave tracking.uri unset for mlflow.db in the workdir") from None


class Tracker:
    """A thin, explicit wrapper over ``MlflowClient`` (no global active-run state)."""

    def __init__(self, workdir: Path, experiment: str, uri: str | None = None) -> None:
        self.uri = tracking_uri(workdir, uri)
        _reachable(self.uri)
        # Schema creation and migration (tracking and registry stores) must not run in two processes at once.
        with workdir_lock(workdir):
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                # A tracking server keeps its own artifact store; a local store puts them beside mlflow.db.
                artifacts = None if self.uri.startswith("http") else (workdir / "mlartifacts").resolve().as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=artifacts,
                        tags={names.EXPERIMENT_KIND: names.EXPERIMENT_KIND_TRAINING})
                except MlflowException as e:  # another worker on another machine made it a moment ago
                    if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                        raise
                    self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
            else:
                self.experiment_id = exp.experiment_id
                if names.EXPERIMENT_KIND not in exp.tags:  # an older workdir; a kind chosen in the UI is kept
                    self.client.set_experiment_tag(self.experiment_id, names.EXPERIMENT_KIND,
                                                   names.EXPERIMENT_KIND_TRAINING)
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

    def describe(self, run_id: str, text: str) -> None:
        """The run's description (Markdown, shown above its details in the UI)."""
        self.client.set_tag(run_id, names.NOTE, text)

    def describe_experiment(self, text: str) -> None:
        if self.client.get_experiment(self.experiment_id).tags.get(names.NOTE) != text:
            self.client.set_experiment_tag(self.experiment_id, names.NOTE, text)

    def log_table(self, run_id: str, columns: dict[str, list[Any]], name: str) -> None:
        """A table artifact, replaced on each call: the JSON and tag of MLflow's ``log_table`` (which the UI shows
        as a table), without its appending to an existing file (a resumed study would list its front twice)."""
        import json

        rows = [list(r) for r in zip(*columns.values(), strict=True)]
        self.client.log_text(run_id, json.dumps({"columns": list(columns), "data": rows}), name)
        logged = json.loads(self.client.get_run(run_id).data.tags.get(names.LOGGED_ARTIFACTS, "[]"))
        if (entry := {"path": name, "type": "table"}) not in logged:
            self.client.set_tag(run_id, names.LOGGED_ARTIFACTS, json.dumps([*logged, entry]))

    def log_model(self, run_id: str, name: str, tags: dict[str, str], write: Callable[[Path, str], None]) -> str:
        """Log an MLflow Model as an MLflow 3 logged model of ``run_id`` (listed on the run and the experiment's
        Models tab). ``write(path, model_id)`` saves the model's folder; returns the model id."""
        model = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id, tags=tags)
        try:
            with tempfile.TemporaryDirectory(prefix="nas-mlmodel-") as tmp:
                path = Path(tmp) / "model"
                write(path, model.model_id)
                self.client.log_model_artifacts(model.model_id, str(path))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model.model_id

    def register(self, name: str, model_id: str, run_id: str, tags: dict[str, str], description: str,
                 model_description: str, alias: str) -> str:
        """A new version of registered model ``name`` from a logged model, with ``alias`` moved to it; returns the
        version."""
        try:
            self.client.create_registered_model(name, description=model_description)
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            self.client.update_registered_model(name, description=model_description)
        # The logged model's own location as source: a `models:/<id>` source makes MLflow's SQL registry look the
        # model up through the global tracking URI, which this explicit client never sets.
        source = self.client.get_logged_model(model_id).artifact_location
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                              description=description, model_id=model_id)
        self.client.set_registered_model_alias(name, alias, mv.version)
        return mv.version
