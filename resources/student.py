"""The student model: the offline SmolLM2 checkpoint by default, or any causal LM path / hub id (Phi-3-mini)."""

from dagster import ConfigurableResource
from pydantic import Field

from opengrok_dagster.offline_model import check_offline_model, offline_model_dir


class StudentResource(ConfigurableResource):
    """Where the student's weights and tokenizer come from."""

    model: str | None = Field(
        default=None,
        description="Local directory or Hugging Face id of the student (e.g. 'microsoft/Phi-3-mini-4k-instruct'); "
        "unset = the provisioned offline SmolLM2-135M-Instruct.",
    )
    cache_dir: str | None = Field(default=None, description="Offline model cache; default ~/.cache/opengrok.")

    def model_path(self) -> str:
        """Path or id to pass to ``from_pretrained``; the offline default is checked for completeness."""
        if self.model:
            return self.model
        return str(check_offline_model(offline_model_dir(self.cache_dir)))
