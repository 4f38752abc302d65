"""Declarative automation of the downstream chain: when the mask tables change, every LoRA checkpoint mode is
retrained, and when a checkpoint or the filtered set changes, the evaluation report is rebuilt.

"Changed" means a new data version (assets/versioning.py hashes content; lora_checkpoint's version derives from
its code version and the mask tables' version), so re-running an upstream asset that produced the same data
starts nothing downstream. The retrain schedule (schedules.py) sets the cadence by rebuilding the mask tables.

When the mask tables change, the fine-tunes (four partitions) and the report are requested on the same tick, and
the sensor emits them as one backfill, which runs the report only after the fine-tunes it depends on.
"""

from dagster import AssetSelection, AutomationCondition, AutomationConditionSensorDefinition, DefaultSensorStatus

FOLLOWS_UPSTREAM_DATA = (
    # A change is remembered until this asset is requested or updated, so a change seen while the guards below
    # hold is acted on once they clear, and never twice.
    AutomationCondition.any_deps_match(AutomationCondition.data_version_changed()).since_last_handled()
    # Upstream work in flight may change the data again: wait for it rather than train on what is being replaced.
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("upstream data version changed")

# Assets that follow their upstream data, and the sensor that evaluates them.
DOWNSTREAM_AUTOMATED_ASSETS = ("lora_checkpoint", "eval_report")

downstream_automation_sensor = AutomationConditionSensorDefinition(
    "downstream_automation_sensor",
    target=AssetSelection.assets(*DOWNSTREAM_AUTOMATED_ASSETS),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Retrains every LoRA checkpoint mode when the mask tables' data changed, then rebuilds the evaluation "
    "report; an upstream rerun that produced the same data starts nothing.",
)
