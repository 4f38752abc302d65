"""Versions for Dagster: data versions from content, so an unchanged artifact never marks its downstream assets
stale, and code versions from source, so a change to the code an asset runs marks it (and what follows) stale."""

import ast
import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
from dagster import DataVersion

import opengrok_dagster


# The directory holding the `opengrok_dagster` package: the repository, or site-packages for an installed wheel.
SOURCE_ROOT = Path(opengrok_dagster.__file__).resolve().parent.parent

# The domain code each asset runs, relative to SOURCE_ROOT; the opengrok_dagster modules these import are added.
# The thin asset modules are left out on purpose: a change to an asset's metadata must not retrain four adapters.
ASSET_SOURCES = {
    "posts": ("opengrok_dagster/posts",),
    "prompts": (
        "opengrok_dagster/collect/prompts.py",
        "opengrok_dagster/collect/annotation.py",
        "opengrok_dagster/collect/plan.py",
        "opengrok_dagster/collect/topics.py",
        "opengrok_dagster/collect/feedback.py",
    ),
    "raw_responses": ("opengrok_dagster/collect",),
    "filtered_responses": ("opengrok_dagster/filtering",),
    "prompt_feedback": ("opengrok_dagster/collect/feedback.py",),
    "mask_tables": ("opengrok_dagster/masks",),
    "kd_targets": ("opengrok_dagster/distill",),
    "lora_checkpoint": ("opengrok_dagster/training", "opengrok_dagster/training_entry.py"),
    "eval_report": (
        "opengrok_dagster/evaluation",
        "opengrok_dagster/labelling/agreement.py",
        "opengrok_dagster/labelling/cost.py",
    ),
    "promoted_student": ("opengrok_dagster/labelling/promotion.py",),
    "post_labels": ("opengrok_dagster/labelling/labeller.py",),
}


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the frame's Arrow IPC bytes: equal frames (same columns, order and values) hash equal."""
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def content_data_version(frame: pd.DataFrame) -> DataVersion:
    return DataVersion(content_hash(frame)[:16])


def asset_code_version(asset_name: str, root: Path = SOURCE_ROOT) -> str:
    """The code version of ``asset_name``: a digest of the source listed for it in ``ASSET_SOURCES``."""
    return source_version(ASSET_SOURCES[asset_name], root)


def source_version(sources: tuple[str, ...], root: Path = SOURCE_ROOT) -> str:
    """sha256 (12 hex digits) of the ``.py`` files of ``sources`` (package directories or files under ``root``) and
    of every ``opengrok_dagster`` module they import, transitively: by relative path in sorted order, line endings
    normalised, ``__pycache__`` and other files ignored, so the same source gives the same version on any machine."""
    digest = hashlib.sha256()
    for path in sorted(_with_imports(root, _python_files(root, sources))):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n") + b"\0")
    return digest.hexdigest()[:12]


def _python_files(root: Path, sources: tuple[str, ...]) -> set[Path]:
    files = set()
    for source in sources:
        path = root / source
        if path.is_dir():
            files.update(p for p in path.rglob("*.py") if "__pycache__" not in p.relative_to(root).parts)
        elif path.suffix == ".py" and path.is_file():
            files.add(path)
        else:
            raise FileNotFoundError(
                f"code version source {source} is not a package or .py file under {root}: update ASSET_SOURCES"
            )
    return files


def _with_imports(root: Path, files: set[Path]) -> set[Path]:
    """``files`` and the source files of the ``opengrok_dagster`` modules they import, transitively."""
    seen, pending = set(), list(files)
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            )
            for name in names:
                if name.split(".")[0] == "opengrok_dagster":
                    pending += [
                        p
                        for p in (root / f"{name.replace('.', '/')}.py", root / name.replace(".", "/") / "__init__.py")
                        if p.is_file()
                    ]
    return seen
