"""Asset jobs: the selections that schedules, sensors and the CLI launch, one per stage of different partitioning."""

from dagster import AssetSelection, define_asset_job

from opengrok_dagster.partitions import collection_partitions, mask_mode_partitions

collect_job = define_asset_job(
    "collect_teacher_data",
    selection=AssetSelection.assets("prompts", "raw_responses"),
    partitions_def=collection_partitions,
    description="Build the prompt grid and collect the teacher's responses for one topic and round.",
)

prepare_job = define_asset_job(
    "prepare_training_data",
    selection=AssetSelection.assets("filtered_responses", "prompt_feedback", "mask_tables"),
    description="Filter the collected responses, score the prompts for the next round, and build the mask tables.",
)

fine_tune_job = define_asset_job(
    "fine_tune_student",
    selection=AssetSelection.assets("lora_checkpoint"),
    partitions_def=mask_mode_partitions,
    description="Fine-tune the student with LoRA under one attention-mask mode (a partition per mode).",
)

evaluate_job = define_asset_job(
    "evaluate_student",
    selection=AssetSelection.assets("eval_report"),
    description="Compare the base student, each LoRA checkpoint and the teacher on SNS tasks; write the report.",
)

STAGE_JOBS = [collect_job, prepare_job, fine_tune_job, evaluate_job]
