"""The re-collection schedule and the topic catalogue sensor, with Dagster's testing utilities."""

from datetime import UTC, datetime

from dagster import build_schedule_context, build_sensor_context

from opengrok_dagster.partitions import topic_partitions
from opengrok_dagster.schedules import recollect_schedule
from opengrok_dagster.sensors import topic_catalogue_sensor


def test_schedule_requests_one_run_per_topic_for_the_days_round(persistent_instance):
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate", "football"])
    context = build_schedule_context(
        instance=persistent_instance, scheduled_execution_time=datetime(2026, 11, 24, 3, tzinfo=UTC)
    )
    requests = recollect_schedule(context)
    assert sorted(r.partition_key for r in requests) == ["2026-11-24|climate", "2026-11-24|football"]
    assert len({r.run_key for r in requests}) == 2  # one run per topic and day, never duplicated


def test_schedule_skips_with_a_reason_when_there_are_no_topics(persistent_instance):
    context = build_schedule_context(
        instance=persistent_instance, scheduled_execution_time=datetime(2026, 11, 24, 3, tzinfo=UTC)
    )
    assert "opengrok topics sync" in recollect_schedule(context).skip_message


def test_schedule_is_daily_by_default():
    assert recollect_schedule.cron_schedule == "0 3 * * *"


def test_sensor_adds_only_missing_catalogue_topics(persistent_instance):
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate", "my-extra-topic"])
    result = topic_catalogue_sensor(build_sensor_context(instance=persistent_instance))
    [request] = result.dynamic_partitions_requests
    assert list(request.partition_keys) == ["smartphones", "football"]
    persistent_instance.add_dynamic_partitions(topic_partitions.name, list(request.partition_keys))
    assert topic_catalogue_sensor(build_sensor_context(instance=persistent_instance)).skip_message
