"""Run profiles: the sizes and devices of a whole deployment in one YAML file (``opengrok_dagster/config/profiles/<name>.yaml``).

A profile sets the *defaults* of the assets' run config (``ops: <asset>: config:``, as in Dagster run config)
and of the student and training resources. Because they are defaults, every way a run starts uses them: the
UI's launchpad, schedules, sensors, declarative automation and `opengrok run`. ``OPENGROK_PROFILE`` (or
`opengrok run --profile`) names a profile in ``opengrok_dagster/config/profiles/`` or the path of one; unset, ``cpu-demo``.
Explicit environment settings (``OPENGROK_STUDENT_MODEL``, ``OPENGROK_TRAINING_DEVICE``...) win over it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from opengrok_dagster.settings import CONFIG_DIR


PROFILE_VARIABLE = "OPENGROK_PROFILE"
PROFILE_DIR = CONFIG_DIR / "profiles"
DEFAULT_PROFILE = "cpu-demo"
PROMPTS, MASK_TABLES, LORA_CHECKPOINT, EVAL_REPORT = "prompts", "mask_tables", "lora_checkpoint", "eval_report"
POST_LABELS = "post_labels"


class ProfileError(ValueError):
    """A profile or run config file that cannot be used; the message names the file and the fix."""


class Profile(BaseModel):
    """One deployment's sizes and devices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The profile's name (its file name without .yaml).")
    description: str = Field(default="", description="What the profile is for, shown by `opengrok run`.")
    student_model: str | None = Field(default=None, description="Student path or hub id; unset = the offline SmolLM2.")
    training_device: str | None = Field(
        default=None, description="The training resource's device; unset = its default."
    )
    training_precision: str | None = Field(
        default=None, description="The training resource's precision; unset = its default."
    )
    run_modes: list[str] | None = Field(
        default=None,
        description="The mask modes `opengrok run` fine-tunes and evaluates when --modes is not given; unset = every "
        "mode. The UI, schedules and sensors materialise whichever lora_checkpoint partitions they are asked for.",
    )
    ops: dict[str, dict[str, dict[str, Any]]] = Field(
        default={}, description="Default run config per asset, shaped as Dagster run config: <asset>: {config: {...}}."
    )
    source: str = Field(default="", description="The file the profile was read from.")

    def op_config(self, asset: str) -> dict[str, Any]:
        return dict(self.ops.get(asset, {}).get("config", {}))

    def devices(self) -> dict[str, str]:
        """Each device the profile asks for by name, by the setting that asks."""
        asked = {
            "training_device": self.training_device,
            f"ops.{EVAL_REPORT}.config.device": self.op_config(EVAL_REPORT).get("device"),
            f"ops.{POST_LABELS}.config.device": self.op_config(POST_LABELS).get("device"),
        }
        return {setting: device for setting, device in asked.items() if device and device != "auto"}


def known_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{what} {path} cannot be read ({exc.strerror}); check the path") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{what} {path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(loaded, dict):
        raise ProfileError(f"{what} {path} must be a mapping (keys such as ops:), got {type(loaded).__name__}")
    return loaded


def _check_ops(ops: Any, source: str) -> None:
    if not isinstance(ops, dict) or any(not isinstance(v, dict) or set(v) - {"config"} for v in ops.values()):
        raise ProfileError(
            f"{source}: ops must map each asset to {{config: {{field: value}}}}, as Dagster run config does"
        )


def load_profile(name: str | None = None) -> Profile:
    """The profile ``name`` (a name in opengrok_dagster/config/profiles/ or a path), default ``$OPENGROK_PROFILE`` or cpu-demo."""
    name = name or os.environ.get(PROFILE_VARIABLE, "").strip() or DEFAULT_PROFILE
    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"unknown profile {name!r} ({PROFILE_VARIABLE} or --profile): "
                f"use one of {', '.join(known_profiles())} "
                f"(files in {PROFILE_DIR}), or the path of a profile .yaml"
            )
    values = _read_yaml(path, "profile")
    _check_ops(values.get("ops", {}), str(path))
    try:
        profile = Profile(**{"name": path.stem, **values, "source": str(path)})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ProfileError(
            f"profile {path}: {problems}; see opengrok_dagster/config/profiles/cpu-demo.yaml for the keys"
        ) from None
    require_matching_max_length(profile.op_config(MASK_TABLES), profile.op_config(LORA_CHECKPOINT), str(path))
    return profile


@lru_cache(maxsize=1)
def active_profile() -> Profile:
    """The profile of this process, read once: asset config classes take their defaults from it at import."""
    return load_profile()


def load_run_config(path: str | Path) -> dict:
    """A Dagster run config file (``ops: <asset>: config: ...``) for `opengrok run --config`."""
    path = Path(path).expanduser()
    values = _read_yaml(path, "run config")
    unknown = set(values) - {"ops"}
    if unknown:
        raise ProfileError(
            f"run config {path}: only ops: is read (asset config), not {', '.join(sorted(unknown))}; "
            "resources come from the profile and the environment"
        )
    _check_ops(values.get("ops", {}), str(path))
    return values


def require_matching_max_length(mask_config: dict, training_config: dict, source: str) -> None:
    """The mask tables hold exactly the tokens the trainer sees, so both must cut at the same max_length."""
    from opengrok_dagster.masks.config import MaskConfig
    from opengrok_dagster.training.config import TrainingConfig

    masks = mask_config.get("max_length", MaskConfig.model_fields["max_length"].default)
    training = training_config.get("max_length", TrainingConfig.model_fields["max_length"].default)
    if masks != training:
        raise ProfileError(
            f"{source}: max_length differs between mask_tables ({masks}) and lora_checkpoint ({training}); "
            "set both to the same value (the mask tables hold exactly the tokens the trainer sees)"
        )


def require_devices(profile: Profile) -> None:
    """Refuse, in one line, a profile asking for a device this machine lacks, before anything runs."""
    from opengrok_dagster.training.device import DeviceUnavailableError, resolve_placement

    for setting, device in profile.devices().items():
        try:
            resolve_placement(device, "auto")
        except DeviceUnavailableError:
            raise ProfileError(
                f"profile {profile.name!r} ({profile.source}) asks for {setting}: {device}, which this machine "
                f"does not have: run it on a machine with {device}, or choose a profile for this one "
                f"({PROFILE_VARIABLE}=cpu-demo or `opengrok run --profile cpu-demo`)"
            ) from None


def with_profile_defaults(asset: str, profile: Profile | None = None):
    """Class decorator: the config class of ``asset`` with the profile's values as its field defaults."""

    def decorate(cls: type[BaseModel]) -> type[BaseModel]:
        chosen = profile or active_profile()
        values = chosen.op_config(asset)
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ProfileError(
                f"{chosen.source}: ops.{asset}.config has no field(s) {', '.join(unknown)}; "
                f"known: {', '.join(cls.model_fields)}"
            )
        if not values:
            return cls
        try:
            cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise ProfileError(f"{chosen.source}: ops.{asset}.config: {problems}; fix the file") from None
        fields = {
            name: (
                cls.model_fields[name].annotation,
                Field(default=value, description=cls.model_fields[name].description),
            )
            for name, value in values.items()
        }
        return create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **fields)

    return decorate
