"""Where OpenGrok keeps its state: the response store, logs and the topic catalogue."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from opengrok_dagster.collect.store import ResponseStore
from opengrok_dagster.collect.topics import Topic, load_topic_catalogue


class OpenGrokPaths(ConfigurableResource):
    """The project's home directory and topic catalogue."""

    home: str = Field(description="Directory for OpenGrok state: response store, assets, logs (OPENGROK_HOME).")
    topic_catalogue: str = Field(description="YAML file listing the topics (keys, names, events) to seed partitions from.")

    @property
    def home_dir(self) -> Path:
        return Path(self.home)

    @property
    def logs_dir(self) -> Path:
        path = self.home_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def response_store(self) -> ResponseStore:
        return ResponseStore(self.home_dir / "responses.sqlite")

    def topics(self) -> list[Topic]:
        return load_topic_catalogue(self.topic_catalogue)
