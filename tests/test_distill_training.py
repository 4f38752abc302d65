"""The fine-tune with distillation targets: the KD term reaches the loss, and foreign targets are refused."""

import json
import math

import pandas as pd
import pytest

from opengrok_dagster.distill.align import input_ids_digest
from opengrok_dagster.distill.targets import KDTargetsError
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
from opengrok_dagster.training import CHECKPOINT_RECORD
from opengrok_dagster.training.trainer import train_lora
from tests.conftest import mask_table
from tests.test_training import job
from tests.test_training_asset import run_checkpoint


def kd_table(table: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """A teacher that puts 0.6 on the response token, 0.3 on token 42, and leaves 0.1 to other tokens."""
    rows = []
    for row in table.itertuples():
        positions = list(range(row.response_start, len(row.input_ids)))
        rows.append(
            {
                "example_id": row.example_id,
                "input_ids_digest": input_ids_digest(row.input_ids),
                "kd_positions": positions,
                "kd_token_ids": [[row.input_ids[p], 42] if row.input_ids[p] != 42 else [42] for p in positions],
                "kd_logprobs": [
                    [math.log(0.6), math.log(0.3)] if row.input_ids[p] != 42 else [0.0] for p in positions
                ],
                "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            }
        )
    return pd.DataFrame(rows)


def quiet(_message):
    pass


def test_the_kd_term_reaches_the_training_loss(tmp_path, tiny_student, tokenizer):
    table = mask_table(tokenizer)
    steps = dict(max_steps=2, eval_steps=2, save_steps=2, warmup_steps=0)
    plain = train_lora(job(tmp_path / "plain", tiny_student, **steps), table, log=quiet)
    distilled = train_lora(
        job(tmp_path / "kd", tiny_student, kd_alpha=1.0, kd_temperature=2.0, **steps),
        table,
        log=quiet,
        kd_targets=kd_table(table, tokenizer),
    )
    first_plain, first_kd = plain.curves["train"][0], distilled.curves["train"][0]
    assert first_plain[0] == first_kd[0] == 1
    assert first_kd[1] > first_plain[1] + 1e-3  # same weights and batch before the first update: CE + positive KL
    assert math.isfinite(distilled.best_val_loss) and (tmp_path / "kd" / "checkpoints" / "hard").is_dir()


def test_alpha_zero_ignores_targets_and_reuses_the_plain_checkpoint(tmp_path, tiny_student, tokenizer):
    table = mask_table(tokenizer)
    steps = dict(max_steps=2, eval_steps=2, save_steps=2)
    train_lora(job(tmp_path, tiny_student, **steps), table, log=quiet)
    again = train_lora(job(tmp_path, tiny_student, **steps), table, log=quiet, kd_targets=kd_table(table, tokenizer))
    assert again.reused


def test_targets_for_another_tokenizer_are_refused_in_one_line(tmp_path, tiny_student, tokenizer):
    table = mask_table(tokenizer)
    foreign = kd_table(table, tokenizer).assign(tokenizer_fingerprint="gpt2@0123456789abcdef")
    refused = r"^kd_targets were built for tokenizer gpt2@0123456789abcdef, but"
    with pytest.raises(KDTargetsError, match=refused) as caught:
        train_lora(job(tmp_path, tiny_student, kd_alpha=0.5), table, log=quiet, kd_targets=foreign)
    assert "\n" not in str(caught.value) and "re-materialise kd_targets" in str(caught.value)


def test_targets_aligned_to_other_tokens_are_refused(tmp_path, tiny_student, tokenizer):
    table = mask_table(tokenizer)
    stale = kd_table(table, tokenizer)
    stale.loc[0, "input_ids_digest"] = "0" * 16
    with pytest.raises(KDTargetsError, match="was aligned to other tokens than mask_tables has"):
        train_lora(job(tmp_path, tiny_student, kd_alpha=0.5), table, log=quiet, kd_targets=stale)


def test_kd_alpha_without_targets_is_refused(tmp_path, tiny_student, tokenizer):
    with pytest.raises(KDTargetsError, match="kd_alpha > 0 but no kd_targets were given"):
        train_lora(job(tmp_path, tiny_student, kd_alpha=0.5), mask_table(tokenizer), log=quiet)


def test_lora_checkpoint_distils_from_the_published_kd_targets(tmp_path, tiny_student, tokenizer):
    table = mask_table(tokenizer)
    (tmp_path / "assets").mkdir(parents=True)
    kd_table(table, tokenizer).to_parquet(tmp_path / "assets" / "kd_targets.parquet")
    result = run_checkpoint(tmp_path, table, tiny_student, kd_alpha=0.5, max_steps=2, eval_steps=2, save_steps=2)
    assert result.success
    record = json.loads((tmp_path / "checkpoints" / "hard" / CHECKPOINT_RECORD).read_text())
    assert set(record["data_versions"]) == {"mask_tables", "kd_targets"}


def test_lora_checkpoint_with_kd_alpha_but_no_kd_targets_fails_naming_the_fix(tmp_path, tiny_student, tokenizer):
    result = run_checkpoint(tmp_path, mask_table(tokenizer), tiny_student, kd_alpha=0.5)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "kd_alpha > 0 but" in str(failure.event_specific_data.error) and "materialise kd_targets" in str(
        failure.event_specific_data.error
    )
    assert not (tmp_path / "checkpoints" / "hard").exists()
