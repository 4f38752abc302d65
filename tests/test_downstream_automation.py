"""Downstream automation, with Dagster's testing utilities: the retrain schedule and its cron setting, and the
declarative conditions on lora_checkpoint and eval_report evaluated tick by tick against a real instance whose
materialisations carry the data versions the real assets report."""

import time
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    DataVersion,
    DefaultSensorStatus,
    Output,
    asset,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill  # how the daemon records backfills
from dagster._core.utils import make_new_backfill_id

from opengrok_dagster.automation import (
    DOWNSTREAM_AUTOMATED_ASSETS,
    FOLLOWS_UPSTREAM_DATA,
    downstream_automation_sensor,
    training_set_drift_sensor,
)
from opengrok_dagster.partitions import MASK_MODES, mask_mode_partitions, post_shard_partitions
from opengrok_dagster.schedules import retrain_schedule
from opengrok_dagster.settings import SettingsError, retrain_cron, retrain_threshold


MONDAY_0400 = datetime(2026, 11, 23, 4, tzinfo=UTC)


@pytest.fixture
def defs(tmp_path, monkeypatch):
    """The real code location, with its home under tmp_path."""
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path / "home"))
    from opengrok_dagster.definitions import build_definitions

    return build_definitions()


def record(instance, asset: str, data_version: str, partitions=(None,)):
    """What a finished materialisation leaves in the event log: the event with its data version."""
    for partition in partitions:
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=asset, partition=partition, tags={"dagster/data_version": data_version})
        )


class Ticks:
    """Successive evaluations of the automation sensor, each continuing from the previous tick's cursor."""

    def __init__(self, defs, instance, assets=DOWNSTREAM_AUTOMATED_ASSETS):
        self.defs, self.instance, self.assets, self.cursor = defs, instance, assets, None

    def requested(self) -> dict[str, set]:
        result = evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        requested = {}
        for asset_name in self.assets:
            partitions = result.get_requested_partitions(AssetKey(asset_name))
            if partitions:
                requested[asset_name] = partitions
        return requested


def trained_everything(instance, version: str):
    """The state after a full pipeline run: every asset of the chain materialised from data ``version``."""
    record(instance, "filtered_responses", f"filtered-{version}")
    record(instance, "mask_tables", f"masks-{version}")
    record(instance, "lora_checkpoint", f"lora-{version}", partitions=MASK_MODES)
    record(instance, "eval_report", f"report-{version}")


def test_unchanged_rerun_of_the_training_data_starts_nothing(defs, persistent_instance):
    ticks = Ticks(defs, persistent_instance)
    trained_everything(persistent_instance, "v1")
    assert ticks.requested() == {}  # the first tick only records where things stand

    record(persistent_instance, "filtered_responses", "filtered-v1")
    record(persistent_instance, "mask_tables", "masks-v1")
    assert ticks.requested() == {}
    assert ticks.requested() == {}


def test_changed_mask_tables_retrain_every_mode_and_rebuild_the_report_once(defs, persistent_instance):
    ticks = Ticks(defs, persistent_instance)
    trained_everything(persistent_instance, "v1")
    ticks.requested()

    record(persistent_instance, "filtered_responses", "filtered-v2")
    record(persistent_instance, "mask_tables", "masks-v2")
    # One tick requests every mode and the report: the sensor emits them as one backfill, report last.
    assert ticks.requested() == {"lora_checkpoint": set(MASK_MODES), "eval_report": {None}}
    with backfill_in_progress(defs, persistent_instance):
        record(persistent_instance, "lora_checkpoint", "lora-v2", partitions=["none", "paper"])
        assert ticks.requested() == {}  # new checkpoints while the backfill runs: its report is still to come
        record(persistent_instance, "lora_checkpoint", "lora-v2", partitions=["hard", "soft"])
        record(persistent_instance, "eval_report", "report-v2")
    assert ticks.requested() == {"promoted_student": {None}}  # the new report may promote another adapter
    assert ticks.requested() == {}


def test_report_follows_a_filtered_set_change_even_when_the_checkpoints_were_reused(defs, persistent_instance):
    """Review decisions change the filtered set (and so the test split) without rebuilding the mask tables."""
    ticks = Ticks(defs, persistent_instance)
    trained_everything(persistent_instance, "v1")
    ticks.requested()

    record(persistent_instance, "filtered_responses", "filtered-reviewed")
    assert ticks.requested() == {"eval_report": {None}}
    assert ticks.requested() == {}


def test_one_retrained_mode_refreshes_the_report_and_no_other_mode(defs, persistent_instance):
    ticks = Ticks(defs, persistent_instance)
    trained_everything(persistent_instance, "v1")
    ticks.requested()

    record(persistent_instance, "lora_checkpoint", "lora-paper-v2", partitions=["paper"])
    assert ticks.requested() == {"eval_report": {None}, "promoted_student": {None}}  # one run, report first


