"""The Pareto-front plot: accuracy against latency, the budget as a line, references labelled."""

from __future__ import annotations

import json
from pathlib import Path

from nas.core import names
from nas.core.records import TrialRecord, pareto_front


def plot_pareto(records: list[TrialRecord], budget_ms: float, statistic: str, title: str, png: Path,
                html: Path) -> None:
    """Write a static PNG (matplotlib) and an interactive, self-contained HTML (plotly)."""
    done = [r for r in records if r.state == "complete"]
    front = pareto_front(done)
    _png(done, front, budget_ms, statistic, title, png)
    _html(done, front, budget_ms, statistic, title, html)


def _ylabel(done: list[TrialRecord]) -> str:
    if done and all(names.ACCURACY_STD in r.attrs for r in done):
        return "predicted ImageNet-1k top-1 (%), accuracy model"
    return "top-1 at the fidelity each trial reached"


def _png(done: list[TrialRecord], front: list[TrialRecord], budget: float, stat: str, title: str,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    others = [r for r in done if r not in front]
    # Accuracy figures of different fidelities (rungs) are not the same quantity: each rung its own marker.
    for i, epochs in enumerate(sorted({_fidelity(r) for r in others})):
        group = [r for r in others if _fidelity(r) == epochs]
        ax.scatter([r.latency_ms for r in group], [r.accuracy for r in group], s=14 + 10 * i, c="#9aa5b1",
                   marker="os^Dv"[i % 5],
                   label=f"trials, top-1 after {epochs} epoch(s)" if epochs else "trials, predicted top-1")
    ax.plot([r.latency_ms for r in front], [r.accuracy for r in front], "-o", c="#d9480f", ms=6,
            label="Pareto front")
    refs = sorted((r for r in done if r.attrs.get("reference")), key=lambda r: r.latency_ms)
    for i, r in enumerate(refs):  # alternate label offsets so neighbouring references stay readable
        ax.annotate(r.attrs["reference"], (r.latency_ms, r.accuracy), textcoords="offset points",
                    xytext=(5, 6 if i % 2 == 0 else -12), fontsize=8)
    ax.axvline(budget, ls="--", c="#1c7ed6", label=f"budget {budget:g} ms")
    ax.set_xlabel(f"latency {stat} (ms)")
    ax.set_ylabel(_ylabel(done))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _html(done: list[TrialRecord], front: list[TrialRecord], budget: float, stat: str, title: str,
          path: Path) -> None:
    import plotly.graph_objects as go

    def hover(r: TrialRecord) -> str:
        return (f"trial {r.number} {r.label}<br>acc {r.accuracy:.3f} "
                + (f"± {r.attrs[names.ACCURACY_STD]:.2f} predicted" if names.ACCURACY_STD in r.attrs
                   else f"after {_fidelity(r)} epoch(s)")
                + f"<br>{stat} {r.latency_ms:.2f} ms"
                f"<br>params {r.params or 0:,}<br>MACs {r.macs or 0:,}")

    fig = go.Figure()
    fig.add_scatter(x=[r.latency_ms for r in done], y=[r.accuracy for r in done], mode="markers",
                    name="trials", text=[hover(r) for r in done], hoverinfo="text",
                    marker=dict(color="#9aa5b1", size=8))
    fig.add_scatter(x=[r.latency_ms for r in front], y=[r.accuracy for r in front], mode="lines+markers",
                    name="Pareto front", text=[hover(r) for r in front], hoverinfo="text",
                    marker=dict(color="#d9480f", size=10))
    refs = [r for r in done if r.attrs.get("reference")]
    fig.add_scatter(x=[r.latency_ms for r in refs], y=[r.accuracy for r in refs], mode="text",
                    text=[r.attrs["reference"] for r in refs], textposition="top right", name="references")
    fig.add_vline(x=budget, line_dash="dash", line_color="#1c7ed6", annotation_text=f"budget {budget:g} ms")
    fig.update_layout(title=title, xaxis_title=f"latency {stat} (ms)",
                      yaxis_title=_ylabel(done),
                      template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fig.to_html(include_plotlyjs=True, full_html=True))


def _fidelity(r: TrialRecord) -> int | str:
    return r.attrs.get(names.FIDELITY, "?")


def front_json(records: list[TrialRecord]) -> str:
    return json.dumps([{"trial": r.number, "label": r.label, "accuracy": r.accuracy, "fidelity_epochs": _fidelity(r),
                        "latency_ms": r.latency_ms} for r in pareto_front(records)], indent=2)
