"""The report's plots: each task's primary metric per model with its interval, and the paired differences."""

from __future__ import annotations

import io

import numpy as np

from opengrok_dagster.evaluation.results import EvaluationResults


MAIN_PLOT = "primary_metrics.png"
DIFFERENCE_PLOT = "paired_differences.png"


def plot_primary(results: EvaluationResults) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in results.tasks if t.scores]
    fig, axes = plt.subplots(
        len(tasks), 1, figsize=(7, 1.2 + 0.35 * sum(len(t.scores) for t in tasks) + 0.6 * len(tasks)), squeeze=False
    )
    for ax, task in zip(axes[:, 0], tasks):
        estimates = [
            (s.model, s.distribution.estimate(task.primary_metric, results.config.confidence)) for s in task.scores
        ]
        values = np.array([e.value for _, e in estimates])
        errors = np.array([[max(e.value - e.low, 0), max(e.high - e.value, 0)] for _, e in estimates]).T
        positions = np.arange(len(estimates))
        ax.barh(positions, np.nan_to_num(values), xerr=np.nan_to_num(errors), color="#4878a8", capsize=3)
        ax.set_yticks(positions, [m for m, _ in estimates])
        ax.invert_yaxis()
        ax.set_title(
            f"{task.name}: {task.primary_metric} (n={task.n}, {int(results.config.confidence * 100)}% CI)", fontsize=9
        )
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_differences(results: EvaluationResults) -> bytes | None:
    comparisons = [(t, c) for t in results.tasks for c in t.comparisons if c.metric == t.primary_metric]
    if not comparisons:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 1 + 0.3 * len(comparisons)))
    for row, (_, c) in enumerate(comparisons):
        d = c.difference
        ax.errorbar(
            d.value,
            row,
            xerr=[[max(d.value - d.low, 0)], [max(d.high - d.value, 0)]],
            fmt="o",
            color="#a84848",
            capsize=3,
        )
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(
        range(len(comparisons)), [f"{t.name}: {c.model} - {c.compared_to}" for t, c in comparisons], fontsize=7
    )
    ax.invert_yaxis()
    ax.set_title("Paired bootstrap differences on the primary metric", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
