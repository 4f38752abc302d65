"""Schedules: re-collection of teacher data (every topic, one new round a day by default) and the slower rebuild
of the training data that the downstream automation (automation.py) follows."""

from dagster import AssetKey, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from opengrok_dagster.jobs import collect_job, prepare_job
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import recollect_cron, retrain_cron


@schedule(job=collect_job, cron_schedule=recollect_cron(), execution_timezone="UTC")
def recollect_schedule(context: ScheduleEvaluationContext):
    """One run per topic for the round named by the scheduled date (OPENGROK_RECOLLECT_CRON, default 03:00 UTC)."""
    round_key = context.scheduled_execution_time.strftime("%Y-%m-%d")
    topics = topic_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
    if not topics:
        return SkipReason("no topic partitions yet: add topics with `opengrok topics sync` or the topic sensor")
    return [
        RunRequest(run_key=f"{round_key}|{topic}", partition_key=collection_partition_key(topic, round_key))
        for topic in topics
    ]


@schedule(job=prepare_job, cron_schedule=retrain_cron(), execution_timezone="UTC")
def retrain_schedule(context: ScheduleEvaluationContext):
    """Rebuild the filtered set, prompt feedback and mask tables with their default config, as the review sensor
    and the UI do (OPENGROK_RETRAIN_CRON, default Mondays at 04:00 UTC). The fine-tunes and the report follow only when the
    mask tables' data changed, so a week without new responses or review decisions retrains nothing."""
    if context.instance.get_latest_materialization_event(AssetKey("raw_responses")) is None:
        return SkipReason("no teacher responses collected yet: start recollect_schedule or run `opengrok run`")
    return RunRequest(run_key=f"retrain-{context.scheduled_execution_time:%Y-%m-%d}")
