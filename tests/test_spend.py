"""Teacher spend: the response store's aggregates per partition, run and UTC day, and the report's section."""

import asyncio
import re
import sqlite3

import pytest

from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.collector import collect_responses
from opengrok_dagster.collect.result import Prices, SamplingParams, TeacherResult
from opengrok_dagster.collect.spend import TeacherSpend, collection_spend, pricing_description
from opengrok_dagster.collect.store import ResponseKey, ResponseStore
from opengrok_dagster.evaluation.api import ApiModel, Usage
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.report import build_report
from opengrok_dagster.evaluation.report.spend import spend_section
from opengrok_dagster.evaluation.results import EvaluationResults


def paid(cost: float, prompt_tokens: int, completion_tokens: int) -> TeacherResult:
    return TeacherResult("ok", "stop", "grok-4", prompt_tokens, completion_tokens, cost, 0.1, 1, "r")


FAILED = TeacherResult(None, None, None, None, None, 0.0, 0.1, 6, None, error="gave up")


def populated_store(path) -> ResponseStore:
    """Five responses over two partitions, two runs (and one stored before runs were kept) and two UTC days."""
    store = ResponseStore(path)
    day1, day2 = ResponseKey("grok-4", "s", "2026-11-24"), ResponseKey("grok-4", "s", "2026-11-25")
    store.responses.record(day1, "p1", "climate", paid(0.001, 100, 50), run_id="run-a")
    store.responses.record(day1, "p2", "climate", paid(0.002, 200, 100), run_id="run-a", batch_id="batch_1")
    store.responses.record(day2, "p3", "music", paid(0.004, 400, 200), run_id="run-b")
    store.responses.record(day2, "p4", "music", FAILED, run_id="run-b")
    store.responses.record(day1, "p5", "climate", paid(0.008, 10, 20))  # no run id: written before the store kept them
    with sqlite3.connect(path) as connection:  # when each arrived: p1 and p2 on the 24th, the rest on the 25th
        connection.execute(
            "UPDATE responses SET collected_at = '2026-11-24T23:59:59.000+00:00' WHERE prompt_id IN ('p1', 'p2')"
        )
        connection.execute(
            "UPDATE responses SET collected_at = '2026-11-25T00:00:01.000+00:00' WHERE prompt_id NOT IN ('p1', 'p2')"
        )
    return store


def as_tuples(lines):
    return {
        line.key: (
            line.requests,
            line.errors,
            line.prompt_tokens,
            line.completion_tokens,
            round(line.usd, 9),
            line.batch_requests,
            round(line.batch_usd, 9),
        )
        for line in lines
    }


def test_spend_is_aggregated_exactly_per_partition_run_and_utc_day_with_the_batch_priced_share(tmp_path):
    store = populated_store(tmp_path / "responses.sqlite")
    store.spend.reserve("2026-11-25", "run-c", "2026-11-25|music", "p6", 0.05, None, None)  # never settled
    store.close()
    spend = collection_spend(tmp_path / "responses.sqlite")
    assert as_tuples([spend.total]) == {"total": (5, 1, 710, 370, 0.015, 1, 0.002)}
    assert as_tuples(spend.by["partition"]) == {
        "2026-11-24|climate": (3, 0, 310, 170, 0.011, 1, 0.002),
        "2026-11-25|music": (2, 1, 400, 200, 0.004, 0, 0.0),
    }
    assert as_tuples(spend.by["run"]) == {
        "": (1, 0, 10, 20, 0.008, 0, 0.0),
        "run-a": (2, 0, 300, 150, 0.003, 1, 0.002),
        "run-b": (2, 1, 400, 200, 0.004, 0, 0.0),
    }
    assert as_tuples(spend.by["day"]) == {
        "2026-11-24": (2, 0, 300, 150, 0.003, 1, 0.002),
        "2026-11-25": (3, 1, 410, 220, 0.012, 0, 0.0),
    }
    assert as_tuples(spend.by["teacher"]) == {"grok-4": (5, 1, 710, 370, 0.015, 1, 0.002)}
    assert (spend.unsettled_requests, spend.unsettled_usd) == (1, pytest.approx(0.05))


