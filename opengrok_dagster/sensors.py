"""Sensors: keep the topic partitions in step with the topic catalogue file."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from opengrok_dagster.collect.topics import load_topic_catalogue
from opengrok_dagster.partitions import topic_partitions
from opengrok_dagster.settings import topic_catalogue_path


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
