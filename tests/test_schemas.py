"""The artifact contracts of opengrok_dagster/tasks/schemas.py: what a stage reads of an artifact is what the stage
before it writes."""

from opengrok_dagster.tasks import schemas


def test_the_mask_builder_reads_only_columns_the_filter_writes():
    assert set(schemas.MASK_INPUT_COLUMNS) <= set(schemas.FILTERED_COLUMNS)


def test_the_trainer_reads_only_columns_the_kd_targets_carry():
    # The kd_targets asset adds the tokenizer fingerprint to the aligner's columns.
    assert set(schemas.KD_INPUT_COLUMNS) <= set(schemas.KD_COLUMNS) | {"tokenizer_fingerprint"}


def test_the_filter_keeps_the_provenance_of_what_it_reads():
    provenance = {"prompt_id", "topic", "round", "template_id", "platform", "style", "variant", "teacher_model"}
    assert provenance <= set(schemas.RAW_COLUMNS) & set(schemas.FILTERED_COLUMNS)
