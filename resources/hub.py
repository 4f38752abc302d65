"""The Hugging Face hub: where `lora_checkpoint` uploads an adapter when its `push_to_hub` config names a repo."""

from dagster import ConfigurableResource
from pydantic import Field


HUB_TOKEN_VARIABLE = "HF_TOKEN"


class HubResource(ConfigurableResource):
    """Credentials and visibility for adapter uploads; unused (and no token needed) unless push_to_hub is set."""

    token: str | None = Field(
        default=None, description=f"Write token for the hub. Set it with EnvVar('{HUB_TOKEN_VARIABLE}'); never inline."
    )
    private: bool = Field(
        default=True, description="Create new repositories as private (an existing repo keeps its visibility)."
    )
