"""The report's "Teacher spend" section: what collection cost and this evaluation's own requests to API models."""

from __future__ import annotations

import pandas as pd

from opengrok_dagster.collect.spend import PRICE_VARIABLES, SPEND_VIEWS, SpendLine, TeacherSpend
from opengrok_dagster.evaluation.api import Usage
from opengrok_dagster.evaluation.report.render import Report
from opengrok_dagster.evaluation.results import EvaluationResults


SPEND_VIEW_TITLES = {
    "teacher": "By teacher",
    "partition": "By collection partition (round|topic, as Dagster names it)",
    "run": "By run (the Dagster run that collected it)",
    "day": "By UTC day (when the response arrived)",
}
RUN_NOT_RECORDED = "(not recorded: collected before the store kept run ids)"


def _usd(value: float | None) -> str:
    return "not priced" if value is None else f"${value:.6f}"


def _spend_table(lines: list[SpendLine], view: str, spend: TeacherSpend) -> pd.DataFrame:
    names = {"teacher": spend.teacher_name, "run": lambda key: key or RUN_NOT_RECORDED}
    return pd.DataFrame(
        [
            {
                view: names.get(view, str)(line.key),
                "requests": line.requests,
                "errors": line.errors,
                "prompt tokens": line.prompt_tokens,
                "completion tokens": line.completion_tokens,
                "USD": _usd(line.usd),
                "batch requests": line.batch_requests,
                "batch USD": _usd(line.batch_usd),
            }
            for line in lines
        ]
    )


def _evaluation_usage_table(usage: dict[str, Usage], models: list[dict]) -> pd.DataFrame:
    what = {m["model"]: m["source"] for m in models}
    return pd.DataFrame(
        [
            {
                "model": name,
                "source": what.get(name, ""),
                "requests": u.requests,
                "answers reused": u.reused,
                "prompt tokens": u.prompt_tokens,
                "completion tokens": u.completion_tokens,
                "USD": _usd(u.usd),
            }
            for name, u in usage.items()
        ]
    )


def spend_section(spend: TeacherSpend, results: EvaluationResults) -> Report:
    """The "Teacher spend" section: what collection cost (total, per teacher, partition, run and UTC day, and
    the batch-priced share), and this evaluation's own requests to API models."""
    section = Report()
    section.add("h2", "Teacher spend")
    section.add("p", f"Teacher: {spend.teacher}")
    collection = spend.collection
    if collection is None:
        section.add(
            "p",
            f"Collection: no teacher response was collected on this home (no response store at {spend.store}), "
            "so nothing was spent.",
        )
    elif not collection.total.requests:
        section.add("p", f"Collection: the response store {collection.store} holds no response, so nothing was spent.")
    else:
        total = collection.total
        section.add(
            "p",
            f"Collection: {_usd(total.usd)} for {total.requests} requests ({total.errors} ended in an error), "
            f"{total.prompt_tokens} prompt and {total.completion_tokens} completion tokens; {_usd(total.batch_usd)} "
            f"of it for {total.batch_requests} requests at the batch price. Each cost is as priced when its response "
            f"arrived (from {collection.store}).",
        )
        if not collection.priced:
            section.add(
                "p",
                f"No stored response is priced: all {total.requests} cost $0 (collected from the embedded stand-in "
                f"teacher, or with no prices set: {PRICE_VARIABLES}, USD per 1M tokens).",
            )
        if collection.unsettled_requests:
            section.add(
                "p",
                f"{collection.unsettled_requests} budget reservations were never settled (requests in flight, or of "
                f"a run killed while they were); the budgets count them at their worst case, "
                f"{_usd(collection.unsettled_usd)}, as the provider may have billed them.",
            )
        for view in SPEND_VIEWS:
            section.add("h3", SPEND_VIEW_TITLES[view])
            section.add("table", _spend_table(collection.by[view], view, spend))
    section.add("h3", "This evaluation's requests to API models")
    if results.api_usage:
        section.add("table", _evaluation_usage_table(results.api_usage, results.models))
        section.add(
            "p",
            "The teacher's requests are priced at its configured prices; extra endpoints have no configured price "
            "and are not priced. Reused answers were not asked again and cost nothing in this run.",
        )
    else:
        section.add("p", "The evaluation sent no request to an API model.")
    return section
