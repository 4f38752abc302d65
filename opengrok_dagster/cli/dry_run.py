"""`opengrok run --dry-run`: what collecting the round would send and cost, sending nothing.

It builds the teacher resource of the code location (opengrok_dagster.definitions), whose asset modules take the
active profile's sizes when they load: import it only once `opengrok run` has chosen the profile.
"""

from __future__ import annotations

import os
from contextlib import closing

from opengrok_dagster.collect.plan import estimate_collection, format_estimates, round_prompt_grid
from opengrok_dagster.collect.prompts import PromptGridConfig
from opengrok_dagster.collect.topics import find_topic
from opengrok_dagster.definitions import build_teacher
from opengrok_dagster.settings import opengrok_home, teacher_is_remote, topic_catalogue_path
from resources import OpenGrokPaths


def dry_run(topics: list[str], round_key: str) -> int:
    """Print what collecting ``topics`` in ``round_key`` would send and cost, with the default prompt grid and
    the configured teacher's max_tokens and prices; sends nothing and starts no server."""
    if teacher_is_remote() and not os.environ.get("OPENGROK_TEACHER_MODEL"):
        raise ValueError(
            "OPENGROK_TEACHER_BASE_URL is set but OPENGROK_TEACHER_MODEL is not: set the model id "
            "(e.g. grok-4), or unset OPENGROK_TEACHER_BASE_URL for the embedded teacher"
        )
    paths = OpenGrokPaths(home=str(opengrok_home()), topic_catalogue=str(topic_catalogue_path()))
    catalogue = paths.topics()
    estimates = []
    # Resolves the EnvVar settings; the embedded server starts only on a request, and none is made.
    with (
        build_teacher(with_key=False).process_config_and_initialize_cm() as teacher,
        closing(paths.response_store()) as store,
    ):
        count_tokens, tokenizer = teacher.token_counter()
        for topic in topics:
            rows, _ = round_prompt_grid(
                find_topic(catalogue, topic), PromptGridConfig(), round_key, paths.layout.prompt_feedback_path
            )
            key = teacher.response_key(round_key)
            answered = store.responses.answered(key, (row["prompt_id"] for row in rows))
            estimates.append(
                estimate_collection(
                    topic,
                    rows,
                    answered,
                    count_tokens,
                    teacher.max_tokens,
                    teacher.prices(),
                    tokenizer,
                    store.responses.completion_history(key.teacher_model, key.sampling_key),
                )
            )
    teacher_name = teacher.response_key(round_key).teacher_model
    print(
        f"dry run: round {round_key}, teacher {teacher_name} ({teacher.mode}), max_tokens {teacher.max_tokens}, "
        f"USD per million tokens {teacher.prompt_price_per_million} prompt / {teacher.completion_price_per_million} "
        f"completion; prompt tokens by {tokenizer}; expected completion from "
        f"{estimates[0].completion_basis if estimates else 'max_tokens'}; nothing sent"
    )
    print(format_estimates(estimates))
    return 0
