"""The distilled student at work: the adapter that earned promotion, and the labels it gives the user's posts."""

import hashlib
import json

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from assets.config import config_from
from assets.versioning import asset_code_version, content_data_version
from opengrok_dagster.automation import FOLLOWS_UPSTREAM_DATA, FOLLOWS_UPSTREAM_DATA_ONCE_CHECKED
from opengrok_dagster.evaluation.local import CheckpointError, LocalStudent, find_checkpoints, read_checkpoint
from opengrok_dagster.instance import GPU_POOL
from opengrok_dagster.labelling.labeller import LabellingConfig, PostLabeller, label_posts, sample_posts
from opengrok_dagster.labelling.promotion import (
    PromotionConfig,
    PromotionError,
    choose,
    promotion_record,
    read_manual_choice,
    require_compatible,
    teacher_agreement,
)
from opengrok_dagster.partitions import post_shard_partitions
from opengrok_dagster.profiles import POST_LABELS, with_profile_defaults
from opengrok_dagster.training import MASK_MODES
from opengrok_dagster.training.device import DeviceUnavailableError
from opengrok_dagster.training.manifest import adapter_dirs
from resources import OpenGrokPaths, StudentResource


class PromotedStudentConfig(config_from(PromotionConfig)):
    """When an adapter earns promotion (fields from ``PromotionConfig``); `opengrok promote MODE` overrides it."""


def _student_fingerprint(model_path: str) -> str:
    from transformers import AutoTokenizer

    from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint

    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_path))


@asset(
    ins={"lora_checkpoint": AssetIn(metadata={"allow_missing_partitions": True})},
    group_name="labelling",
    automation_condition=FOLLOWS_UPSTREAM_DATA,
    code_version=asset_code_version("promoted_student"),
    kinds={"python", "parquet"},
    check_specs=[
        AssetCheckSpec(
            "promotion_earned",
            asset="promoted_student",
            blocking=True,
            description="An adapter is promoted: by the rule (its difference over base has a lower bound above the "
            "margin) or by hand (`opengrok promote MODE`); otherwise nothing downstream labels posts.",
        )
    ],
)
def promoted_student(
    context: AssetExecutionContext,
    config: PromotedStudentConfig,
    eval_report: pd.DataFrame,
    lora_checkpoint: dict[str, pd.DataFrame],
    paths: OpenGrokPaths,
    student: StudentResource,
):
    """The one adapter that labels the user's posts, why it was picked, its model card and its lineage.

    The data version names the adapter (mask mode and weights digest) only, so a rerun that promotes the same
    adapter relabels nothing, and a new one relabels every shard.
    """
    promotion_config = config.domain_config()
    try:
        checkpoints, _ = find_checkpoints(adapter_dirs(lora_checkpoint or {}), MASK_MODES)
        by_mode = {c.mask_mode: c for c in checkpoints}
        manual = read_manual_choice(paths.layout.promotion_choice_path)
        promotion = choose(eval_report, set(by_mode), promotion_config, manual)
        checkpoint = by_mode.get(promotion.mask_mode)
        if checkpoint is not None:
            model_path = student.model_path()
            require_compatible(checkpoint, model_path, _student_fingerprint(model_path))
    except (PromotionError, CheckpointError, ValueError) as exc:
        raise Failure(f"promoted_student: {exc}") from None
    context.log.info(promotion.reason)
    agreement = teacher_agreement(eval_report, promotion.variant, promotion.scoring)
    record = promotion_record(promotion, checkpoint, agreement)
    identity = json.dumps([promotion.mask_mode, checkpoint.version if checkpoint else None, promotion.scoring])
    metadata = {
        "promoted": promotion.variant or "nothing",
        "how": promotion.how,
        "scoring": promotion.scoring,
        "reason": promotion.reason,
        "adapter_version": checkpoint.version if checkpoint else "none",
        "lineage": MetadataValue.json(checkpoint.record if checkpoint else {}),
        "card": MetadataValue.md(record["card"].iloc[0] or "no model card"),
        "teacher_agreement": MetadataValue.md(agreement_markdown(agreement)),
    }
    yield Output(record, data_version=_version_of(identity), metadata=metadata)
    yield AssetCheckResult(
        check_name="promotion_earned",
        passed=checkpoint is not None,
        description=promotion.reason,
        metadata={"promoted": promotion.variant or "nothing", "how": promotion.how},
    )


def _version_of(identity: str) -> DataVersion:
    return DataVersion(hashlib.sha256(identity.encode()).hexdigest()[:16])


@with_profile_defaults(
    POST_LABELS
)  # opengrok_dagster/config/profiles/: the default run labels a sample, the gpu profile all
class PostLabelsConfig(config_from(LabellingConfig)):
    """How the promoted student labels a shard (fields from ``LabellingConfig``)."""


def _promoted_checkpoint(record: pd.DataFrame):
    """The promoted adapter, as it was when promoted; a one-line Failure when there is none or it changed."""
    row = record.iloc[0]
    if not bool(row["promoted"]):
        raise Failure(
            f"post_labels: no student is promoted ({row['reason']}); promote one with `opengrok promote MODE` "
            "or train one that earns it, then re-materialise promoted_student"
        )
    try:
        checkpoint = read_checkpoint(row["adapter_dir"], row["mask_mode"])
    except CheckpointError as exc:
        raise Failure(f"post_labels: the promoted adapter cannot be read ({exc})") from None
    if checkpoint.version != row["adapter_version"]:
        raise Failure(
            f"post_labels: the adapter at {row['adapter_dir']} changed since it was promoted (weights "
            f"{row['adapter_version']} -> {checkpoint.version}); re-materialise promoted_student"
        )
    return checkpoint


