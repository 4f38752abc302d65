"""The filter chain: every raw response ends in exactly one state, ``kept``, ``rejected`` or ``needs_review``.

Order: scrub PII (every later check and the kept text see the scrubbed text), hard rejections (errors,
length, refusals, block list, toxicity, language), review flags (borderline toxicity, bias), reviewer
decisions, then duplicates among what survived (earliest kept), then the split of the kept rows.
Annotations of real posts take their own path (:mod:`opengrok_dagster.filtering.annotations`): parsed,
checked against the task's vocabulary and post, rewritten as the evaluation asks, confident learning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from opengrok_dagster.filtering import checks
from opengrok_dagster.filtering.annotations import (
    LABEL_ISSUE,
    annotation_scores,
    check_annotations,
    class_label,
    flag_label_issues,
    review_key,
)
from opengrok_dagster.filtering.config import FilterConfig
from opengrok_dagster.filtering.dedup import content_hash, duplicate_reasons
from opengrok_dagster.filtering.language import LanguageDetector, language_text
from opengrok_dagster.filtering.pii import scrub_pii
from opengrok_dagster.filtering.review import ACCEPT, Decision
from opengrok_dagster.filtering.split import assign_splits
from opengrok_dagster.filtering.toxicity import ToxicityClassifier, load_toxicity_classifier
from opengrok_dagster.tasks.reasons import (
    BLOCKLIST,
    LANGUAGE,
    REVIEW_ACCEPTED,
    REVIEW_REJECTED,
    TOXIC,
    TOXICITY_BORDERLINE,
)
from opengrok_dagster.tasks.schemas import ANNOTATION_VARIANT, FILTERED_COLUMNS


KEPT, REJECTED, NEEDS_REVIEW = "kept", "rejected", "needs_review"
STATES = (KEPT, REJECTED, NEEDS_REVIEW)


@dataclass
class FilterModels:
    """What the chain loads once: word lists and classifiers."""

    blocklist: checks.Blocklist
    identity: checks.IdentityTerms
    toxicity: ToxicityClassifier
    language: LanguageDetector

    @classmethod
    def load(cls, config: FilterConfig) -> FilterModels:
        return cls(
            blocklist=checks.Blocklist.from_file(config.blocklist_path),
            identity=checks.IdentityTerms.from_file(config.identity_terms_path),
            toxicity=load_toxicity_classifier(config.toxicity_classifier),
            language=LanguageDetector(
                config.allowed_languages, config.detected_languages, config.language_min_confidence
            ),
        )


def example_id(prompt_id: str, teacher_model: str, sampling_key: str, round_key: str) -> str:
    """One id per paid-for response: the response store's key, hashed."""
    return hashlib.sha256(f"{prompt_id}|{teacher_model}|{sampling_key}|{round_key}".encode()).hexdigest()[:16]


def filter_responses(
    raw: pd.DataFrame, config: FilterConfig, models: FilterModels, decisions: dict[str, Decision]
) -> pd.DataFrame:
    """One output row per input row, earliest collected first, with state, reasons, scores and split."""
    frame = raw.sort_values(["collected_at", "round", "prompt_id"], kind="stable").reset_index(drop=True)
    annotated = frame["variant"].eq(ANNOTATION_VARIANT) & ("task" in frame.columns)
    parts = [
        part
        for part in (
            _filter_generated(frame[~annotated].reset_index(drop=True), config, models, decisions),
            _filter_annotations(frame[annotated].reset_index(drop=True), config, decisions),
        )
        if not part.empty
    ]
    out = pd.concat(parts, ignore_index=True) if parts else _filter_generated(frame, config, models, decisions)
    out = out.sort_values(["collected_at", "round", "prompt_id"], kind="stable").reset_index(drop=True)
    for column in ("task", "class_label"):  # absent when nothing was annotated
        if column not in out.columns:
            out[column] = None
    kept = out[out["state"] == KEPT]
    # Annotations are held out at their own rate: the student's agreement with the teacher on the user's posts is
    # measured on them (labelling.agreement); the generative teacher agreement reads held-out generated rows.
    generated, annotations = kept[kept["task"].isna()], kept[kept["task"].notna()]
    splits = assign_splits(generated, config.validation_fraction, config.heldout_fraction, config.split_seed)
    splits |= assign_splits(
        annotations, config.validation_fraction, config.annotation_heldout_fraction, config.split_seed
    )
    out["split"] = [splits[pid] if state == KEPT else None for pid, state in zip(out["prompt_id"], out["state"])]
    return out.loc[:, list(FILTERED_COLUMNS)]


