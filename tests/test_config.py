"""One config pattern: each stage's settings are declared once, with descriptions, in its dagster-free domain
config; the Dagster run config is derived from it, and a bad value fails the step in one line."""

import pytest
from dagster import Failure

from assets.collection import PromptsConfig, prompts
from assets.evaluation import EvalReportConfig, EvaluationEndpoint, eval_report
from assets.filtering import FilteredResponsesConfig, filtered_responses
from assets.masks import MaskTablesConfig, mask_tables
from assets.training import LoraCheckpointConfig, lora_checkpoint
from opengrok_dagster.collect.prompts import PromptGridConfig
from opengrok_dagster.evaluation.api import EndpointSpec
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.filtering.config import FilterConfig
from opengrok_dagster.masks.config import MaskConfig
from opengrok_dagster.profiles import active_profile
from opengrok_dagster.training.config import TrainingConfig


STAGES = [
    (PromptsConfig, PromptGridConfig, prompts),
    (FilteredResponsesConfig, FilterConfig, filtered_responses),
    (MaskTablesConfig, MaskConfig, mask_tables),
    (LoraCheckpointConfig, TrainingConfig, lora_checkpoint),
    (EvalReportConfig, EvaluationConfig, eval_report),
]


@pytest.mark.parametrize(("dagster_config", "domain", "asset"), STAGES, ids=lambda v: getattr(v, "__name__", ""))
def test_the_run_config_defaults_are_the_domain_defaults(dagster_config, domain, asset):
    assert dagster_config().domain_config() == domain()


@pytest.mark.parametrize(("dagster_config", "domain", "asset"), STAGES, ids=lambda v: getattr(v, "__name__", ""))
def test_every_setting_is_declared_once_and_described_in_the_ui_schema(dagster_config, domain, asset):
    # the active profile's values come from opengrok_dagster/config/profiles/, not from code; endpoints is a nested Config list
    from_profile = set(active_profile().op_config(asset.key.to_user_string()))
    redeclared = set(dagster_config.__annotations__) & set(domain.model_fields) - {"endpoints"} - from_profile
    assert redeclared == set(), "a domain setting typed again on the Dagster side"
    schema = asset.op.config_schema.as_field().config_type.fields
    assert set(domain.model_fields) <= set(schema)
    assert {name: field.description for name, field in schema.items() if not field.description} == {}
    assert all(schema[name].description == info.description for name, info in domain.model_fields.items())


def test_endpoints_are_described_and_reach_the_evaluation_as_domain_objects():
    assert set(EvaluationEndpoint.model_fields) == set(EndpointSpec.model_fields)
    config = EvalReportConfig(endpoints=[{"name": "gpt", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-x"}])
    assert config.domain_config().endpoints == (
        EndpointSpec(name="gpt", base_url="http://127.0.0.1:9/v1", model="gpt-x"),
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            MaskTablesConfig(random_mask_rate=1.5, sampling="coin"),
            "MaskConfig: invalid mask config: random_mask_rate=1.5 must be in [0, 1) (the report uses 0.10-0.20); "
            "sampling='coin' must be 'bernoulli' or 'threshold'",
        ),
        (PromptsConfig(templates=["nope"]), "PromptGridConfig: unknown templates"),
        (FilteredResponsesConfig(min_chars=0), "FilterConfig: need 0 < min_chars <= max_chars"),
        (LoraCheckpointConfig(save_steps=3), "TrainingConfig: save_steps=3 must be a multiple of eval_steps=8"),
        (
            EvalReportConfig(tasks=["tweeteval_sentiment"], eval_paths={"wnut17": "x"}),
            "EvaluationConfig: a split path is given for task 'wnut17'",
        ),
    ],
)
def test_a_bad_setting_fails_in_one_line_naming_it(config, message):
    with pytest.raises(Failure) as failure:
        config.domain_config()
    assert failure.value.description.startswith(message) and "\n" not in failure.value.description
