"""Partitions: topics (dynamic, seeded from the catalogue) x collection rounds (one per day); mask modes."""

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

from opengrok_dagster.tasks.keys import validate_topic_key
from opengrok_dagster.training import MASK_MODES


topic_partitions = DynamicPartitionsDefinition(name="topics")

# end_offset=1 makes today's round exist, so a scheduled re-collection gathers today's responses.
ROUND_START_DATE = "2026-01-01"
round_partitions = DailyPartitionsDefinition(start_date=ROUND_START_DATE, end_offset=1, timezone="UTC")

collection_partitions = MultiPartitionsDefinition({"topic": topic_partitions, "round": round_partitions})


def collection_partition_key(topic: str, round_key: str) -> MultiPartitionKey:
    return MultiPartitionKey({"topic": validate_topic_key(topic), "round": round_key})


# One shard of the user's own posts per posts-catalogue entry (opengrok_dagster/config/posts.yaml), seeded like topics.
post_shard_partitions = DynamicPartitionsDefinition(name="post_shards")

# One LoRA checkpoint per attention-mask mode, so the evaluation can compare them (the ablation).
mask_mode_partitions = StaticPartitionsDefinition(list(MASK_MODES))