def _filter_generated(
    frame: pd.DataFrame, config: FilterConfig, models: FilterModels, decisions: dict[str, Decision]
) -> pd.DataFrame:
    """The chain for the teacher's generated responses (the module docstring's order), without the split."""
    texts = [scrub_pii(text) if isinstance(text, str) else "" for text in frame["response"]]
    hashes = [content_hash(text) for text in texts]
    rejections, reviews = _hard_rejections(frame, texts, config, models)
    candidates = [i for i, reasons in enumerate(rejections) if not reasons]
    toxicity, languages = _model_scores(texts, candidates, config, models)
    reviews = _flag_by_scores(texts, candidates, toxicity, languages, rejections, reviews, config, models)
    states, reasons = _decide(rejections, reviews, hashes, decisions)
    _reject_duplicates(states, reasons, texts, hashes, config)

    out = frame.assign(response=texts, content_hash=hashes, state=states, reasons=reasons)
    out["example_id"] = [
        example_id(*key) for key in zip(out["prompt_id"], out["teacher_model"], out["sampling_key"], out["round"])
    ]
    out["scores"] = [
        json.dumps(
            {
                "toxicity": round(tox, 4),
                "language": lang[0] if lang else None,
                "language_confidence": round(lang[1], 4) if lang else None,
                "chars": len(text),
            }
        )
        for tox, lang, text in zip(toxicity, languages, texts)
    ]
    return out


def _hard_rejections(
    frame: pd.DataFrame, texts: list[str], config: FilterConfig, models: FilterModels
) -> tuple[list[list[str]], list[list[str]]]:
    """Per row, the cheap rejection reasons (errors, then length, then refusals and the block list), and the review
    flags of odd answers (an overlong one)."""
    rejections: list[list[str]] = []
    anomalies = frame["anomaly"] if "anomaly" in frame else [None] * len(frame)
    flagged = [checks.anomaly_reasons(anomaly) for anomaly in anomalies]
    for text, error, finish_reason, (refused, _) in zip(texts, frame["error"], frame["finish_reason"], flagged):
        reasons = checks.error_reasons(error, finish_reason, config.reject_truncated) or refused
        if not reasons:
            reasons = checks.length_reasons(text, config.min_chars, config.max_chars, config.min_words)
        if not reasons:
            reasons = checks.refusal_reasons(text) + ([BLOCKLIST] if models.blocklist.matches(text) else [])
        rejections.append(reasons)
    return rejections, [list(review) for _, review in flagged]


def _model_scores(
    texts: list[str], candidates: list[int], config: FilterConfig, models: FilterModels
) -> tuple[list[float], list[tuple[str | None, float] | None]]:
    """Toxicity and language of the rows not rejected yet (the models are the chain's slow part)."""
    toxicity = [0.0] * len(texts)
    for index, score in zip(candidates, models.toxicity.score([texts[i] for i in candidates])):
        toxicity[index] = float(score)
    languages: list[tuple[str | None, float] | None] = [None] * len(texts)
    language_texts = {i: language_text(texts[i]) for i in candidates}
    long_enough = [i for i in candidates if len(language_texts[i]) >= config.language_min_chars]
    for index, detected in zip(long_enough, models.language.detect([language_texts[i] for i in long_enough])):
        languages[index] = detected
    return toxicity, languages


def _flag_by_scores(
    texts: list[str],
    candidates: list[int],
    toxicity: list[float],
    languages: list,
    rejections: list[list[str]],
    reviews: list[list[str]],
    config: FilterConfig,
    models: FilterModels,
) -> list[list[str]]:
    """Adds toxicity and language rejections to ``rejections`` and review flags to ``reviews``; returns ``reviews``."""
    for index in candidates:
        if toxicity[index] >= config.toxicity_reject_threshold:
            rejections[index].append(TOXIC)
        elif toxicity[index] >= config.toxicity_review_threshold:
            reviews[index].append(TOXICITY_BORDERLINE)
        code = languages[index][0] if languages[index] else None
        if code is not None and code not in models.language.allowed:
            rejections[index].append(LANGUAGE)
        reviews[index] += checks.bias_reasons(
            texts[index], toxicity[index], models.identity, config.bias_toxicity_threshold
        )
    return reviews


