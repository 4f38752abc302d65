"""The Dagster code location: assets, checks, resources, jobs, schedules and sensors."""

from dagster import Definitions, EnvVar, load_assets_from_modules

from assets import collection
from opengrok_dagster.jobs import collect_job
from opengrok_dagster.schedules import recollect_schedule
from opengrok_dagster.sensors import topic_catalogue_sensor
from opengrok_dagster.settings import opengrok_home, teacher_api_key_variable, teacher_is_remote, topic_catalogue_path
from resources import OpenGrokPaths, ParquetIOManager, StudentResource, TeacherResource


def build_teacher() -> TeacherResource:
    """Embedded SmolLM2 teacher by default; OPENGROK_TEACHER_BASE_URL switches to that endpoint, with the
    key read from the variable named by OPENGROK_TEACHER_API_KEY_VAR (XAI_API_KEY by default)."""
    if teacher_is_remote():
        return TeacherResource(
            mode="remote",
            base_url=EnvVar("OPENGROK_TEACHER_BASE_URL"),
            model=EnvVar("OPENGROK_TEACHER_MODEL"),
            api_key=EnvVar(teacher_api_key_variable()),
            max_concurrency=EnvVar.int("OPENGROK_TEACHER_CONCURRENCY") if _set("OPENGROK_TEACHER_CONCURRENCY") else 8,
        )
    home = opengrok_home()
    return TeacherResource(mode="embedded", max_concurrency=16, max_tokens=128, server_log=str(home / "logs" / "teacher-server.log"))


def _set(name: str) -> bool:
    import os

    return bool(os.environ.get(name))


def build_definitions() -> Definitions:
    home = opengrok_home()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    modules = [collection]
    return Definitions(
        assets=load_assets_from_modules(modules),
        jobs=[collect_job],
        schedules=[recollect_schedule],
        sensors=[topic_catalogue_sensor],
        resources={
            "io_manager": ParquetIOManager(base_dir=str(home / "assets")),
            "paths": OpenGrokPaths(home=str(home), topic_catalogue=str(topic_catalogue_path())),
            "teacher": build_teacher(),
            "student": StudentResource(model=EnvVar("OPENGROK_STUDENT_MODEL") if _set("OPENGROK_STUDENT_MODEL") else None),
        },
    )


defs = build_definitions()
