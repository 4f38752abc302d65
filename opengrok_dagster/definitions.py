"""The Dagster code location: assets, checks, resources, jobs, schedules and sensors."""

import os
import warnings

from dagster import BetaWarning, Definitions, EnvVar, load_assets_from_modules

from assets import collection, distillation, evaluation, filtering, labelling, masks, posts, training
from opengrok_dagster.automation import downstream_automation_sensor, training_set_drift_sensor
from opengrok_dagster.jobs import STAGE_JOBS
from opengrok_dagster.profiles import active_profile, require_devices
from opengrok_dagster.schedules import recollect_schedule, retrain_schedule
from opengrok_dagster.sensors import (
    posts_catalogue_sensor,
    review_decisions_sensor,
    run_failure_recorder,
    topic_catalogue_sensor,
)
from opengrok_dagster.settings import home_layout, teacher_api_key_variable, teacher_is_remote, topic_catalogue_path
from resources import HubResource, OpenGrokPaths, ParquetIOManager, StudentResource, TeacherResource, TrainingResource
from resources.hub import HUB_TOKEN_VARIABLE


# Content-hash data versions (Output(data_version=...)) are how unchanged inputs leave downstream assets fresh;
# the API is marked beta, and its warning on every materialisation would only be noise to our users.
warnings.filterwarnings("ignore", message="Parameter `data_version`", category=BetaWarning)


def online_or_batch(value: str) -> str:
    """OPENGROK_TEACHER_COLLECTION: 'online' or 'batch'."""
    if value not in ("online", "batch"):
        raise ValueError(value)
    return value


def reference_or_teacher(value: str) -> str:
    """OPENGROK_TEACHER_ANNOTATOR: 'reference' or 'teacher'."""
    if value not in ("reference", "teacher"):
        raise ValueError(value)
    return value


# Non-secret teacher settings that may come from the environment, by resource field.
TEACHER_TUNING_VARIABLES = {
    "max_concurrency": ("OPENGROK_TEACHER_CONCURRENCY", int),
    "requests_per_minute": ("OPENGROK_TEACHER_RPM", float),
    "tokens_per_minute": ("OPENGROK_TEACHER_TPM", float),
    "max_tokens": ("OPENGROK_TEACHER_MAX_TOKENS", int),
    "timeout_s": ("OPENGROK_TEACHER_TIMEOUT", float),
    "max_connection_failures": ("OPENGROK_TEACHER_MAX_CONNECTION_FAILURES", int),
    "temperature": ("OPENGROK_TEACHER_TEMPERATURE", float),
    "prompt_price_per_million": ("OPENGROK_TEACHER_PROMPT_PRICE", float),
    "completion_price_per_million": ("OPENGROK_TEACHER_COMPLETION_PRICE", float),
    "top_logprobs": ("OPENGROK_TEACHER_TOP_LOGPROBS", int),
    "collection": ("OPENGROK_TEACHER_COLLECTION", online_or_batch),
    "annotator": ("OPENGROK_TEACHER_ANNOTATOR", reference_or_teacher),
    "batch_price_factor": ("OPENGROK_TEACHER_BATCH_PRICE_FACTOR", float),
    "budget_usd": ("OPENGROK_TEACHER_BUDGET_USD", float),
    "daily_budget_usd": ("OPENGROK_TEACHER_DAILY_BUDGET_USD", float),
}


def _teacher_tuning() -> dict:
    tuning = {}
    for field, (variable, parse) in TEACHER_TUNING_VARIABLES.items():
        if os.environ.get(variable):
            try:
                tuning[field] = parse(os.environ[variable])
            except ValueError:
                raise ValueError(f"{variable}={os.environ[variable]!r} is not a valid {parse.__name__}") from None
    return tuning


def build_teacher(keep_server: bool = False, with_key: bool = True) -> TeacherResource:
    """Embedded SmolLM2 teacher by default; OPENGROK_TEACHER_BASE_URL switches to that endpoint, with the
    key read (as an EnvVar, never a value) from the variable named by OPENGROK_TEACHER_API_KEY_VAR.
    ``with_key=False`` is for what sends nothing (the dry run), which must work before a key is set."""
    if teacher_is_remote():
        return TeacherResource(
            mode="remote",
            base_url=EnvVar("OPENGROK_TEACHER_BASE_URL"),
            model=EnvVar("OPENGROK_TEACHER_MODEL"),
            api_key=EnvVar(teacher_api_key_variable()) if with_key else None,
            **_teacher_tuning(),
        )
    # CPU serving (see bench/collection_throughput.py); a loaded CPU can take minutes per batch, and a local
    # request costs nothing, so wait long rather than retry into an already busy server.
    embedded_defaults = {"max_concurrency": 16, "max_tokens": 128, "timeout_s": 600.0}
    return TeacherResource(
        mode="embedded",
        server_log=str(home_layout().teacher_server_log),
        keep_server=keep_server,
        **(embedded_defaults | _teacher_tuning()),
    )


def _training_placement(profile) -> dict:
    """Device and precision: the environment's, else the profile's, else the resource's defaults."""
    chosen = {"device": profile.training_device, "precision": profile.training_precision}
    variables = {"device": "OPENGROK_TRAINING_DEVICE", "precision": "OPENGROK_TRAINING_PRECISION"}
    chosen |= {field: os.environ[variable] for field, variable in variables.items() if os.environ.get(variable)}
    return {field: value for field, value in chosen.items() if value}


def build_definitions(keep_teacher_server: bool = False) -> Definitions:
    """The code location under the active profile (OPENGROK_PROFILE): its sizes are the assets' config defaults
    (set when the asset modules load), its student and devices the resources' unless the environment names them."""
    profile = active_profile()
    require_devices(profile)
    layout = home_layout()
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    modules = [posts, collection, filtering, masks, distillation, training, evaluation, labelling]
    return Definitions(
        assets=load_assets_from_modules(modules),
        jobs=STAGE_JOBS,
        schedules=[recollect_schedule, retrain_schedule],
        sensors=[
            topic_catalogue_sensor,
            posts_catalogue_sensor,
            review_decisions_sensor,
            run_failure_recorder,
            downstream_automation_sensor,
            training_set_drift_sensor,
        ],
        resources={
            "io_manager": ParquetIOManager(base_dir=str(layout.assets_dir)),
            "paths": OpenGrokPaths(home=str(layout.home), topic_catalogue=str(topic_catalogue_path())),
            "teacher": build_teacher(keep_teacher_server),
            "student": StudentResource(model=os.environ.get("OPENGROK_STUDENT_MODEL") or profile.student_model),
            "training": TrainingResource(**_training_placement(profile)),
            # The token as an EnvVar (never its value), and only when it is set: runs that push nothing need none.
            "hub": HubResource(token=EnvVar(HUB_TOKEN_VARIABLE) if os.environ.get(HUB_TOKEN_VARIABLE) else None),
        },
    )


defs = build_definitions()
