"""Sensors: topic and posts-shard partitions in step with their catalogues, re-filtering on review decisions,
failed runs recorded."""

import json
from datetime import UTC, datetime

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from opengrok_dagster.collect.topics import load_topic_catalogue
from opengrok_dagster.partitions import post_shard_partitions, topic_partitions
from opengrok_dagster.posts.sources import load_posts_catalogue
from opengrok_dagster.settings import posts_catalogue_path, topic_catalogue_path
from resources import OpenGrokPaths


@sensor(minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def topic_catalogue_sensor(context: SensorEvaluationContext):
    """Add every catalogue topic that is not yet a partition. Removal is manual (`opengrok topics remove`),
    so deleting a line from the file never hides data already collected."""
    catalogue = [topic.key for topic in load_topic_catalogue(topic_catalogue_path())]
    existing = set(context.instance.get_dynamic_partitions(topic_partitions.name))
    missing = [key for key in catalogue if key not in existing]
    if not missing:
        return SkipReason("every catalogue topic is already a partition")
    return SensorResult(dynamic_partitions_requests=[topic_partitions.build_add_request(missing)])


@sensor(minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def posts_catalogue_sensor(context: SensorEvaluationContext):
    """Add every posts-catalogue shard that is not yet a partition; a new shard is then a backfill of that key."""
    catalogue = [shard.key for shard in load_posts_catalogue(posts_catalogue_path())]
    existing = set(context.instance.get_dynamic_partitions(post_shard_partitions.name))
    missing = [key for key in catalogue if key not in existing]
    if not missing:
        return SkipReason("every posts-catalogue shard is already a partition")
    return SensorResult(dynamic_partitions_requests=[post_shard_partitions.build_add_request(missing)])


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING, monitor_all_code_locations=False)
def run_failure_recorder(context: RunFailureSensorContext, paths: OpenGrokPaths):
    """Record each failed run where an operator looks: one JSON line in $OPENGROK_HOME/logs/run-failures.jsonl
    (for `tail -f`, log shippers and alerting) and an engine event on the run itself, so the run's page in
    the UI says the failure was recorded and where. Failures are read from the event log, so a failure is
    recorded once even when the daemon restarts."""
    run = context.dagster_run
    failed_steps = [event.step_key for event in context.get_step_failure_events()]
    record = {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "backfill": run.tags.get("dagster/backfill"),
        "failed_steps": failed_steps,
        "message": context.failure_event.message,
    }
    log_file = paths.layout.run_failures_log
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as failures:
        failures.write(json.dumps(record) + "\n")
    context.instance.report_engine_event(
        f"run failure recorded in {log_file} (failed steps: {', '.join(failed_steps) or 'none: the run failed outside a step'})",
        dagster_run=run,
    )
    context.log.warning(f"run {run.run_id} of {run.job_name} failed: {context.failure_event.message}")


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    target=AssetSelection.assets("filtered_responses"),
)
def review_decisions_sensor(context: SensorEvaluationContext):
    """Re-materialise the filtered set when reviewers record new decisions (cursor: the last decision id),
    so accepted rows join the training set and rejected ones leave the queue."""
    from opengrok_dagster.filtering.review import ReviewStore
    from opengrok_dagster.settings import home_layout

    with ReviewStore(home_layout().review_store_path) as store:
        last_id = store.last_decision_id()
    seen = int(context.cursor or 0)
    if last_id <= seen:
        return SkipReason("no new review decisions")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"review-decisions-{last_id}", tags={"opengrok/review_decisions": f"{seen + 1}-{last_id}"}
            )
        ],
        cursor=str(last_id),
    )
