"""What a collection will send and cost, before anything is sent: the `opengrok run --dry-run` figures and the
`prompts` asset's estimate metadata (and the daily-budget check that reads it).

Prompt tokens come from the teacher's own tokenizer and chat template where we have it (the embedded teacher)
and from ~4 characters a token otherwise (a remote Grok's tokenizer is not public); completion tokens are the
worst case, ``max_tokens`` per request, which is also what the budget reserves before each request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from opengrok_dagster.collect.client import Prices, characters_token_count
from opengrok_dagster.collect.prompts import GridRefinement, PromptGridConfig, build_prompt_grid, prompt_messages
from opengrok_dagster.collect.topics import Topic
from opengrok_dagster.filtering.feedback import read_feedback, refinement_for_round

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


@dataclass(frozen=True)
class CollectionEstimate:
    """One partition's (or the total's) planned requests and their cost; ``usd`` is the worst case."""

    topic: str
    prompts: int
    requests: int  # prompts without a stored answer: what the collection will send
    prompt_tokens: int
    completion_tokens: int  # requests x max_tokens
    usd: float
    tokenizer: str  # how prompt tokens were counted

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
) -> CollectionEstimate:
    pending = [row for row in rows if row["prompt_id"] not in answered]
    prompt_tokens = sum(count_tokens(prompt_messages(row)) for row in pending)
    completion_tokens = max_tokens * len(pending)
    return CollectionEstimate(topic, len(rows), len(pending), prompt_tokens, completion_tokens,
                              prices.cost(prompt_tokens, completion_tokens), tokenizer)


def total_estimate(estimates: Sequence[CollectionEstimate]) -> CollectionEstimate:
    tokenizers = sorted({e.tokenizer for e in estimates})
    return CollectionEstimate(
        "total", sum(e.prompts for e in estimates), sum(e.requests for e in estimates),
        sum(e.prompt_tokens for e in estimates), sum(e.completion_tokens for e in estimates),
        sum(e.usd for e in estimates), ", ".join(tokenizers),
    )


def format_estimates(estimates: Sequence[CollectionEstimate]) -> str:
    """A Markdown table, one row per topic and a total row."""
    lines = ["| topic | prompts | requests | prompt tokens | completion tokens (max) | USD (max) |",
             "|---|---:|---:|---:|---:|---:|"]
    for e in [*estimates, total_estimate(estimates)]:
        lines.append(f"| {e.topic} | {e.prompts} | {e.requests} | {e.prompt_tokens} | {e.completion_tokens} | {e.usd:.4f} |")
    return "\n".join(lines)
