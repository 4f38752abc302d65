"""Scheduled re-collection of teacher data: every topic, one new round a day by default."""

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from opengrok_dagster.jobs import collect_job
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import recollect_cron


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
