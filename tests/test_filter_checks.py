"""Each filter on its own, on real tweets from the shared datasets and on hand-made hard cases."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from opengrok_dagster.filtering import checks
from opengrok_dagster.filtering.config import FilterConfig
from opengrok_dagster.filtering.dedup import content_hash, duplicate_reasons
from opengrok_dagster.filtering.language import LanguageDetector, language_text
from opengrok_dagster.filtering.pii import find_pii, scrub_pii
from opengrok_dagster.filtering.raw import choose_rounds
from opengrok_dagster.filtering.split import HELDOUT, TRAIN, VALIDATION, assign_splits
from opengrok_dagster.filtering.toxicity import ProfanityCheckClassifier, load_toxicity_classifier
from opengrok_dagster.settings import CONFIG_DIR
from opengrok_dagster.tasks.reasons import (
    DEFLECTION,
    EMPTY,
    IDENTITY_GENERALISATION,
    IDENTITY_TOXIC,
    REFUSAL,
    TEACHER_ERROR,
    TOO_LONG,
    TOO_SHORT,
    TRUNCATED,
)
from tests.conftest import REPO_ROOT, SHARED_DATA


TWEETEVAL = SHARED_DATA / "tweeteval"


def tweets(task: str, split: str = "train", limit: int = 400) -> tuple[list[str], list[int]]:
    texts = (TWEETEVAL / task / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()[:limit]
    labels = [int(x) for x in (TWEETEVAL / task / f"{split}_labels.txt").read_text().splitlines()[:limit]]
    return texts, labels


def topic_xl(language: str, limit: int = 60) -> list[str]:
    lines = (
        (SHARED_DATA / "tweet_topic_xl" / language / f"{language}_train.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    return [json.loads(line)["text"] for line in lines[:limit]]


@pytest.fixture(scope="module")
def profanity() -> ProfanityCheckClassifier:
    return ProfanityCheckClassifier()


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    config = FilterConfig()
    return LanguageDetector(config.allowed_languages, config.detected_languages, config.language_min_confidence)


def test_errors_and_truncation():
    assert checks.error_reasons("HTTP 503 after 5 attempts", None, False) == [TEACHER_ERROR]
    assert checks.error_reasons(None, "length", True) == [TRUNCATED]
    assert checks.error_reasons(None, "length", False) == []
    assert checks.error_reasons(None, "stop", True) == []


def test_length_bounds():
    assert checks.length_reasons("   ", 20, 100, 3) == [EMPTY]
    assert checks.length_reasons("lol ok", 5, 100, 3) == [TOO_SHORT]
    assert checks.length_reasons("a" * 30, 20, 100, 3) == [TOO_SHORT]  # one word
    assert checks.length_reasons("word " * 40, 20, 100, 3) == [TOO_LONG]
    assert checks.length_reasons("This is a fine tweet about the match", 20, 100, 3) == []


@pytest.mark.parametrize(
    "text, reason",
    [
        ("As an AI language model, I cannot browse Twitter.", REFUSAL),
        ("I’m sorry, but I can’t help with that request.", REFUSAL),
        ("I cannot create content that promotes harassment.", REFUSAL),
        ("Sorry — I must decline to write that post.", REFUSAL),
        ("I don't have real-time access to social media, but generally people say...", DEFLECTION),
        ("I'm just an AI, so I can't know what is trending today.", DEFLECTION),
        ("My knowledge cutoff means I can't see the latest posts.", DEFLECTION),
    ],
)
def test_refusals_and_deflections_in_several_phrasings(text, reason):
    assert checks.refusal_reasons(text) == [reason]


def test_real_tweets_and_late_quotes_are_not_refusals():
    texts, _ = tweets("sentiment", "val", 2000)
    flagged = [t for t in texts if checks.refusal_reasons(t)]
    assert len(flagged) <= 2, flagged  # real users almost never write like a refusing assistant
    quote = "Great thread on the election night coverage and the turnout numbers in every swing state. " * 4
    assert checks.refusal_reasons(quote + "My favourite reply: 'I can't help with that, I'm laughing too hard'") == []


def test_blocklist_is_word_bounded_and_leetspeak_aware():
    blocklist = checks.Blocklist(["kill yourself", "fuck", "ass", "shit"])
    assert blocklist.matches("just k1ll y0urs3lf already")
    assert blocklist.matches("what the FUUUCK is this")
    assert blocklist.matches("oh fuck! not again") and blocklist.matches("sh1t happens, @ss")
    assert blocklist.matches("f.u.c.k this traffic")
    assert blocklist.matches("he's such an @ss")
    assert not blocklist.matches("a classy passage about assessment and the Scunthorpe assembly")
    assert not blocklist.matches("@user thanks for the pass")


def test_blocklist_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read the block list .*missing.txt"):
        checks.Blocklist.from_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="has no terms"):
        checks.Blocklist.from_file(empty)
    assert checks.Blocklist.from_file(CONFIG_DIR / "blocklist.txt").matches("honestly kys lol")


def test_pii_is_scrubbed_to_timelms_placeholders():
    text = "DM @CoolGuy_99 or mail jane.doe+x@gmail.com, call +1 (555) 123-4567 / 07700 900123, see https://t.co/abc?x=1 www.bbc.co.uk"
    scrubbed = scrub_pii(text)
    assert scrubbed == "DM @user or mail [email], call [phone] / [phone], see http http"
    assert find_pii(scrubbed) == [] and set(find_pii(text)) == {"email", "url", "handle", "phone"}
    for harmless in (
        "Final score 3-1, 2026-11-25, 1,000,000 fans",
        "top 10 of 2025 #GoalOfTheYear",
        "@user @user so true",
    ):
        assert scrub_pii(harmless) == harmless


def test_pii_scrubbing_on_real_tweets_leaves_no_pii():
    texts, _ = tweets("offensive", limit=2000)
    assert all(find_pii(scrub_pii(t)) == [] for t in texts)


def test_toxicity_separates_offensive_real_tweets(profanity):
    texts, labels = tweets("offensive", limit=2000)
    scores = profanity.score(texts)
    labels = np.array(labels)
    assert scores.shape == (len(texts),) and ((0 <= scores) & (scores <= 1)).all()
    assert scores[labels == 1].mean() > scores[labels == 0].mean() + 0.2


def test_toxicity_classifier_is_configurable():
    assert isinstance(load_toxicity_classifier("profanity_check"), ProfanityCheckClassifier)
    custom = load_toxicity_classifier("opengrok_dagster.filtering.toxicity:ProfanityCheckClassifier")
    assert custom.score(["have a lovely day"])[0] < 0.5
    with pytest.raises(ValueError, match="neither 'profanity_check' nor"):
        load_toxicity_classifier("detoxify")
    with pytest.raises(ValueError, match="cannot be imported"):
        load_toxicity_classifier("no_such_package.models:Classifier")
    with pytest.raises(ValueError, match="has no score"):
        load_toxicity_classifier("collections:OrderedDict")


def test_bias_flags_generalisations_and_toxic_mentions_not_mentions():
    identity = checks.IdentityTerms(["women", "immigrants", "muslims"])
    assert checks.bias_reasons("All immigrants are criminals, wake up", 0.1, identity, 0.3) == [
        IDENTITY_GENERALISATION
    ]
    assert checks.bias_reasons("women always overreact lol", 0.1, identity, 0.3) == [IDENTITY_GENERALISATION]
    assert checks.bias_reasons("shut up you stupid muslims", 0.9, identity, 0.3) in (
        [IDENTITY_GENERALISATION],
        [IDENTITY_TOXIC],
    )
    assert checks.bias_reasons("Proud of the women's team tonight!", 0.05, identity, 0.3) == []
    assert checks.bias_reasons("The match was brilliant", 0.9, identity, 0.3) == []
    full = checks.IdentityTerms.from_file(CONFIG_DIR / "identity_terms.txt")
    hateful = [  # real TweetEval hate tweets (label 1) that generalise about a group
        "All women have the incredible ability to determine if another woman is a bitch based solely on her shoes.",
        "@user All refugees must send back home, without any consequences.",
        "These hysterical women would benefit from listening to @user Women should learn to control their emotional, irrational female side",
    ]
    assert all(checks.bias_reasons(t, 0.0, full, 0.3) == [IDENTITY_GENERALISATION] for t in hateful)
    # everyday tweets seldom go to review: the queue stays small enough for people to read
    everyday, _ = tweets("sentiment", "val", 2000)
    assert sum(bool(checks.bias_reasons(t, 0.0, full, 0.3)) for t in everyday) < 0.03 * len(everyday)


def test_language_detection_on_real_multilingual_tweets(detector):
    for code, folder in (("es", "es"), ("ja", "ja"), ("el", "gr")):
        texts = [language_text(t) for t in topic_xl(folder)]
        detected = [c for c, _ in detector.detect([t for t in texts if len(t) >= 25])]
        assert detected.count(code) >= 0.8 * len(detected), (code, detected)
    english, _ = tweets("sentiment", "val", 300)
    detected = [c for c, _ in detector.detect([language_text(t) for t in english if len(language_text(t)) >= 25])]
    assert detected.count("en") >= 0.9 * len(detected)


def test_language_codes_are_validated():
    with pytest.raises(ValueError, match="allowed_languages: unknown language code 'xx'"):
        LanguageDetector(["xx"], ["en"], 0.5)
    with pytest.raises(ValueError, match="at least two candidate languages"):
        LanguageDetector(["en"], ["en"], 0.5)
    assert language_text("@user @user Antifa #Hetzjagd http 2026") == "Antifa"


def test_duplicates_keep_the_earliest():
    texts = [
        "Huge crowd at the climate march today, signs everywhere and the mood was electric #climate",
        "huge crowd at the climate march today,   signs everywhere and the mood was electric #climate",
        "Huge crowd at the climate march today, signs everywhere and the mood was electric #climate #march",
        "Transfer deadline day chaos: three signings in an hour and the fans cannot believe it",
    ]
    reasons = duplicate_reasons(texts, [content_hash(t) for t in texts], threshold=0.8, num_perm=128)
    assert reasons == [None, "exact_duplicate", "near_duplicate", None]


def test_real_distinct_tweets_are_not_near_duplicates():
    texts, _ = tweets("sentiment", "val", 2000)
    unique = list(dict.fromkeys(texts))
    reasons = duplicate_reasons(unique, [content_hash(t) for t in unique], threshold=0.8, num_perm=64)
    assert sum(r is not None for r in reasons) <= 0.02 * len(unique)


def test_split_is_deterministic_stratified_and_heldout_is_stable():
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(300)], "topic": [f"t{i % 3}" for i in range(300)]})
    splits = assign_splits(prompts, 0.1, 0.1, seed=0)
    assert splits == assign_splits(prompts.sample(frac=1, random_state=1), 0.1, 0.1, seed=0)
    assert set(splits.values()) == {TRAIN, VALIDATION, HELDOUT}
    for _, group in prompts.groupby("topic"):
        labels = [splits[p] for p in group["prompt_id"]]
        assert labels.count(VALIDATION) >= 1 and labels.count(TRAIN) > labels.count(VALIDATION)
    heldout = {p for p, s in splits.items() if s == HELDOUT}
    grown = pd.concat([prompts, pd.DataFrame({"prompt_id": [f"q{i}" for i in range(100)], "topic": "t0"})])
    regrown = assign_splits(grown, 0.1, 0.1, seed=0)
    assert heldout == {p for p, s in regrown.items() if s == HELDOUT and p.startswith("p")}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"min_chars": 0}, "min_chars"),
        ({"toxicity_review_threshold": 0.95}, "must not exceed"),
        ({"validation_fraction": 0.5, "heldout_fraction": 0.5}, "sum < 1"),
        ({"allowed_languages": ()}, "allowed_languages"),
        ({"blocklist_path": "/nonexistent/blocklist.txt"}, "blocklist_path"),
    ],
)
def test_bad_config_is_refused_with_the_setting_named(change, message):
    with pytest.raises(ValueError, match=message):
        FilterConfig(**change)


def test_round_choice():
    rounds = ["2026-11-22", "2026-11-23", "2026-11-24"]
    assert choose_rounds(rounds, "latest", 3) == ["2026-11-24"]
    assert choose_rounds(rounds, "last_n", 2) == ["2026-11-23", "2026-11-24"]
    assert choose_rounds(rounds, "all", 1) == rounds
    with pytest.raises(ValueError, match="round selection 'newest' is not one of"):
        choose_rounds(rounds, "newest", 1)
    with pytest.raises(ValueError, match="last_n must be >= 1"):
        choose_rounds(rounds, "last_n", 0)


def test_duplicate_decisions_do_not_depend_on_the_process_hash_seed():
    """The filtered set must be reproducible: MinHash signatures may not use Python's salted hash()."""
    script = (
        "from datasketch import MinHash; from opengrok_dagster.filtering.dedup import _hash32, shingles;"
        "print(MinHash.bulk([sorted(shingles('Huge crowd at the climate march today'))], num_perm=16,"
        " hashfunc=_hash32)[0].hashvalues.tolist())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
