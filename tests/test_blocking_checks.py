"""Blocking checks block: for every blocking asset check, a run holding the checked asset and the asset that reads it
shows the check failing, the run failing, and the downstream step never starting nor writing anything.

The checks' own verdicts are tested beside their assets; here a check's verdict is turned to a failure as it is
yielded (the real asset runs on good data, with the real downstream asset in the run), so what is proved is the
wiring a user relies on: a check that stops being blocking fails its case here. `finite_validation_loss` is failed
for real (a fine-tune whose validation loss is NaN), since no other test reaches that branch.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from dagster import AssetCheckResult, AssetSpec, load_assets_from_modules, materialize
from transformers import AutoModelForCausalLM

from assets import collection, distillation, evaluation, filtering, labelling, masks, posts, training
from assets.collection import prompts, raw_responses
from assets.distillation import kd_targets
from assets.evaluation import eval_report
from assets.filtering import filtered_responses
from assets.masks import mask_tables
from assets.training import lora_checkpoint
from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import CONFIG_DIR
from resources import (
    HubResource,
    OpenGrokPaths,
    ParquetIOManager,
    StudentResource,
    TeacherResource,
    TrainingResource,
)
from tests.conftest import GENERATIVE_ONLY, QUICK, mask_table
from tests.test_distill_assets import upstream as distillation_upstream
from tests.test_filter_assets import raw_frame, sentiment_tweets, write_raw
from tests.test_mask_assets import upstream as mask_upstream


ROUND = "2026-11-24"
TOPICS = str(CONFIG_DIR / "topics.yaml")

# Blocking checks whose asset has no downstream asset that can share its run: `posts` is partitioned by shard and
# its readers by topic x round (Dagster runs one partitions definition per run, so the check blocks the automation's
# next run instead: tests/test_posts.py); `eval_report` is the last asset of the graph.
NO_DOWNSTREAM_IN_THE_SAME_RUN = {
    "posts:no_eval_posts",
    "eval_report:every_variant_scored",
    "eval_report:metrics_in_range",
}
# promoted_student is unpartitioned and post_labels partitioned by shard: they cannot share a run either;
# tests/test_labelling_assets.py::test_nothing_earns_it_nothing_is_promoted_and_labelling_is_refused shows that
# nothing is labelled when the check fails.
NO_DOWNSTREAM_IN_THE_SAME_RUN |= {"promoted_student:promotion_earned"}


def resources(home: Path, teacher_url: str = "http://127.0.0.1:9/v1", model: str | None = None) -> dict:
    return {
        "io_manager": ParquetIOManager(base_dir=str(home / "assets")),
        "paths": OpenGrokPaths(home=str(home), topic_catalogue=TOPICS),
        "teacher": TeacherResource(mode="remote", base_url=teacher_url, model="grok-test"),
        "student": StudentResource(model=model) if model else StudentResource(),
        "training": TrainingResource(device="cpu"),
        "hub": HubResource(),
    }


@dataclass(frozen=True)
class Blocked:
    """A run of ``assets`` in which ``downstream`` reads the checked asset; ``written`` is what it would publish."""

    module: object  # the asset module that yields the check
    run: Callable  # (home, instance) -> run result
    downstream: str
    written: Callable[[Path], list[Path]]


def collection_run(home: Path, instance, downstream=(raw_responses,)):
    with LoopbackTeacher(LoopbackConfig()) as teacher:
        instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
        return materialize(
            [prompts, *downstream],
            resources=resources(home, teacher.base_url),
            instance=instance,
            partition_key=collection_partition_key("climate", ROUND),
            run_config=GENERATIVE_ONLY,
            raise_on_error=False,
        )


def filtering_run(home: Path, instance):
    write_raw(home, raw_frame(sentiment_tweets(40), "climate", ROUND))
    return materialize(
        [filtered_responses, mask_tables], resources=resources(home), instance=instance, raise_on_error=False
    )


def masks_run(home: Path, instance):
    mask_upstream(home)
    return materialize(
        [AssetSpec("filtered_responses"), AssetSpec("raw_responses"), mask_tables, kd_targets],
        resources=resources(home),
        instance=instance,
        raise_on_error=False,
    )


def distillation_run(home: Path, instance):
    """kd_targets and the fine-tune that reads it (kd_alpha > 0), one mask mode."""
    from transformers import AutoTokenizer

    from opengrok_dagster.offline_model import offline_model_dir

    distillation_upstream(home, AutoTokenizer.from_pretrained(str(offline_model_dir())))
    return materialize(
        [
            AssetSpec("filtered_responses"),
            AssetSpec("mask_tables"),
            AssetSpec("raw_responses"),
            kd_targets,
            lora_checkpoint,
        ],
        resources=resources(home),
        instance=instance,
        partition_key="none",
        run_config={"ops": {"lora_checkpoint": {"config": QUICK | {"kd_alpha": 0.5}}}},
        raise_on_error=False,
    )


def checkpoint_written(home: Path) -> list[Path]:
    return [home / "assets" / "lora_checkpoint", home / "checkpoints" / "none"]


BLOCKED = {
    "prompts:unique_prompt_ids": Blocked(
        collection, collection_run, "raw_responses", lambda home: [home / "assets" / "raw_responses"]
    ),
    "prompts:within_daily_budget": Blocked(
        collection, collection_run, "raw_responses", lambda home: [home / "assets" / "raw_responses"]
    ),
    "raw_responses:error_rate": Blocked(
        collection,
        lambda home, instance: collection_run(home, instance, (raw_responses, filtered_responses)),
        "filtered_responses",
        lambda home: [home / "assets" / "filtered_responses.parquet"],
    ),
    **{
        f"filtered_responses:{name}": Blocked(
            filtering, filtering_run, "mask_tables", lambda home: [home / "assets" / "mask_tables.parquet"]
        )
        for name in (
            "every_row_has_one_state",
            "training_set_not_empty",
            "rejection_rate_within_bound",
            "no_pii_in_kept_text",
            "no_duplicates_in_kept_text",
        )
    },
    **{
        f"mask_tables:{name}": Blocked(
            masks, masks_run, "kd_targets", lambda home: [home / "assets" / "kd_targets.parquet"]
        )
        for name in (
            "lengths_match_tokens",
            "p_in_unit_interval",
            "template_tokens_unmasked",
            "unmasked_rate_within_bounds",
        )
    },
    "kd_targets:aligned_share_at_least_minimum": Blocked(
        distillation, distillation_run, "lora_checkpoint", checkpoint_written
    ),
}


def blocking_checks() -> set[str]:
    """Every blocking check of the code location, as ``asset:check``."""
    definitions = load_assets_from_modules(
        [posts, collection, filtering, masks, distillation, training, evaluation, labelling]
    )
    return {
        f"{spec.asset_key.to_user_string()}:{spec.name}"
        for definition in definitions
        for spec in definition.check_specs
        if spec.blocking
    }


def test_every_blocking_check_is_shown_to_block():
    assert blocking_checks() == set(BLOCKED) | NO_DOWNSTREAM_IN_THE_SAME_RUN | {
        "lora_checkpoint:finite_validation_loss"
    }


def failing(check: str):
    """AssetCheckResult as the asset module sees it, with ``check``'s verdict turned to a failure."""

    def result(*args, **kwargs):
        if kwargs.get("check_name") == check:
            kwargs |= {"passed": False}
        return AssetCheckResult(*args, **kwargs)

    return result


