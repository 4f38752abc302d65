"""Declarative automation of the downstream chain: when the mask tables change, every LoRA checkpoint mode is
retrained, and when a checkpoint or the filtered set changes, the evaluation report is rebuilt.

"Changed" means a new data version (assets/versioning.py hashes content; lora_checkpoint's version derives from
its code version and the mask tables' version), so re-running an upstream asset that produced the same data
starts nothing downstream. The retrain schedule (schedules.py) sets the cadence by rebuilding the mask tables.

When the mask tables change, the fine-tunes (four partitions) and the report are requested on the same tick, and
the sensor emits them as one backfill, which runs the report only after the fine-tunes it depends on.

Between scheduled rebuilds, review decisions change the filtered set alone; `training_set_drift_sensor`
rebuilds the mask tables (and so sets off the retrain) once the trainable rows moved beyond a threshold.
"""

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from opengrok_dagster.settings import retrain_threshold


FOLLOWS_UPSTREAM_DATA = (
    # A change is remembered until this asset is requested or updated, so a change seen while the guards below
    # hold is acted on once they clear, and never twice.
    AutomationCondition.any_deps_match(AutomationCondition.data_version_changed()).since_last_handled()
    # Upstream work in flight may change the data again: wait for it rather than train on what is being replaced.
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("upstream data version changed")

# The same, once the upstream assets' blocking checks passed: post_labels waits for a promoted student.
FOLLOWS_UPSTREAM_DATA_ONCE_CHECKED = (
    FOLLOWS_UPSTREAM_DATA & AutomationCondition.all_deps_blocking_checks_passed()
).with_label("upstream data version changed, its blocking checks passed")

# Assets that follow their upstream data, and the sensor that evaluates them.
DOWNSTREAM_AUTOMATED_ASSETS = ("lora_checkpoint", "eval_report", "promoted_student", "post_labels")

downstream_automation_sensor = AutomationConditionSensorDefinition(
    "downstream_automation_sensor",
    target=AssetSelection.assets(*DOWNSTREAM_AUTOMATED_ASSETS),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Retrains every LoRA checkpoint mode when the mask tables' data changed, then rebuilds the evaluation "
    "report and the promotion, and relabels the posts shards when their posts or the promoted student changed; an "
    "upstream rerun that produced the same data starts nothing.",
)


# Dagster's provenance tag on a materialisation: the storage id of the input event it read.
FILTERED_SET_READ_TAG = "dagster/input_event_pointer/filtered_responses"
TRAINABLE_SPLITS = ("train_rows", "validation_rows")


def _trainable_rows(record) -> int:
    """Kept train + validation rows, from the filtered set's materialisation metadata."""
    metadata = record.asset_materialization.metadata
    return sum(int(metadata[split].value) for split in TRAINABLE_SPLITS if split in metadata)


@sensor(
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    target=AssetSelection.assets("mask_tables"),
)
def training_set_drift_sensor(context: SensorEvaluationContext):
    """Rebuild the mask tables when the filtered set's trainable rows differ from those the current mask tables
    were built from by more than OPENGROK_RETRAIN_THRESHOLD (default 20%); the fine-tunes then follow."""
    threshold = retrain_threshold()
    instance = context.instance
    [masks] = instance.fetch_materializations(AssetKey("mask_tables"), limit=1).records or [None]
    [latest] = instance.fetch_materializations(AssetKey("filtered_responses"), limit=1).records or [None]
    if masks is None or latest is None or FILTERED_SET_READ_TAG not in masks.asset_materialization.tags:
        return SkipReason(
            "no mask tables built from a filtered set yet: the retrain schedule or a manual run builds the first"
        )
    built_from_id = int(masks.asset_materialization.tags[FILTERED_SET_READ_TAG])
    if latest.storage_id <= built_from_id:
        return SkipReason("the mask tables were built from the latest filtered set")
    [built_from] = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey("filtered_responses"), storage_ids=[built_from_id]), limit=1
    ).records
    before, now = _trainable_rows(built_from), _trainable_rows(latest)
    change = abs(now - before) / max(before, 1)
    if change < threshold:
        return SkipReason(
            f"trainable rows {before} -> {now} ({change:.0%}), below the {threshold:.0%} retrain threshold"
        )
    return RunRequest(
        run_key=f"filtered-set-{latest.storage_id}",  # one rebuild per filtered set, however often the sensor ticks
        tags={"opengrok/trainable_rows": f"{before} -> {now}"},
    )
