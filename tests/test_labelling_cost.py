"""What 1M posts cost: the teacher measured from its annotation requests in the response store, the student
at its measured rate, and the report's sentence and table (prices unset: the variables are named)."""

import math

import pytest

from opengrok_dagster.collect.result import TeacherResult
from opengrok_dagster.collect.store import ResponseKey, ResponseStore
from opengrok_dagster.labelling.cost import (
    cost_section,
    cost_sentence,
    measure_teacher,
    student_line,
    teacher_line,
)


def answered(store, prompt_id, prompt_tokens, completion_tokens, latency, error=None):
    result = TeacherResult(
        None if error else "positive", "stop", "grok", prompt_tokens, completion_tokens, 0.0, latency, 1, "r", error
    )
    store.responses.record(ResponseKey("grok", "k", "2026-12-01"), prompt_id, "news", result)


def test_the_teacher_is_measured_from_its_answered_annotation_requests(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    answered(store, "a1", 100, 2, 0.5)
    answered(store, "a2", 120, 4, 1.5)
    answered(store, "a3", 110, 3, 1.0)
    answered(store, "a4", 999, 9, 9.0, error="HTTP 500")  # a failed request says nothing of an answer's cost
    answered(store, "g1", 40, 200, 8.0)  # a generated prompt, not an annotation
    measure = measure_teacher(tmp_path / "responses.sqlite", ["a1", "a2", "a3", "a4"])
    assert (measure.requests, measure.prompt_tokens, measure.completion_tokens, measure.latency_s) == (3, 110, 3, 1.0)
    assert measure_teacher(tmp_path / "absent.sqlite", ["a1"]) is None
    assert measure_teacher(tmp_path / "responses.sqlite", ["nothing"]) is None


def test_a_million_posts_at_the_configured_limits_and_prices(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    answered(store, "a1", 100, 2, 1.0)
    measure = measure_teacher(tmp_path / "responses.sqlite", ["a1"])
    # 16 in flight at 1 s would be 16 posts/s; 480 RPM caps it at 8 posts/s
    teacher = teacher_line(measure, "teacher (grok)", 0.2, 0.5, 16, 480, priced=True)
    assert teacher.posts_per_second == 8 and teacher.hours == pytest.approx(1e6 / 8 / 3600)
    assert teacher.usd == pytest.approx(1e6 * (100 * 0.2 + 2 * 0.5) / 1e6)
    student = student_line("student (smollm2)", 50.0, "cpu")
    assert (
        cost_sentence(teacher, student, 480)
        == "1M posts: teacher $21.00 and 34.7 h at 480 RPM; student $0.00 and 5.6 h on cpu"
    )
    unpriced = teacher_line(measure, "teacher (grok)", 0.0, 0.0, 4, None, priced=False)
    assert unpriced.usd is None and unpriced.posts_per_second == 4
    markdown = cost_section(unpriced, student, None).markdown()
    assert (
        "1M posts: teacher $? (set OPENGROK_TEACHER_PROMPT_PRICE and OPENGROK_TEACHER_COMPLETION_PRICE) and 69.4 h;"
        in markdown
    )
    assert "5.6 h" in markdown
    assert math.isinf(student_line("s", 0.0, "cpu").hours)
    assert "no answered annotation request" in cost_section(None, student, None).markdown()