def step_started(result, step: str) -> bool:
    return any(e.event_type_value == "STEP_START" and e.step_key == step for e in result.all_events)


def assert_blocked(result, check: str, downstream: str, written: list[Path]) -> None:
    asset, name = check.split(":")
    verdicts = {
        f"{e.asset_check_key.asset_key.to_user_string()}:{e.asset_check_key.name}": e.passed
        for e in result.get_asset_check_evaluations()
    }
    assert verdicts[check] is False, verdicts
    assert not result.success, f"{check} failed but the run succeeded"
    assert not step_started(result, downstream), f"{check} failed but {downstream} ran: the check did not block"
    assert not [path for path in written if path.exists()], f"{downstream} wrote after {check} failed"


@pytest.mark.parametrize("check", sorted(BLOCKED))
def test_a_failing_blocking_check_stops_its_downstream_asset_in_the_same_run(check, tmp_path, instance, monkeypatch):
    case = BLOCKED[check]
    monkeypatch.setattr(case.module, "AssetCheckResult", failing(check.split(":")[1]))
    result = case.run(tmp_path, instance)
    assert_blocked(result, check, case.downstream, case.written(tmp_path))


def test_a_fine_tune_whose_validation_loss_is_not_finite_fails_its_check_and_is_not_evaluated(
    tmp_path, tiny_student, tokenizer, instance
):
    """The real failing branch of finite_validation_loss: training loss finite, validation loss NaN. The tiny
    student's input embedding of a token only the validation examples hold is NaN (untied from the output head, and
    frozen under LoRA), so training is unharmed and every evaluation is NaN."""
    table = mask_table(tokenizer)
    poisoned = tokenizer.convert_tokens_to_ids("zebra")
    assert poisoned not in {token for ids in table["input_ids"] for token in ids}
    validation = table["split"] == "validation"
    table.loc[validation, "input_ids"] = table.loc[validation, "input_ids"].map(
        lambda ids: [ids[0], poisoned, *ids[2:]]
    )
    model_path = tmp_path / "student" / Path(tiny_student).name
    model = AutoModelForCausalLM.from_pretrained(tiny_student, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
        model.model.embed_tokens.weight[poisoned] = float("nan")
    model.save_pretrained(model_path)
    tokenizer.save_pretrained(model_path)
    home = tmp_path / "home"
    (home / "assets").mkdir(parents=True)
    table.to_parquet(home / "assets" / "mask_tables.parquet")
    filtering_frame = pd.DataFrame({"example_id": ["e1"], "state": ["kept"]})
    filtering_frame.to_parquet(home / "assets" / "filtered_responses.parquet")
    result = materialize(
        [AssetSpec("mask_tables"), AssetSpec("filtered_responses"), lora_checkpoint, eval_report],
        resources=resources(home, model=str(model_path)),
        instance=instance,
        partition_key="none",
        run_config={"ops": {"lora_checkpoint": {"config": QUICK}}},
        raise_on_error=False,
    )
    assert_blocked(
        result,
        "lora_checkpoint:finite_validation_loss",
        "eval_report",
        [home / "assets" / "eval_report.parquet", home / "reports"],
    )