def _decide(
    rejections: list[list[str]], reviews: list[list[str]], hashes: list[str], decisions: dict[str, Decision]
) -> tuple[list[str], list[list[str]]]:
    """Each row's state and reasons: rejected, kept, or flagged for review unless a reviewer decided its text."""
    states, reasons = [], []
    for index, (rejected, review) in enumerate(zip(rejections, reviews)):
        if rejected:
            states.append(REJECTED)
            reasons.append(rejected)
        elif not review:
            states.append(KEPT)
            reasons.append([])
        elif hashes[index] in decisions:
            accepted = decisions[hashes[index]].decision == ACCEPT
            states.append(KEPT if accepted else REJECTED)
            reasons.append(review + [REVIEW_ACCEPTED if accepted else REVIEW_REJECTED])
        else:
            states.append(NEEDS_REVIEW)
            reasons.append(review)
    return states, reasons


def _reject_duplicates(
    states: list[str], reasons: list[list[str]], texts: list[str], hashes: list[str], config: FilterConfig
) -> None:
    """Rejects (in place) the later exact and near duplicates among the rows not rejected: the earliest stays."""
    surviving = [i for i, state in enumerate(states) if state != REJECTED]
    duplicates = duplicate_reasons(
        [texts[i] for i in surviving],
        [hashes[i] for i in surviving],
        config.near_duplicate_threshold,
        config.minhash_permutations,
    )
    for index, duplicate in zip(surviving, duplicates):
        if duplicate:
            states[index] = REJECTED
            reasons[index] = reasons[index] + [duplicate]


def _filter_annotations(frame: pd.DataFrame, config: FilterConfig, decisions: dict[str, Decision]) -> pd.DataFrame:
    """Annotations: reason codes for what cannot be used, the kept ones as the evaluation asks, and likely-wrong
    labels (confident learning) to the review queue or rejected, as ``config.label_issues`` says."""
    if frame.empty:
        return frame
    frame = frame.assign(post_text=[scrub_pii(t) if isinstance(t, str) else "" for t in frame["post_text"]])
    checked = check_annotations(frame, config.reject_truncated)
    states = [REJECTED if reasons else KEPT for reasons in checked["reasons"]]
    reasons = list(checked["reasons"])
    quality: list[float | None] = [None] * len(checked)
    kept = checked[[state == KEPT for state in states]]
    if config.label_issues != "off":
        for task, flagged in flag_label_issues(kept, config.split_seed, config.label_issue_min_rows).items():
            if flagged is None:
                continue
            for index, issue, score in zip(kept.index[kept["task"] == task], *flagged):
                quality[index] = None if np.isnan(score) else float(score)
                if issue:
                    states[index] = REJECTED if config.label_issues == "reject" else NEEDS_REVIEW
                    reasons[index] = [LABEL_ISSUE]
    hashes = [review_key(p, r) for p, r in zip(checked["prompt"], checked["response"])]
    for index, state in enumerate(states):
        if state == NEEDS_REVIEW and hashes[index] in decisions:
            accepted = decisions[hashes[index]].decision == ACCEPT
            states[index] = KEPT if accepted else REJECTED
            reasons[index] = reasons[index] + [REVIEW_ACCEPTED if accepted else REVIEW_REJECTED]
    out = checked.assign(content_hash=hashes, state=states, reasons=reasons)
    keys = zip(out["prompt_id"], out["teacher_model"], out["sampling_key"], out["round"])
    out["example_id"] = [example_id(*key) for key in keys]
    answers = frame["response"]  # as the teacher gave it: kept rows now hold the training answer
    out["scores"] = [annotation_scores(*values) for values in zip(out["response_format"], answers, quality)]
    out["class_label"] = [class_label(task, labels) for task, labels in zip(out["task"], out["labels"])]
    return out
