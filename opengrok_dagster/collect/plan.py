"""What a collection will send and cost, before anything is sent: the `opengrok run --dry-run` figures and the
`prompts` asset's estimate metadata (and the daily-budget check that reads it).

Prompt tokens come from the teacher's own tokenizer and chat template where we have it (the embedded teacher)
and from ~4 characters a token otherwise (a remote Grok's tokenizer is not public). Completion tokens are
given twice: expected (the mean length of this teacher's stored answers under the same sampling, once there
are some) and worst case (``max_tokens`` per request, which is what the budget reserves before each request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from opengrok_dagster.collect.feedback import read_feedback, refinement_for_round
from opengrok_dagster.collect.prompts import GridRefinement, PromptGridConfig, build_prompt_grid, prompt_messages
from opengrok_dagster.collect.result import Prices
from opengrok_dagster.collect.topics import Topic


TokenCounter = Callable[[list[dict[str, str]]], int]


def round_prompt_grid(
    topic: Topic, grid: PromptGridConfig, round_key: str, feedback_file: Path | None
) -> tuple[list[dict], GridRefinement | None]:
    """The prompts of one topic and round, refined by the feedback of the latest earlier round in
    ``feedback_file`` (None: no refinement); the `prompts` asset and the dry run both build them here."""
    refinement = refinement_for_round(read_feedback(feedback_file), round_key) if feedback_file else None
    rows = [row | {"round": round_key} for row in build_prompt_grid(topic, grid, refinement)]
    return rows, refinement


def tokenizer_token_counter(model_dir: str | Path) -> TokenCounter:
    """Prompt tokens exactly as the embedded teacher counts them: its tokenizer over its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def count(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


# Fewer stored answers than this and the expected completion length is max_tokens (the worst case).
MIN_HISTORY = 5


def expected_completion_tokens(max_tokens: int, history: tuple[float | None, int]) -> tuple[float, str]:
    """The completion tokens to expect per request, and where that figure comes from: the mean of this
    teacher's stored answers under the same sampling (any round), else max_tokens."""
    mean, count = history
    if mean is None or count < MIN_HISTORY:
        return float(max_tokens), "max_tokens (no stored answers of this teacher and sampling yet)"
    return min(float(max_tokens), mean), f"mean of {count} stored answers"


@dataclass(frozen=True)
class CollectionEstimate:
    """One partition's (or the total's) planned requests and their cost: expected and worst case (max_tokens)."""

    topic: str
    prompts: int
    requests: int  # prompts without a stored answer: what the collection will send
    prompt_tokens: int
    completion_tokens: int  # expected
    completion_tokens_max: int  # requests x max_tokens
    usd: float  # expected
    usd_max: float  # what the budget reserves before sending
    tokenizer: str  # how prompt tokens were counted
    completion_basis: str  # where the expected completion length comes from

    def as_metadata(self) -> dict:
        return {f"estimate_{name}": value for name, value in asdict(self).items() if name != "topic"}


def estimate_collection(
    topic: str,
    rows: Sequence[dict],
    answered: set[str],
    count_tokens: TokenCounter,
    max_tokens: int,
    prices: Prices,
    tokenizer: str,
    history: tuple[float | None, int] = (None, 0),
) -> CollectionEstimate:
    """``history``: (mean completion tokens, count) of stored answers, from Responses.completion_history."""
    pending = [row for row in rows if row["prompt_id"] not in answered]
    prompt_tokens = sum(count_tokens(prompt_messages(row)) for row in pending)
    per_request, basis = expected_completion_tokens(max_tokens, history)
    expected, worst = round(per_request * len(pending)), max_tokens * len(pending)
    return CollectionEstimate(
        topic,
        len(rows),
        len(pending),
        prompt_tokens,
        expected,
        worst,
        prices.cost(prompt_tokens, expected),
        prices.cost(prompt_tokens, worst),
        tokenizer,
        basis,
    )


def total_estimate(estimates: Sequence[CollectionEstimate]) -> CollectionEstimate:
    def joined(name: str) -> str:
        return "; ".join(sorted({getattr(e, name) for e in estimates}))

    def summed(name: str):
        return sum(getattr(e, name) for e in estimates)

    return CollectionEstimate(
        "total",
        summed("prompts"),
        summed("requests"),
        summed("prompt_tokens"),
        summed("completion_tokens"),
        summed("completion_tokens_max"),
        summed("usd"),
        summed("usd_max"),
        joined("tokenizer"),
        joined("completion_basis"),
    )


def format_estimates(estimates: Sequence[CollectionEstimate]) -> str:
    """A Markdown table, one row per topic and a total row."""
    lines = [
        "| topic | prompts | requests | prompt tokens | completion tokens (expected / max) | USD (expected / max) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in [*estimates, total_estimate(estimates)]:
        lines.append(
            f"| {e.topic} | {e.prompts} | {e.requests} | {e.prompt_tokens} | "
            f"{e.completion_tokens} / {e.completion_tokens_max} | {e.usd:.4f} / {e.usd_max:.4f} |"
        )
    return "\n".join(lines)