def _posts_version(context: AssetExecutionContext, shard: str) -> int | None:
    """The storage id of the latest materialisation of ``posts[shard]``."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("posts"), asset_partitions=[shard]), limit=1
    ).records
    return records[0].storage_id if records else None


def posts_unchanged_guard(context: AssetExecutionContext, shard: str):
    """A callback that fails the labelling (one line, nothing published) once ``posts[shard]`` is rematerialised."""
    read = _posts_version(context, shard)

    def guard(chunk_index: int) -> None:
        if _posts_version(context, shard) != read:
            raise Failure(
                f"post_labels: posts shard {shard!r} changed while it was being labelled (after chunk "
                f"{chunk_index + 1}); rerun post_labels[{shard}]: finished chunks of unchanged posts are reused"
            )

    return guard


@asset(
    partitions_def=post_shard_partitions,
    group_name="labelling",
    pool=GPU_POOL,  # the student shares the GPU with the fine-tunes and the evaluation
    automation_condition=FOLLOWS_UPSTREAM_DATA_ONCE_CHECKED,
    code_version=asset_code_version("post_labels"),
    kinds={"python", "parquet"},
)
def post_labels(
    context: AssetExecutionContext,
    config: PostLabelsConfig,
    posts: pd.DataFrame,
    promoted_student: pd.DataFrame,
    paths: OpenGrokPaths,
    student: StudentResource,
):
    """The promoted student's labels for one shard's posts (a sample by default): per task a label in the report's
    answer format and class probabilities, in the label scoring promoted with the adapter (calibrated or raw,
    unless ``calibrate`` is set), with the post id, text hash and model digest."""
    shard = context.partition_key
    checkpoint = _promoted_checkpoint(promoted_student)
    labelling_config = config.domain_config().following(str(promoted_student["scoring"].iloc[0]))
    try:
        local = LocalStudent(
            student.model_path(),
            [checkpoint],
            threads=labelling_config.torch_threads,
            device=labelling_config.device,
            precision=labelling_config.precision,
            batch_tokens=labelling_config.batch_tokens,
        )
    except (ValueError, DeviceUnavailableError) as exc:
        raise Failure(f"post_labels: {exc}") from None
    chosen = sample_posts(posts, labelling_config)
    with local.using(checkpoint.variant):
        outcome = label_posts(
            chosen,
            PostLabeller(local, labelling_config, checkpoint.version),
            paths.layout.labelling_work_dir(shard),
            context.log.info,
            posts_unchanged_guard(context, shard),
        )
    frame = outcome.frame
    metadata = _labels_metadata(outcome, posts, local)
    metadata["teacher_agreement"] = MetadataValue.md(
        agreement_markdown(json.loads(promoted_student["teacher_agreement"].iloc[0] or "{}"))
    )
    yield Output(frame, data_version=content_data_version(frame), metadata=metadata)


# The agreement metrics (``labelling.agreement``) as the table names them; a task shows those measured for it.
AGREEMENT_COLUMNS = {
    "kappa": "Cohen's kappa",
    "agreement": "agreement",
    "micro_f1": "micro F1 (teacher as reference)",
    "f1": "entity F1 (teacher as reference)",
}


def agreement_markdown(agreement: dict) -> str:
    """The promoted student's agreement with the teacher on held-out annotations of the user's posts, per task."""
    if not agreement:
        return "not measured: no teacher annotation of the user's posts was held out of training (eval_report notes)"
    rows = [
        {"task": task, "held-out posts": figures["n"]}
        | {
            title: f"{figures[m]:.3f} [{figures[f'{m}_low']:.3f}, {figures[f'{m}_high']:.3f}]"
            for m, title in AGREEMENT_COLUMNS.items()
            if m in figures
        }
        for task, figures in agreement.items()
    ]
    tables = [pd.DataFrame(rows).fillna("n/a").to_markdown(index=False)]
    for task, figures in agreement.items():
        cells = [(*cell.split(" -> "), posts) for cell, posts in figures.get("confusion", {}).items()]
        if cells:
            matrix = pd.DataFrame(cells, columns=["teacher", "student", "posts"]).pivot_table(
                index="teacher", columns="student", values="posts", fill_value=0, aggfunc="sum"
            )
            tables.append(
                f"{task}, confusion (rows: the teacher's label; columns: the student's)\n\n{matrix.to_markdown()}"
            )
    return "\n\n".join(tables)


def _labels_metadata(outcome, posts: pd.DataFrame, local: LocalStudent) -> dict:
    distribution = pd.DataFrame(
        [
            {"task": task, "label": label, "posts": count}
            for task, counts in outcome.distribution.items()
            for label, count in sorted(counts.items(), key=lambda item: -item[1])
        ]
    )
    return {
        "dagster/row_count": len(outcome.frame),
        "posts_in_shard": len(posts),
        "posts_per_second": outcome.posts_per_second if outcome.posts_per_second is not None else float("nan"),
        "posts_labelled_now": outcome.posts_labelled,
        "chunks_reused": outcome.chunks_reused,
        "chunks_labelled": outcome.chunks_labelled,
        "device": f"{local.device} ({local.dtype})",
        "model_digest": str(outcome.frame["model_digest"].iloc[0]) if len(outcome.frame) else "none",
        "label_distribution": MetadataValue.md(distribution.to_markdown(index=False) if len(distribution) else "none"),
    }
