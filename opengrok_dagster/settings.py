"""Environment-driven settings shared by the Dagster definitions and the CLI (no Dagster imports at module level)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from opengrok_dagster.layout import HomeLayout


# The shipped configuration (topic and posts catalogues, profiles, filter word lists): package data, so a wheel
# install finds it wherever it runs from.
CONFIG_DIR = Path(__file__).resolve().parent / "config"


def opengrok_home() -> Path:
    """``$OPENGROK_HOME``, default ``.opengrok`` in the current directory (the repository for `dagster dev`)."""
    return Path(os.environ.get("OPENGROK_HOME", ".opengrok")).expanduser().resolve()


def home_layout() -> HomeLayout:
    """The paths under ``$OPENGROK_HOME``."""
    return HomeLayout(opengrok_home())


def topic_catalogue_path() -> Path:
    return Path(os.environ.get("OPENGROK_TOPIC_CATALOGUE", CONFIG_DIR / "topics.yaml")).expanduser().resolve()


def posts_catalogue_path() -> Path:
    """``$OPENGROK_POSTS_CATALOGUE``, default opengrok_dagster/config/posts.yaml: the shards of the user's own posts."""
    return Path(os.environ.get("OPENGROK_POSTS_CATALOGUE", CONFIG_DIR / "posts.yaml")).expanduser().resolve()


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or home_layout().dagster_home).resolve()


def teacher_is_remote() -> bool:
    """A teacher base URL in the environment switches from the embedded teacher to that endpoint."""
    return bool(os.environ.get("OPENGROK_TEACHER_BASE_URL"))


def teacher_api_key_variable() -> str:
    """Name of the environment variable holding the teacher's API key (default ``XAI_API_KEY``)."""
    return os.environ.get("OPENGROK_TEACHER_API_KEY_VAR", "XAI_API_KEY")


class SettingsError(ValueError):
    """An environment setting whose value OpenGrok cannot use."""


DEFAULT_RECOLLECT_CRON = "0 3 * * *"
DEFAULT_RETRAIN_CRON = "0 4 * * 1"


def recollect_cron() -> str:
    """``$OPENGROK_RECOLLECT_CRON`` (UTC), default daily at 03:00."""
    return _cron_setting("OPENGROK_RECOLLECT_CRON", DEFAULT_RECOLLECT_CRON, "daily")


def retrain_cron() -> str:
    """``$OPENGROK_RETRAIN_CRON`` (UTC), default Mondays at 04:00: after that day's re-collection, and rarely
    enough that the four fine-tunes it can set off do not queue behind each other."""
    return _cron_setting("OPENGROK_RETRAIN_CRON", DEFAULT_RETRAIN_CRON, "weekly")


def _cron_setting(variable: str, default: str, cadence: str) -> str:
    """The cron in ``$variable``, or ``default`` when unset or blank; a value Dagster cannot schedule is refused
    here, naming the variable, instead of failing the whole code location with a generic schedule error."""
    cron = os.environ.get(variable, "").strip() or default
    if not _dagster_accepts_cron(cron):
        raise SettingsError(
            f"{variable}={cron!r} is not a cron schedule: give five fields, minute hour "
            "day-of-month month day-of-week in UTC (e.g. '0 3 * * *' daily at 03:00, '0 */6 * * *' every six "
            f"hours, '0 4 * * 1' Mondays at 04:00), or unset it for the {cadence} default ({default!r})"
        )
    return cron


def _dagster_accepts_cron(cron: str) -> bool:
    """Whether Dagster can schedule ``cron``: building a schedule applies exactly the rule its schedules use."""
    from dagster import DagsterInvalidDefinitionError, ScheduleDefinition

    try:
        ScheduleDefinition(name="cron_check", cron_schedule=cron, target="*")
    except DagsterInvalidDefinitionError:
        return False
    return True


DEFAULT_RETRAIN_THRESHOLD = 0.2


def retrain_threshold() -> float:
    """``$OPENGROK_RETRAIN_THRESHOLD``: the relative change in trainable (kept train + validation) rows of the
    filtered set, against the set the mask tables were built from, that rebuilds them between scheduled retrains."""
    raw = os.environ.get("OPENGROK_RETRAIN_THRESHOLD", "").strip()
    if not raw:
        return DEFAULT_RETRAIN_THRESHOLD
    try:
        threshold = float(raw)
    except ValueError:
        threshold = math.nan
    if not (math.isfinite(threshold) and threshold > 0):
        raise SettingsError(
            f"OPENGROK_RETRAIN_THRESHOLD={raw!r} is not a positive fraction: give the relative change in trainable "
            f"rows that rebuilds the mask tables (e.g. 0.2 for 20%), or unset it for the default ({DEFAULT_RETRAIN_THRESHOLD})"
        )
    return threshold
