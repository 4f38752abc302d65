"""Uploading a published adapter (weights, tokenizer, model card, provenance) to a Hugging Face hub repository."""

from __future__ import annotations

import re
from pathlib import Path


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubPushError(ValueError):
    """The adapter cannot be pushed: no token, a bad repo id, or the hub refused; the message names the fix."""


def hub_repo_id(template: str, mask_mode: str) -> str:
    """The repo id for ``mask_mode`` from a template such as ``me/smollm2-opengrok-{mask_mode}``."""
    try:
        repo_id = template.format(mask_mode=mask_mode)
    except (KeyError, IndexError, ValueError):
        raise HubPushError(f"push_to_hub {template!r}: the only placeholder allowed is {{mask_mode}}") from None
    if not REPO_ID.match(repo_id):
        raise HubPushError(
            f"push_to_hub {template!r} gives {repo_id!r}, not a hub repo id: write it as '<user or org>/<name>'"
        )
    return repo_id


def require_token(token: str | None, repo_id: str, variable: str) -> str:
    if not token:
        raise HubPushError(
            f"push_to_hub to {repo_id} needs a Hugging Face write token: set {variable} in the environment of the "
            "code location (never in run config), or unset push_to_hub"
        )
    return token


def push_adapter(adapter_dir: Path, repo_id: str, token: str, private: bool) -> str:
    """Create ``repo_id`` if needed and upload the adapter directory as one commit; returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(adapter_dir),
            ignore_patterns=[".*"],
            commit_message=f"OpenGrok adapter {Path(adapter_dir).name}",
        )
    except (HfHubHTTPError, OSError) as exc:  # refused (401/403), quota, network: the local adapter stays published
        raise HubPushError(
            f"pushing {adapter_dir} to {repo_id} failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return str(url)
