"""What labelling a million posts costs: the student on this device against the teacher at its configured limits.

The student's rate is what the evaluation measured scoring posts (``EvaluationResults.throughput``); it costs no
API money. The teacher's is measured from its annotation requests in the response store: the median latency
at the configured concurrency, capped by the configured requests per minute, and the mean prompt and completion
tokens of an annotation priced at the configured per-token prices. Where no price is configured the table says
which variables to set instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from opengrok_dagster.collect.spend import PRICE_VARIABLES
from opengrok_dagster.collect.store import ResponseStore
from opengrok_dagster.evaluation.report.render import Report


MILLION = 1_000_000


@dataclass(frozen=True)
class TeacherMeasure:
    """The teacher's annotation requests as the response store recorded them."""

    requests: int
    prompt_tokens: float  # mean per request
    completion_tokens: float  # mean per request
    latency_s: float  # median per request


def measure_teacher(store_path: Path, prompt_ids: Iterable[str]) -> TeacherMeasure | None:
    """Token counts and latency of the answered requests of ``prompt_ids``; None when the store has none."""
    if not Path(store_path).is_file():
        return None
    store = ResponseStore(store_path)
    try:
        rows = store.responses.usage(prompt_ids)
    finally:
        store.close()
    if not rows:
        return None
    prompt, completion, latency = (np.array(column, dtype=float) for column in zip(*rows))
    return TeacherMeasure(len(rows), float(prompt.mean()), float(completion.mean()), float(np.median(latency)))


@dataclass(frozen=True)
class CostLine:
    model: str
    posts_per_second: float
    usd: float | None  # None: no price configured
    basis: str

    @property
    def hours(self) -> float:
        return MILLION / self.posts_per_second / 3600 if self.posts_per_second > 0 else math.inf


def teacher_line(
    measure: TeacherMeasure,
    name: str,
    prompt_price: float,
    completion_price: float,
    concurrency: int,
    requests_per_minute: float | None,
    priced: bool,
) -> CostLine:
    """The teacher labelling 1M posts, one request a post: ``concurrency`` requests in flight at the measured
    median latency, at most ``requests_per_minute``; ``priced`` False when no price is configured."""
    rate = concurrency / measure.latency_s if measure.latency_s > 0 else math.inf
    if requests_per_minute:
        rate = min(rate, requests_per_minute / 60)
    usd = MILLION * (measure.prompt_tokens * prompt_price + measure.completion_tokens * completion_price) / 1e6
    basis = (
        f"{concurrency} requests in flight, median latency {measure.latency_s:.2f} s"
        + (f", {requests_per_minute:g} RPM" if requests_per_minute else ", no RPM limit")
        + f"; {measure.prompt_tokens:.0f} prompt + {measure.completion_tokens:.1f} completion tokens a post "
        f"(mean of {measure.requests} annotation requests)"
    )
    return CostLine(name, rate, usd if priced else None, basis)


def student_line(name: str, posts_per_second: float, device: str) -> CostLine:
    return CostLine(name, posts_per_second, 0.0, f"measured scoring the evaluation's posts on {device}")


def _hours(line: CostLine) -> str:
    return f"{line.hours:,.1f} h" if math.isfinite(line.hours) else "unknown"


def _usd(line: CostLine) -> str:
    return f"${line.usd:,.2f}" if line.usd is not None else f"$? (set {PRICE_VARIABLES})"


def cost_sentence(teacher: CostLine | None, student: CostLine | None, requests_per_minute: float | None) -> str:
    parts = []
    if teacher is not None:
        at = f" at {requests_per_minute:g} RPM" if requests_per_minute else ""
        parts.append(f"teacher {_usd(teacher)} and {_hours(teacher)}{at}")
    if student is not None:
        parts.append(f"student {_usd(student)} and {_hours(student)} on {student.basis.rsplit(' on ', 1)[-1]}")
    return "1M posts: " + "; ".join(parts) if parts else "1M posts: nothing measured"


def cost_section(teacher: CostLine | None, student: CostLine | None, requests_per_minute: float | None) -> Report:
    """The report's "What labelling 1M posts costs" section: the sentence, then the table."""
    section = Report()
    section.add("h2", "What labelling 1M posts costs")
    section.add("p", cost_sentence(teacher, student, requests_per_minute))
    lines = [line for line in (teacher, student) if line is not None]
    section.add(
        "table",
        pd.DataFrame(
            [
                {
                    "model": line.model,
                    "posts/s": f"{line.posts_per_second:,.2f}",
                    "hours for 1M posts": _hours(line),
                    "USD for 1M posts": _usd(line),
                    "basis": line.basis,
                }
                for line in lines
            ]
        ),
    )
    if teacher is None:
        section.add("p", "The teacher is not in this table: the response store holds no answered annotation request.")
    return section