def test_a_change_seen_while_upstream_work_runs_is_acted_on_once_it_finishes(defs, persistent_instance):
    ticks = Ticks(defs, persistent_instance)
    trained_everything(persistent_instance, "v1")
    ticks.requested()

    with backfill_in_progress(
        defs, persistent_instance, assets=["filtered_responses", "prompt_feedback", "mask_tables"]
    ):
        record(persistent_instance, "filtered_responses", "filtered-v2")  # the prepare run is half done
        assert ticks.requested() == {}
        record(persistent_instance, "mask_tables", "masks-v2")
    assert ticks.requested() == {"lora_checkpoint": set(MASK_MODES), "eval_report": {None}}


@contextmanager
def backfill_in_progress(defs, instance, assets=DOWNSTREAM_AUTOMATED_ASSETS):
    """A running backfill of ``assets``, as the daemon records one, completed on exit."""
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=None,
        asset_selection=[AssetKey(asset) for asset in assets],
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=True,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    yield
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))


def test_the_automation_sensor_runs_by_default_and_evaluates_exactly_the_downstream_assets(defs):
    sensor = defs.resolve_sensor_def(downstream_automation_sensor.name)
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert sensor.asset_selection.resolve(graph) == {AssetKey(asset) for asset in DOWNSTREAM_AUTOMATED_ASSETS}
    automated = {key for key in graph.get_all_asset_keys() if graph.get(key).automation_condition is not None}
    assert automated == {AssetKey(asset) for asset in DOWNSTREAM_AUTOMATED_ASSETS}
    # Every automated asset is covered by our sensor, so Dagster adds no stopped default sensor beside it.
    assert "default_automation_condition_sensor" not in {s.name for s in defs.get_repository_def().sensor_defs}


def test_retrain_schedule_rebuilds_the_training_data_once_per_scheduled_day(persistent_instance):
    record(persistent_instance, "raw_responses", "raw-v1", partitions=["2026-11-22|climate"])
    context = build_schedule_context(instance=persistent_instance, scheduled_execution_time=MONDAY_0400)
    request = retrain_schedule(context)
    assert request.run_key == "retrain-2026-11-23"
    assert retrain_schedule.job_name == "prepare_training_data"


def test_retrain_schedule_skips_with_a_reason_before_anything_is_collected(persistent_instance):
    context = build_schedule_context(instance=persistent_instance, scheduled_execution_time=MONDAY_0400)
    assert "no teacher responses collected yet" in retrain_schedule(context).skip_message


def test_retrain_cron_is_weekly_by_default_and_comes_from_the_environment(monkeypatch):
    assert retrain_schedule.cron_schedule == "0 4 * * 1"
    monkeypatch.setenv("OPENGROK_RETRAIN_CRON", "0 2 1 * *")
    assert retrain_cron() == "0 2 1 * *"
    monkeypatch.setenv("OPENGROK_RETRAIN_CRON", " ")
    assert retrain_cron() == "0 4 * * 1"


@pytest.mark.parametrize("cron", ["weekly", "0 4 * * 8", "0 4 * *"])
def test_invalid_retrain_cron_names_the_variable_and_the_fix(monkeypatch, cron):
    monkeypatch.setenv("OPENGROK_RETRAIN_CRON", cron)
    with pytest.raises(SettingsError) as error:
        retrain_cron()
    message = str(error.value)
    assert f"OPENGROK_RETRAIN_CRON={cron!r} is not a cron schedule" in message
    assert "'0 4 * * 1' Mondays at 04:00" in message and "weekly default" in message


@asset(name="mask_tables", code_version="1")
def stand_in_mask_tables(context):
    """Reports a content data version as the real asset does; the content is chosen by the run's tag."""
    content = context.run.tags["content"]
    return Output(content, data_version=DataVersion(content))


@asset(
    name="lora_checkpoint",
    code_version="1",
    partitions_def=mask_mode_partitions,
    automation_condition=FOLLOWS_UPSTREAM_DATA,
)
def stand_in_lora_checkpoint(mask_tables):
    """Like the real asset, returns no data version: Dagster derives it from the code and input versions."""
    return mask_tables


def test_real_runs_report_versions_that_start_training_only_for_new_content(persistent_instance):
    stand_ins = [stand_in_mask_tables, stand_in_lora_checkpoint]
    ticks = Ticks(stand_ins, persistent_instance, assets=["lora_checkpoint"])
    materialize([stand_in_mask_tables], instance=persistent_instance, tags={"content": "a"})
    for mode in MASK_MODES:
        materialize(
            stand_ins,
            selection="lora_checkpoint",
            partition_key=mode,
            instance=persistent_instance,
            tags={"content": "a"},
        )
    ticks.requested()

    materialize([stand_in_mask_tables], instance=persistent_instance, tags={"content": "a"})
    assert ticks.requested() == {}
    materialize([stand_in_mask_tables], instance=persistent_instance, tags={"content": "b"})
    assert ticks.requested() == {"lora_checkpoint": set(MASK_MODES)}


