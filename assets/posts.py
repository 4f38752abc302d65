"""The user's own SNS posts, one partition per posts-catalogue shard, with evaluation posts kept out."""

from collections import Counter
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.versioning import asset_code_version, content_data_version
from opengrok_dagster.partitions import post_shard_partitions
from opengrok_dagster.posts.leaks import leak_counts, load_eval_posts
from opengrok_dagster.posts.sources import PostsError, SkippedLine, find_shard, load_posts_catalogue, read_shard
from opengrok_dagster.settings import posts_catalogue_path
from opengrok_dagster.tasks.datasets import DatasetError, resolve_data_dir
from opengrok_dagster.tasks.hub import is_hub_split
from opengrok_dagster.tasks.specs import TASKS


class PostsConfig(Config):
    catalogue: str | None = Field(
        default=None,
        description="Posts catalogue YAML; unset = $OPENGROK_POSTS_CATALOGUE or opengrok_dagster/config/posts.yaml.",
    )
    data_dir: str | None = Field(
        default=None, description="Data directory for data: paths and the eval splits; unset = $OPENGROK_DATA_DIR."
    )
    eval_tasks: list[str] = Field(
        default=list(TASKS), description="Evaluation tasks whose eval split no post may come from (all by default)."
    )
    eval_paths: dict[str, str] = Field(
        default={}, description="Eval split per task where the report reads another than the task's default."
    )
    drop_eval_posts: bool = Field(
        default=True,
        description="Drop posts found in an eval split (counted in metadata); false: the blocking check stops them.",
    )


# How many skipped lines the metadata lists (all of them are counted).
SKIPPED_LINES_SHOWN = 20


def _skipped_table(skipped: list[SkippedLine]) -> MetadataValue:
    rows = [f"| {s.source} | {s.line if s.line is not None else '?'} | {s.reason} |" for s in skipped]
    more = [f"| ... {len(rows) - SKIPPED_LINES_SHOWN} more | | |"] if len(rows) > SKIPPED_LINES_SHOWN else []
    return MetadataValue.md("\n".join(["| file | line | why |", "|---|---:|---|", *rows[:SKIPPED_LINES_SHOWN], *more]))


@asset(
    partitions_def=post_shard_partitions,
    group_name="acquisition",
    code_version=asset_code_version("posts"),
    kinds={"python", "parquet"},
    check_specs=[
        AssetCheckSpec(
            "no_eval_posts",
            asset="posts",
            blocking=True,
            description="No post's normalised text is a post of a configured evaluation split.",
        )
    ],
)
def posts(context: AssetExecutionContext, config: PostsConfig):
    """Unlabelled posts of one shard (text, id, topic, platform, created_at); data version = content hash."""
    catalogue = Path(config.catalogue) if config.catalogue else posts_catalogue_path()
    try:
        shard = find_shard(load_posts_catalogue(catalogue), context.partition_key)
        skipped: list[SkippedLine] = []
        frame = read_shard(shard, catalogue.parent, config.data_dir, skipped)
        data_dir = resolve_data_dir(config.data_dir)
        # Without a data directory the evaluation skips these tasks too; hub splits are checked all the same.
        checked = [t for t in config.eval_tasks if data_dir is not None or is_hub_split(config.eval_paths.get(t, ""))]
        eval_posts = load_eval_posts(checked, data_dir, config.eval_paths)
    except (PostsError, DatasetError, ValueError) as exc:
        raise Failure(str(exc)) from None
    leaks = eval_posts.matches(frame["text"])
    splits = [leak.split if leak else None for leak in leaks]
    dropped = Counter(split for split in splits if split is not None)
    if config.drop_eval_posts:
        frame = frame[[split is None for split in splits]].reset_index(drop=True)
        if frame.empty:
            raise Failure(f"posts shard {shard.key}: every post is an evaluation post; point the shard at other posts")
    yield Output(
        frame,
        data_version=content_data_version(frame),
        metadata={
            "dagster/row_count": len(frame),
            "shard": shard.key,
            "path": shard.path,
            "files": MetadataValue.md("\n".join(f"- {s}" for s in sorted(frame["source"].unique()))),
            "eval_posts_dropped" if config.drop_eval_posts else "eval_posts_found": sum(dropped.values()),
            "eval_posts_by_split": MetadataValue.json(dict(dropped)),
            # exact: the same text after normalisation; near_duplicate: token Jaccard >= 0.7 with an eval post
            "eval_posts_by_kind": MetadataValue.json(leak_counts(leaks)),
            "eval_splits_checked": len(checked),
            "eval_tasks_unchecked": ", ".join(t for t in config.eval_tasks if t not in checked) or "none",
            "encoding": shard.encoding,
            "bad_lines_skipped": len(skipped),
            **({"skipped_lines": _skipped_table(skipped)} if skipped else {}),
            "preview": MetadataValue.md(frame[["post_id", "text"]].head(5).to_markdown(index=False)),
        },
    )
    remaining = sum(split is not None for split in eval_posts.split_of(frame["text"]))
    yield AssetCheckResult(
        check_name="no_eval_posts",
        passed=remaining == 0,
        metadata={"eval_posts": remaining, "eval_splits_checked": len(checked)},
        description=None
        if remaining == 0
        else (f"{remaining} posts of shard {shard.key} are evaluation posts; set drop_eval_posts or remove them"),
    )
