"""NER tasks, scored by generation: spans parsed from ``type: entity`` lines (see
:mod:`opengrok_dagster.tasks.formats`) mapped back to BIO tags, for every local variant and every API model.

A generated entity counts only if its words occur in the post's tokens (case-insensitively); the share of
lines that could not be parsed or located is reported, so a model that rambles is visible as such.
"""

from __future__ import annotations

import numpy as np

from opengrok_dagster.evaluation.compared_models import ComparedModels
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.metrics import NerScores
from opengrok_dagster.evaluation.results import TaskResult, finish_task
from opengrok_dagster.tasks.formats import comparable_token, ner_messages, parse_entity_lines
from opengrok_dagster.tasks.specs import TaskSpec, label_words


def spans_to_tags(
    tokens: list[str], spans: list[tuple[str, str]], type_of_word: dict[str, str]
) -> tuple[list[str], int]:
    """BIO tags for the spans found in ``tokens`` (first free occurrence), and how many spans were not found."""
    tags = ["O"] * len(tokens)
    words = [comparable_token(t) for t in tokens]
    missing = 0
    for kind, text in spans:
        target = [comparable_token(t) for t in text.split()]
        width = len(target)
        start = (
            next(
                (
                    i
                    for i in range(len(tokens) - width + 1)
                    if words[i : i + width] == target and all(t == "O" for t in tags[i : i + width])
                ),
                None,
            )
            if width
            else None
        )
        if start is None:
            missing += 1
            continue
        entity_type = type_of_word[kind]
        tags[start : start + width] = [f"B-{entity_type}"] + [f"I-{entity_type}"] * (width - 1)
    return tags, missing


class NerTagging:
    """Scores one NER task on its sampled sentences: entity-level F1 against the gold tags."""

    def __init__(self, config: EvaluationConfig, models: ComparedModels) -> None:
        self.config = config
        self.models = models

    def score(self, result: TaskResult, data, chosen: np.ndarray) -> TaskResult:
        spec = result.spec
        gold = [data.tags[i] for i in chosen]
        scored = [
            (model, "generated", NerScores.from_tags(gold, predicted), unusable)
            for model, predicted, unusable in self._tag(spec, [data.tokens[i] for i in chosen], data.entity_types)
        ]
        return finish_task(result, scored, (spec.primary_metric,), self.config)

    def _tag(self, spec: TaskSpec, tokens: list[list[str]], entity_types: tuple[str, ...]):
        """Yields (model, predicted tag rows, share of answer lines that were unusable)."""
        words = label_words(spec, entity_types)
        type_of_word = dict(zip(words, entity_types))
        messages = [ner_messages(spec.question, t, words) for t in tokens]

        def tag(answers: list[str | None]):
            rows, unusable, total = [], 0, 0
            for sentence, answer in zip(tokens, answers):
                parsed = parse_entity_lines(answer, words)
                tags, missing = spans_to_tags(sentence, parsed.spans, type_of_word)
                rows.append(tags)
                unusable += parsed.unparsed_lines + missing
                total += parsed.unparsed_lines + len(parsed.spans)
            return rows, (unusable / total if total else 0.0)

        generated = {  # every variant first, so each one's time is its generation alone
            variant: self.models.student.generate(messages, self.config.ner_max_new_tokens)
            for variant in self.models.each_variant(spec.name, len(tokens), f"tagged {len(tokens)} sentences")
        }
        for variant, answers in generated.items():
            yield (variant, *tag(answers))
        for model in self.models.api_models:
            answers = self.models.api_answers(model, messages, self.config.ner_max_new_tokens)
            if answers is not None:
                yield (model.name, *tag(answers))
