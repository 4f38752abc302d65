"""Dagster resources: thin configurable wrappers around the stage packages of ``opengrok_dagster``."""

from resources.gpu import TrainingResource
from resources.hub import HubResource
from resources.parquet_io import ParquetIOManager
from resources.paths import OpenGrokPaths
from resources.student import StudentResource
from resources.teacher import TeacherResource


__all__ = [
    "HubResource",
    "OpenGrokPaths",
    "ParquetIOManager",
    "StudentResource",
    "TeacherResource",
    "TrainingResource",
]