@asset(name="filtered_responses")
def stand_in_filtered_responses(context):
    """Reports the trainable split counts the real asset reports, taken from the run's tags."""
    rows = {split: int(context.run.tags[split]) for split in ("train_rows", "validation_rows")}
    return Output(rows, metadata=rows)


@asset(name="mask_tables")
def stand_in_mask_tables_of_filtered(filtered_responses):
    return filtered_responses


def filter_run(instance, train_rows: int, with_masks: bool = False):
    stand_ins = [stand_in_filtered_responses, stand_in_mask_tables_of_filtered]
    materialize(
        stand_ins,
        selection=None if with_masks else "filtered_responses",
        instance=instance,
        tags={"train_rows": str(train_rows), "validation_rows": "20"},
    )


def drift(instance):
    return training_set_drift_sensor(build_sensor_context(instance=instance))


def test_drift_sensor_rebuilds_the_mask_tables_only_beyond_the_threshold(persistent_instance):
    assert "no mask tables built" in drift(persistent_instance).skip_message
    filter_run(persistent_instance, train_rows=100, with_masks=True)  # 120 trainable rows
    assert "built from the latest filtered set" in drift(persistent_instance).skip_message

    filter_run(persistent_instance, train_rows=110)  # review decisions: 130 rows, +8%
    assert drift(persistent_instance).skip_message == "trainable rows 120 -> 130 (8%), below the 20% retrain threshold"
    filter_run(persistent_instance, train_rows=140)  # 160 rows, +33% against what the mask tables were built from
    request = drift(persistent_instance)
    assert request.tags == {"opengrok/trainable_rows": "120 -> 160"}
    assert drift(persistent_instance).run_key == request.run_key  # the same filtered set is rebuilt once


def test_drift_threshold_comes_from_the_environment(persistent_instance, monkeypatch):
    filter_run(persistent_instance, train_rows=100, with_masks=True)
    filter_run(persistent_instance, train_rows=110)
    monkeypatch.setenv("OPENGROK_RETRAIN_THRESHOLD", "0.05")
    assert retrain_threshold() == 0.05
    assert drift(persistent_instance).run_key


@pytest.mark.parametrize("value", ["20%", "0", "-0.1", "nan"])
def test_invalid_drift_threshold_names_the_variable_and_the_fix(monkeypatch, value):
    monkeypatch.setenv("OPENGROK_RETRAIN_THRESHOLD", value)
    with pytest.raises(
        SettingsError, match=rf"OPENGROK_RETRAIN_THRESHOLD='{value}' is not a positive fraction: .*e\.g\. 0\.2"
    ):
        retrain_threshold()


def labelled_everything(instance):
    """After a full run and labelling: two posts shards, an adapter promoted, both shards labelled by it."""
    instance.add_dynamic_partitions(post_shard_partitions.name, ["a", "b"])
    trained_everything(instance, "v1")
    record(instance, "posts", "posts-v1", partitions=["a", "b"])
    check(instance, "posts", "no_eval_posts", True, partitions=["a", "b"])
    record(instance, "promoted_student", "hard-v1")
    promotion_check(instance, passed=True)
    record(instance, "post_labels", "labels-v1", partitions=["a", "b"])


def check(instance, asset: str, name: str, passed: bool, partitions=(None,)):
    """A blocking check's evaluation, as the asset's run records it after its materialisation."""
    for partition in partitions:
        instance.report_runless_asset_event(
            AssetCheckEvaluation(
                asset_key=AssetKey(asset),
                check_name=name,
                passed=passed,
                severity=AssetCheckSeverity.ERROR,
                blocking=True,
                partition=partition,
            )
        )


def promotion_check(instance, passed: bool):
    check(instance, "promoted_student", "promotion_earned", passed)


def test_post_labels_follow_their_shard_and_a_new_promotion_and_nothing_else(defs, persistent_instance):
    ticks = Ticks(defs, persistent_instance)
    labelled_everything(persistent_instance)
    assert ticks.requested() == {}

    record(persistent_instance, "posts", "posts-a-v2", partitions=["a"])
    assert ticks.requested() == {"post_labels": {"a"}}  # the changed shard only
    record(persistent_instance, "post_labels", "labels-a-v2", partitions=["a"])
    record(persistent_instance, "posts", "posts-v1", partitions=["b"])  # a rerun that read the same posts
    record(persistent_instance, "promoted_student", "hard-v1")  # the same adapter promoted again
    promotion_check(persistent_instance, passed=True)
    assert ticks.requested() == {}

    record(persistent_instance, "promoted_student", "soft-v1")
    promotion_check(persistent_instance, passed=True)
    assert ticks.requested() == {"post_labels": {"a", "b"}}


def test_no_shard_is_relabelled_while_the_promotion_check_fails(defs, persistent_instance):
    ticks = Ticks(defs, persistent_instance)
    labelled_everything(persistent_instance)
    ticks.requested()

    record(persistent_instance, "promoted_student", "nothing-promoted")
    promotion_check(persistent_instance, passed=False)
    assert ticks.requested() == {}
