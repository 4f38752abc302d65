"""Teacher agreement on held-out responses: how close each local variant's greedy generations come to the
teacher's responses that no adapter trained on (chrF), and the variant's perplexity on those responses."""

from __future__ import annotations

import pandas as pd

from opengrok_dagster.evaluation.compared_models import ComparedModels
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.metrics import AgreementScores, sentence_chrf
from opengrok_dagster.evaluation.results import TaskResult, finish_task, sample_items


AGREEMENT_TASK = "teacher_agreement"


def score_heldout_agreement(heldout: pd.DataFrame, config: EvaluationConfig, models: ComparedModels) -> TaskResult:
    """Student vs the teacher's held-out responses (never trained on): chrF of greedy generations, perplexity."""
    rows = heldout.reset_index(drop=True)
    chosen = sample_items(len(rows), config.agreement_examples, config.seed)
    sample = rows.iloc[chosen]
    digest = pd.util.hash_pandas_object(sample[["example_id", "response"]], index=False).sum()
    result = TaskResult(
        None,
        AGREEMENT_TASK,
        "chrf",
        "filtered_responses (split == heldout)",
        f"{int(digest) & 0xFFFFFFFFFFFF:012x}",
        len(rows),
        len(chosen),
    )
    models.log(f"{AGREEMENT_TASK}: {len(chosen)} of {len(rows)} held-out teacher responses (seed {config.seed})")
    messages = [
        ([{"role": "system", "content": s}] if isinstance(s, str) and s.strip() else [])
        + [{"role": "user", "content": p}]
        for s, p in zip(sample["system_prompt"], sample["prompt"])
    ]
    references = [str(r) for r in sample["response"]]
    answered = {}  # every variant first, so each one's time is its generation and scoring alone
    for variant in models.each_variant(AGREEMENT_TASK, len(messages)):
        generated = models.student.generate(messages, config.agreement_max_new_tokens)
        answered[variant] = (generated, *models.student.response_nll(messages, references))
    scored = [
        (variant, "generated", AgreementScores(sentence_chrf(generated, references), nll, tokens), None)
        for variant, (generated, nll, tokens) in answered.items()
    ]
    result.notes.append(
        f"student generations are greedy and capped at {config.agreement_max_new_tokens} new tokens, so chrF against longer "
        "teacher responses is bounded above; perplexity scores the teacher's full response"
    )
    return finish_task(result, scored, ("chrf", "perplexity"), config)
