"""Dagster resources: thin configurable wrappers around the stage packages of ``opengrok_dagster``."""

from resources.parquet_io import ParquetIOManager
from resources.paths import OpenGrokPaths
from resources.student import StudentResource
from resources.teacher import TeacherResource
from resources.gpu import TrainingResource

__all__ = ["OpenGrokPaths", "ParquetIOManager", "StudentResource", "TeacherResource"]
