"""Asset jobs: the selections that schedules, sensors and the CLI launch."""

from dagster import AssetSelection, define_asset_job

from opengrok_dagster.partitions import collection_partitions

collect_job = define_asset_job(
    "collect_teacher_data",
    selection=AssetSelection.assets("prompts", "raw_responses"),
    partitions_def=collection_partitions,
    description="Build the prompt grid and collect the teacher's responses for one topic and round.",
)
