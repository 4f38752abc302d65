"""Code versions from source: a change to the code an asset runs moves its version (so Dagster marks it and what
follows stale, and the fine-tune retrains), and nothing else does."""

import shutil

import pytest

from assets.versioning import ASSET_SOURCES, SOURCE_ROOT, asset_code_version, source_version


@pytest.fixture
def source_copy(tmp_path):
    """The opengrok_dagster package's Python source, copied so that it can be edited."""
    shutil.copytree(
        SOURCE_ROOT / "opengrok_dagster", tmp_path / "opengrok_dagster", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def versions(root):
    return {name: asset_code_version(name, root) for name in ASSET_SOURCES}


def append(path, text="\n# a fix\n"):
    path.write_text(path.read_text() + text)


def moved(before, after):
    return {name for name in before if before[name] != after[name]}


def test_a_change_to_training_code_moves_lora_checkpoint_and_not_prompts_or_mask_tables(source_copy):
    before = versions(source_copy)
    append(source_copy / "opengrok_dagster" / "training" / "attention.py")
    changed = moved(before, versions(source_copy))
    assert (
        "lora_checkpoint" in changed
        and not {"prompts", "mask_tables", "raw_responses", "filtered_responses"} & changed
    )


def test_a_change_to_mask_code_moves_mask_tables_and_not_prompts(source_copy):
    before = versions(source_copy)
    append(source_copy / "opengrok_dagster" / "masks" / "builder.py")
    changed = moved(before, versions(source_copy))
    assert (
        "mask_tables" in changed
        and not {"prompts", "raw_responses", "filtered_responses", "prompt_feedback"} & changed
    )


def test_a_change_to_an_imported_domain_module_moves_its_users(source_copy):
    """lora_checkpoint runs masks/tokenizer.py (the tokenizer check) though it is not in the training package."""
    before = versions(source_copy)
    append(source_copy / "opengrok_dagster" / "masks" / "tokenizer.py")
    assert {"mask_tables", "lora_checkpoint"} <= moved(before, versions(source_copy))


def test_line_endings_caches_and_other_files_do_not_move_a_version(source_copy):
    sources = ASSET_SOURCES["mask_tables"]
    before = source_version(sources, source_copy)
    config = source_copy / "opengrok_dagster" / "masks" / "config.py"
    config.write_bytes(config.read_bytes().replace(b"\n", b"\r\n"))
    (source_copy / "opengrok_dagster" / "masks" / "__pycache__").mkdir()
    (source_copy / "opengrok_dagster" / "masks" / "__pycache__" / "config.cpython-311.py").write_text("stale = 1\n")
    (source_copy / "opengrok_dagster" / "masks" / "notes.md").write_text("not code\n")
    assert source_version(sources, source_copy) == before
    (source_copy / "opengrok_dagster" / "masks" / "new_feature.py").write_text("WEIGHT = 2\n")
    assert source_version(sources, source_copy) != before, "a new module is new code"


def test_a_source_that_is_gone_is_named(source_copy):
    with pytest.raises(
        FileNotFoundError, match="opengrok_dagster/nowhere is not a package or .py file.*ASSET_SOURCES"
    ):
        source_version(("opengrok_dagster/nowhere",), source_copy)


def test_every_asset_of_the_code_location_carries_its_source_version():
    from opengrok_dagster.definitions import defs

    recorded = {spec.key.to_user_string(): spec.code_version for spec in defs.resolve_all_asset_specs()}
    assert recorded == {name: asset_code_version(name) for name in ASSET_SOURCES}
    assert len(set(recorded.values())) > 4, "stages have distinct versions"


def test_a_change_to_the_http_client_does_not_move_filtered_responses(source_copy):
    before = versions(source_copy)
    append(source_copy / "opengrok_dagster" / "collect" / "client.py")
    changed = moved(before, versions(source_copy))
    assert "raw_responses" in changed and "filtered_responses" not in changed


def test_a_change_to_the_evaluation_does_not_move_posts(source_copy):
    before = versions(source_copy)
    append(source_copy / "opengrok_dagster" / "evaluation" / "runner.py")
    changed = moved(before, versions(source_copy))
    assert "eval_report" in changed and "posts" not in changed
