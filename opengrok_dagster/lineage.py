"""Row-level provenance: from a training example or a checkpoint back to the prompt and the teacher request.

Reads the published artifacts under ``$OPENGROK_HOME`` (Parquet and the checkpoint's JSON), so it answers
the question an operator asks ("where did this example come from, what trained on it?") without a run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.training import CHECKPOINT_RECORD, MASK_MODES


class LineageError(ValueError):
    """The artifact asked about does not exist (yet)."""


@dataclass
class LineageStep:
    """One link of the chain: which artifact, which row or file, and what it says."""

    artifact: str
    location: str
    facts: dict = field(default_factory=dict)


def _read(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise LineageError(f"{what} is not materialised yet ({path} is missing); run `opengrok run` first")
    return pd.read_parquet(path)


def _record(path: Path) -> dict:
    return json.loads((path / CHECKPOINT_RECORD).read_text())


def _checkpoint_dirs(layout: HomeLayout) -> list[Path]:
    root = layout.checkpoints_dir
    return sorted(p for p in root.iterdir() if (p / CHECKPOINT_RECORD).exists()) if root.exists() else []


def example_lineage(home: Path, example_id: str) -> list[LineageStep]:
    """The chain for one example: checkpoints that trained on it <- filter decision <- teacher request <- prompt."""
    layout = HomeLayout(home)
    filtered_path = layout.filtered_responses_path
    filtered = _read(filtered_path, "filtered_responses")
    rows = filtered[filtered["example_id"] == example_id]
    if rows.empty:
        raise LineageError(f"no example {example_id!r} in {filtered_path}; its example_id column lists the examples")
    row = rows.iloc[0]
    steps = [
        LineageStep(
            f"lora_checkpoint[{record['mask_mode']}]",
            str(path),
            {"base_model": record.get("base_model"), "split": row["split"]},
        )
        for path in _checkpoint_dirs(layout)
        if example_id in (record := _record(path)).get("example_ids", [])
    ]
    steps.append(
        LineageStep(
            "filtered_responses",
            str(filtered_path),
            {
                "state": row["state"],
                "reasons": list(row["reasons"]),
                "split": row["split"],
                "content_hash": row["content_hash"],
            },
        )
    )
    steps += _collection_steps(layout, row)
    return steps


# What lineage shows of the teacher request and of the prompt it answered.
REQUEST_FACTS = ("teacher_model", "request_id", "collected_at", "finish_reason", "attempts", "sampling_key")
PROMPT_FACTS = ("prompt_id", "topic", "round", "template_id", "variant", "platform", "style", "grid_version", "seed")


def _collection_steps(layout: HomeLayout, row) -> list[LineageStep]:
    """The teacher request behind a filtered row, and the prompt it answered (both in the topic x round partition)."""
    raw_path = layout.collection_asset_path("raw_responses", row["topic"], row["round"])
    raw = _read(raw_path, f"raw_responses for topic {row['topic']!r}, round {row['round']}")
    request = raw[raw["prompt_id"] == row["prompt_id"]].iloc[0]
    prompts_path = layout.collection_asset_path("prompts", row["topic"], row["round"])
    return [
        LineageStep("raw_responses", str(raw_path), {key: request[key] for key in REQUEST_FACTS}),
        LineageStep(
            "prompts", str(prompts_path), {key: request[key] for key in PROMPT_FACTS} | {"prompt": request["prompt"]}
        ),
    ]


def checkpoint_lineage(home: Path, checkpoint: str) -> list[LineageStep]:
    """The chain for a checkpoint (a mask mode or an adapter directory): what it was trained from."""
    layout = HomeLayout(home)
    path = layout.checkpoint_dir(checkpoint) if checkpoint in MASK_MODES else Path(checkpoint)
    if not (path / CHECKPOINT_RECORD).exists():
        raise LineageError(
            f"{path} is not an OpenGrok checkpoint (no {CHECKPOINT_RECORD}); give a mask mode ({', '.join(MASK_MODES)}) "
            "or an adapter directory written by lora_checkpoint"
        )
    record = _record(path)
    example_ids = record.get("example_ids", [])
    steps = [
        LineageStep(
            f"lora_checkpoint[{record['mask_mode']}]",
            str(path),
            {"examples": len(example_ids)} | record,  # the id lists in full: printed as counts, kept for --json
        )
    ]
    filtered_path = layout.filtered_responses_path
    if filtered_path.exists():
        trained = pd.read_parquet(filtered_path)
        trained = trained[trained["example_id"].isin(example_ids)]
        summary = trained.groupby(["topic", "round", "teacher_model", "split"]).size().rename("examples").reset_index()
        steps.append(LineageStep("filtered_responses", str(filtered_path), {"by_source": summary.to_dict("records")}))
    return steps


# How many items of a long list of ids the text form shows; `opengrok lineage --json` gives them all.
SHOWN_IDS = 5


def _summarised(values: list) -> str:
    """A list of ids as its count, distinct count (a balanced training set repeats examples) and first few."""
    distinct = len(set(values))
    shown = ", ".join(map(str, values[:SHOWN_IDS])) + (", ..." if len(values) > SHOWN_IDS else "")
    repeats = f" ({distinct} distinct)" if distinct != len(values) else ""
    return f"{len(values)}{repeats}: {shown}"


def format_lineage(steps: list[LineageStep]) -> str:
    """The chain as indented text; lists of ids as counts with their first few (``lineage_json``: everything)."""
    lines = []
    for depth, step in enumerate(steps):
        lines.append(f"{'  ' * depth}{'<- ' if depth else ''}{step.artifact}  ({step.location})")
        for key, value in step.facts.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines.extend(f"{'  ' * depth}     {key}: {item}" for item in value)
            elif isinstance(value, list) and len(value) > SHOWN_IDS:
                lines.append(f"{'  ' * depth}     {key}: {_summarised(value)}")
            else:
                lines.append(f"{'  ' * depth}     {key}: {value}")
    return "\n".join(lines)


def lineage_json(steps: list[LineageStep]) -> str:
    """The full record of the chain, every id included, as JSON (``opengrok lineage --json``)."""
    return json.dumps([asdict(step) for step in steps], indent=2, default=str, ensure_ascii=False)
