"""What a person reviewing a search in the MLflow UI reads: the experiment's and the study run's descriptions
(MLflow renders them as Markdown above the runs) and the Pareto front as an MLflow table."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from nas.core import names
from nas.core.records import TrialRecord, pareto_front, state_counts

FILTER_FRONT = f'tags.{names.PARETO} = "true"'
FILTER_FEASIBLE = f'tags.{names.FEASIBLE} = "true"'


def runs_link(experiment_id: str, search: str, chart: bool = False) -> str:
    """A link (relative to the UI's root page) to the experiment's runs in the model-training view, filtered and
    sorted by accuracy. MLflow 3.17 picks the view from the sidebar's GenAI / Model training switch (kept in the
    browser), not from the experiment's kind tag; ``workflowType`` in the link sets it. Sorting by a metric lists
    trials as rows of their own instead of folded under the study run."""
    query = {"workflowType": "machine_learning", "searchFilter": search,
             "orderByKey": f"metrics.`{names.ACCURACY}`", "orderByAsc": "false",
             **({"compareRunsMode": "CHART"} if chart else {})}
    return f"#/experiments/{experiment_id}/runs?{urlencode(query)}"


def experiment_note(experiment: str, experiment_id: str) -> str:
    front, chart = runs_link(experiment_id, FILTER_FRONT), runs_link(experiment_id, FILTER_FRONT, chart=True)
    return f"""**`nas search` (latency-budgeted architecture search): the runs are in the Model training view** \
([Pareto front]({front}), [its charts]({chart}), [every trial]({runs_link(experiment_id, "")})).

- One parent run per study, named after it (`<target>-<space>-<dataset>-<budget>ms`), with the Pareto plot
  (`pareto/*.png`), the front as a table (`{names.FRONT_TABLE}`) and the export bundle (`export/`).
- One nested run per trial (`trial-0007`): the architecture's choices as params (`family`, `width`, `resolution`,
  `s<i>_kernel`, ...), metrics `{names.ACCURACY}` (top-1 at the fidelity the trial reached, `{names.FIDELITY}`) and
  `latency_<statistic>_ms` (`predicted_latency_<statistic>_ms` where no device ran the model), tags
  `{names.PARETO}`, `{names.FEASIBLE}`, `{names.STATE}`, `{names.LATENCY_SOURCE}`.
- The Pareto front: search `{FILTER_FRONT}`; within the budget: `{FILTER_FEASIBLE}`. Sort by a metric to list the
  trials as rows (sorted by date, they fold under their study's run).
- Accuracy against latency: in the Chart view, Add chart > Scatter chart, X = the latency metric, Y =
  `{names.ACCURACY}`.
- The winner of each budget: registered model `nas-<target>-<budget>ms`, alias `{names.CHAMPION}`; the trial it
  came from shows it in the Models column.
"""


def latency_metric(records: list[TrialRecord], statistic: str) -> str:
    """The trial runs' latency metric: predicted where the study's latencies came from a model, not a device."""
    predicted = any(r.latency is not None and r.latency.source == "predicted" for r in records)
    return names.latency_metric(statistic, predicted)


def study_note(study: str, experiment_id: str, records: list[TrialRecord], budget_ms: float, statistic: str,
               target: str, export_name: str) -> str:
    front = pareto_front(records)
    feasible = sum(r.feasible(budget_ms) for r in records)
    lat = latency_metric(records, statistic)
    counts = state_counts(records).split(": ", 1)[1] if records else ""
    mine = f'tags.`{names.STUDY_TAG}` = "{study}" AND '
    link = runs_link(experiment_id, mine + FILTER_FRONT)
    return f"""**Study `{study}`**: {len(records)} trial(s) ({counts or 'none finished'}), budget **{budget_ms:g} ms
{statistic}** on target `{target}`; {feasible} trial(s) within it, [{len(front)} on the Pareto front]({link}).

Each nested run `trial-NNNN` is one candidate: metrics `{names.ACCURACY}` and `{lat}`, its choices as params.

- The front: search ``{mine}{FILTER_FRONT}`` (the table `{names.FRONT_TABLE}` and the plot under `pareto/` are
  this run's artifacts); within the budget: `{FILTER_FEASIBLE}`.
- Chart view: Add chart > Scatter chart, X = `{lat}`, Y = `{names.ACCURACY}` plots accuracy against latency.
- The export: registered model `nas-{export_name}` (alias `{names.CHAMPION}`), the bundle under `export/`.
"""


def front_table(records: list[TrialRecord], statistic: str) -> dict[str, list[Any]]:
    """The Pareto front, fastest first, as columns for ``MlflowClient.log_table`` (MLflow shows it as a table)."""
    front = pareto_front(records)
    return {
        "trial": [r.number for r in front],
        "label": [r.label for r in front],
        names.ACCURACY: [r.accuracy for r in front],
        names.FIDELITY: [r.attrs.get(names.FIDELITY) for r in front],
        latency_metric(records, statistic): [r.latency_ms for r in front],
        names.PARAMS: [r.params for r in front],
        names.MACS: [r.macs for r in front],
        names.ARCH_HASH: [r.arch.hash if r.arch else None for r in front],
        "run_id": [r.run_id for r in front],
    }