def test_an_answer_replacing_an_error_is_counted_once_with_its_own_run_and_price(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    key = ResponseKey("grok-4", "s", "2026-11-24")
    store.responses.record(key, "p1", "climate", FAILED, run_id="run-a", batch_id="batch_1")
    store.responses.record(key, "p1", "climate", paid(0.003, 30, 40), run_id="run-b")  # asked again online
    store.close()
    spend = collection_spend(tmp_path / "responses.sqlite")
    assert as_tuples(spend.by["run"]) == {"run-b": (1, 0, 30, 40, 0.003, 0, 0.0)}


def test_the_collector_stores_the_run_that_paid_for_each_response(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    rows = [{"prompt_id": f"p{i}", "topic": "climate", "system_prompt": "s", "prompt": f"q {i}"} for i in range(3)]

    async def go():
        with LoopbackTeacher(LoopbackConfig(completion_tokens=8)) as server:
            async with TeacherClient(
                TeacherEndpoint(server.base_url, "m"), SamplingParams(max_tokens=16), ClientLimits(), Prices(1e3, 1e3)
            ) as client:
                return await collect_responses(rows, client, store, "2026-11-24", run_id="run-x")

    assert asyncio.run(go()).succeeded == 3
    store.close()
    (line,) = collection_spend(tmp_path / "responses.sqlite").by["run"]
    assert (line.key, line.requests, line.completion_tokens) == ("run-x", 3, 24)
    assert line.usd == pytest.approx((line.prompt_tokens + line.completion_tokens) * 1e3 / 1e6)


def row(markdown: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first_cell`` (escaped pipes read back)."""
    cells = [
        [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip("|"))]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]
    (found,) = [row for row in cells if row[0] == first_cell]
    return found


def results(usage=None) -> EvaluationResults:
    models = [{"model": "teacher", "what": "OpenAI-compatible endpoint", "source": "grok-4 at https://x/v1"}]
    return EvaluationResults(EvaluationConfig(), None, [], models, [], 1.0, api_usage=usage or {})


def test_the_report_has_a_teacher_spend_section_with_every_view_and_the_evaluations_own_requests(tmp_path):
    populated_store(tmp_path / "responses.sqlite").close()
    teacher = pricing_description("grok-4 at https://api.x.ai/v1", Prices(3.0, 15.0), False, 0.5)
    spend = TeacherSpend.read(teacher, tmp_path / "responses.sqlite")
    usage = {"teacher": Usage(requests=4, reused=2, prompt_tokens=80, completion_tokens=12, usd=0.00042)}
    markdown = build_report(results(usage), spend=spend).markdown()
    assert "## Teacher spend" in markdown
    assert "Teacher: grok-4 at https://api.x.ai/v1, at USD 3 per 1M prompt tokens and 15 per 1M completion" in markdown
    assert (
        "Collection: $0.015000 for 5 requests (1 ended in an error), 710 prompt and 370 completion tokens; "
        "$0.002000 of it for 1 requests at the batch price" in markdown
    )
    for title in ("By collection partition", "By run (the Dagster run", "By UTC day", "By teacher"):
        assert f"### {title}" in markdown
    assert row(markdown, "2026-11-25|music") == [
        "2026-11-25|music",
        "2",
        "1",
        "400",
        "200",
        "$0.004000",
        "0",
        "$0.000000",
    ]
    assert row(markdown, "2026-11-25") == ["2026-11-25", "3", "1", "410", "220", "$0.012000", "0", "$0.000000"]
    assert row(markdown, "run-a")[5:] == ["$0.003000", "1", "$0.002000"]
    assert row(markdown, "(not recorded: collected before the store kept run ids)")[1] == "1"
    assert "### This evaluation's requests to API models" in markdown
    assert row(markdown.split("### This evaluation's")[1], "teacher") == [
        "teacher",
        "grok-4 at https://x/v1",
        "4",
        "2",
        "80",
        "12",
        "$0.000420",
    ]
    assert "<h2>Teacher spend</h2>" in build_report(results(usage), spend=spend).html()


def test_a_home_without_a_store_or_priced_responses_renders_a_clear_line(tmp_path):
    stand_in = pricing_description("embedded offline teacher (SmolLM2-135M-Instruct)", Prices(), True, 0.5)
    missing = spend_section(TeacherSpend.read(stand_in, tmp_path / "responses.sqlite"), results()).markdown()
    assert "no teacher response was collected on this home (no response store at" in missing
    assert "a stand-in for a paid teacher: it runs on this machine and is priced at $0" in missing
    assert "OPENGROK_TEACHER_PROMPT_PRICE and OPENGROK_TEACHER_COMPLETION_PRICE" in missing
    assert "The evaluation sent no request to an API model." in missing
    assert not (tmp_path / "responses.sqlite").exists()  # reading spend never creates a store

    ResponseStore(tmp_path / "responses.sqlite").close()
    empty = spend_section(TeacherSpend.read(stand_in, tmp_path / "responses.sqlite"), results()).markdown()
    assert "holds no response, so nothing was spent" in empty

    store = ResponseStore(tmp_path / "responses.sqlite")
    store.responses.record(ResponseKey("SmolLM2-135M-Instruct", "s", "2026-11-24"), "p1", "climate", paid(0.0, 20, 30))
    store.close()
    stored = TeacherSpend.read(
        stand_in, tmp_path / "responses.sqlite", stand_in_labels=frozenset({"SmolLM2-135M-Instruct"})
    )
    unpriced = spend_section(stored, results()).markdown()
    assert row(unpriced, "SmolLM2-135M-Instruct (embedded stand-in teacher, $0)")[1:3] == ["1", "0"]
    assert "No stored response is priced: all 1 cost $0 (collected from the embedded stand-in teacher" in unpriced
    no_prices = pricing_description("grok-4 at https://api.x.ai/v1", Prices(), False, 0.5)
    assert no_prices == (
        "grok-4 at https://api.x.ai/v1, priced at $0: no prices are set. Set OPENGROK_TEACHER_PROMPT_PRICE and "
        "OPENGROK_TEACHER_COMPLETION_PRICE (USD per 1M tokens) to its prices."
    )


def test_the_evaluation_prices_its_requests_to_a_priced_model_and_not_to_an_unpriced_one():
    questions = [[{"role": "user", "content": f"question number {i}"}] for i in range(3)]
    with LoopbackTeacher(LoopbackConfig(completion_tokens=5)) as server:
        priced = ApiModel("teacher", lambda: TeacherEndpoint(server.base_url, "m"), "t", prices=Prices(1e3, 2e3))
        unpriced = ApiModel("extra", lambda: TeacherEndpoint(server.base_url, "m"), "e")
        usage, other = priced.complete_all(questions, 8).usage, unpriced.complete_all(questions, 8).usage
    assert (usage.requests, usage.reused, usage.completion_tokens) == (3, 0, 15) and usage.prompt_tokens > 0
    assert usage.usd == pytest.approx((usage.prompt_tokens * 1e3 + 15 * 2e3) / 1e6)
    assert (other.requests, other.usd) == (3, None)
