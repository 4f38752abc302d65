"""Where OpenGrok keeps its state: the response store, logs and the topic catalogue."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from opengrok_dagster.collect.store import ResponseStore
from opengrok_dagster.collect.topics import Topic, load_topic_catalogue
from opengrok_dagster.layout import HomeLayout


class OpenGrokPaths(ConfigurableResource):
    """The project's home directory and topic catalogue."""

    home: str = Field(description="Directory for OpenGrok state: response store, assets, logs (OPENGROK_HOME).")
    topic_catalogue: str = Field(
        description="YAML file listing the topics (keys, names, events) to seed partitions from."
    )

    @property
    def layout(self) -> HomeLayout:
        """Every path under ``home`` (see ``opengrok_dagster.layout``)."""
        return HomeLayout(Path(self.home))

    def response_store(self) -> ResponseStore:
        return ResponseStore(self.layout.response_store_path)

    def topics(self) -> list[Topic]:
        return load_topic_catalogue(self.topic_catalogue)
