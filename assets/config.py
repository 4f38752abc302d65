"""Run config derived from the stages' domain configs, so each setting's type, default and description is written
once, in the dagster-free stage package, and the UI's config schema shows the same descriptions.

The domain config is not subclassed: its checks would then run while Dagster builds the run config, and a bad value
would end the step with a traceback. The derived class carries the fields only; ``domain_config()`` builds the
domain object inside the asset, where a bad value becomes a one-line Failure naming the setting and the fix.
"""

import types
import typing
from typing import Union

from dagster import Config, Failure
from pydantic import BaseModel, Field, ValidationError, create_model


def config_from(domain: type[BaseModel], exclude: tuple[str, ...] = ()) -> type[Config]:
    """A Dagster ``Config`` base with ``domain``'s fields (tuples as lists, which Dagster's config system takes)."""
    fields = {
        name: (
            _dagster_type(info.annotation),
            Field(default=_listed(info.get_default(call_default_factory=True)), description=info.description),
        )
        for name, info in domain.model_fields.items()
        if name not in exclude
    }
    base = create_model(f"{domain.__name__}Fields", __base__=Config, __module__=__name__, **fields)
    base.domain = domain
    base.domain_config = _domain_config
    return base


def _domain_config(self):
    """The stage's own config object from these settings; a bad value fails the step in one line."""
    domain = type(self).domain
    try:
        return domain(**self.model_dump(include=set(domain.model_fields)))
    except ValidationError as exc:
        # the domain's own checks (value errors) already name the setting and the fix; type errors get the field
        problems = "; ".join(
            str(e["ctx"]["error"]) if e["type"] == "value_error" else f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
        )
        raise Failure(description=f"{domain.__name__}: {problems}") from None
    except ValueError as exc:  # the domain's own checks already name the setting and the fix
        raise Failure(description=f"{domain.__name__}: {exc}") from None


def _dagster_type(annotation):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return list[_dagster_type(args[0])]
    if origin in (list, dict):
        return origin[tuple(_dagster_type(a) for a in args)] if origin is dict else list[_dagster_type(args[0])]
    if origin in (Union, types.UnionType):
        return Union[tuple(_dagster_type(a) for a in args)]  # noqa: UP007 (built from a tuple of types)
    return annotation


def _listed(value):
    if isinstance(value, tuple):
        return [_listed(v) for v in value]
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value
