"""Publishing artifacts atomically: a reader sees the previous artifact or the whole new one, never a part.

Every writer of a published file writes to a temporary name beside its target and moves it into place only
when the write succeeded; a failure removes the temporary file and publishes nothing. Paths may be local
(``pathlib.Path``: ``os.replace``, atomic on POSIX) or fsspec paths (``upath.UPath`` on S3, GCS, memory...:
moved inside their file system, which on object stores is a server-side copy, so the key appears whole).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(target):
    """A unique temporary name beside ``target`` (hidden, so globs for published files pass it over)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")


def _file_system(path):
    """The fsspec file system of a non-local UPath; None for a local path (plain or UPath): ``os.replace``."""
    if getattr(path, "protocol", "") in ("", "file", "local"):
        return None
    return path.fs


def _move(source, target) -> None:
    fs = _file_system(target)
    if fs is None:
        os.replace(source, target)
    else:
        fs.mv(source.path, target.path)


def _remove(path) -> None:
    fs = _file_system(path)
    if fs is None:
        Path(path).unlink(missing_ok=True)
    elif fs.exists(path.path):
        fs.rm(path.path)


@contextmanager
def publishing(*targets) -> Iterator[list]:
    """Temporary paths to write ``targets`` to; all are moved into place when the block ends without error,
    none when it raises (the temporary files are removed)."""
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    partials = [partial_path(target) for target in targets]
    try:
        yield partials
        for partial, target in zip(partials, targets):
            _move(partial, target)
    finally:
        for partial in partials:
            _remove(partial)


def publish_directory(staging: Path, target: Path) -> None:
    """Swap the directory ``staging`` in as ``target`` by rename; the previous ``target`` stays whole until then."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(staging, target)
        return
    retired = target.with_name(f".{target.name}.retired-{os.getpid()}")
    os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired)
