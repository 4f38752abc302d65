"""Asset jobs: the selections that schedules, sensors and the CLI launch, one per stage of different partitioning
(each job takes its partitions from its assets)."""

from dagster import AssetSelection, define_asset_job


posts_job = define_asset_job(
    "load_posts",
    selection=AssetSelection.assets("posts"),
    description="Read one shard of the user's own posts (a posts-catalogue entry), without evaluation posts.",
)

collect_job = define_asset_job(
    "collect_teacher_data",
    selection=AssetSelection.assets("prompts", "raw_responses"),
    description="Build the prompt grid and collect the teacher's responses for one topic and round.",
)

prepare_job = define_asset_job(
    "prepare_training_data",
    selection=AssetSelection.assets("filtered_responses", "prompt_feedback", "mask_tables", "kd_targets"),
    description="Filter the collected responses, score the prompts for the next round, and build the mask tables "
    "and the distillation targets.",
)

fine_tune_job = define_asset_job(
    "fine_tune_student",
    selection=AssetSelection.assets("lora_checkpoint"),
    description="Fine-tune the student with LoRA under one attention-mask mode (a partition per mode).",
    tags={"opengrok/stage": "training"},  # the run queue allows one training run at a time (docker/dagster.yaml)
)

evaluate_job = define_asset_job(
    "evaluate_student",
    selection=AssetSelection.assets("eval_report"),
    description="Compare the base student, each LoRA checkpoint and the teacher on SNS tasks; write the report.",
)

promote_job = define_asset_job(
    "promote_student",
    selection=AssetSelection.assets("promoted_student"),
    description="Promote the adapter that earned it on the evaluation (or the one chosen by hand) to label posts.",
)

label_posts_job = define_asset_job(
    "label_posts",
    selection=AssetSelection.assets("post_labels"),
    description="Label one shard of the user's posts with the promoted student.",
)

# In pipeline order, the order `opengrok run` drives them in (opengrok_dagster/cli/pipeline.py).
STAGE_JOBS = [posts_job, collect_job, prepare_job, fine_tune_job, evaluate_job, promote_job, label_posts_job]
