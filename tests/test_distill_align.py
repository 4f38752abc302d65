"""Aligning hand-made teacher logprobs to SmolLM2's tokens by byte spans, including adversarial strings."""

import json
import math

import pandas as pd
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from opengrok_dagster.distill.align import (
    StudentVocabulary,
    StudentVocabularyError,
    TeacherLogprobsError,
    align_example,
    build_kd_targets,
    byte_level_alphabet,
    parse_teacher_logprobs,
)
from opengrok_dagster.masks.render import ChatRenderer
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint


@pytest.fixture(scope="module")
def tokenizer(offline_model):
    return AutoTokenizer.from_pretrained(offline_model)


@pytest.fixture(scope="module")
def vocabulary(tokenizer):
    return StudentVocabulary.of(tokenizer)


def entry(piece: bytes | str, logprob=-0.25, alternatives=(), with_bytes=True) -> dict:
    """One chat-completions logprobs entry; ``alternatives`` are (token, logprob) pairs."""
    data = piece if isinstance(piece, bytes) else piece.encode()
    token = data.decode("utf-8", errors="backslashreplace")  # what OpenAI sends for a partial character
    if not with_bytes:
        token = piece
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(data) if with_bytes else None,
        "top_logprobs": [
            {"token": alt, "logprob": lp, "bytes": list(alt.encode()) if with_bytes else None}
            for alt, lp in alternatives
        ],
    }


def student_pieces(tokenizer, vocabulary, text: str) -> list[bytes]:
    return [vocabulary.token_bytes[i] for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def align_response(tokenizer, vocabulary, response: str, teacher_entries: list[dict]):
    """Render a user/assistant exchange, tokenise it as the mask builder does, and align."""
    rendered = ChatRenderer(tokenizer).render(None, "Write a post.", response)
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    response_start = next(
        i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > rendered.spans["response"][0]
    )
    teacher = parse_teacher_logprobs(json.dumps(teacher_entries), "test")
    targets = align_example(
        encoded["input_ids"], rendered.text, rendered.spans["response"], response_start, teacher, vocabulary
    )
    return targets, encoded["input_ids"], response_start


def test_teacher_with_the_students_tokenization_aligns_every_response_token(tokenizer, vocabulary):
    response = "Loving the new phone! Battery lasts all day #tech"
    pieces = student_pieces(tokenizer, vocabulary, response)
    entries = [entry(piece, -0.1, [(" the", -2.5)]) for piece in pieces]
    targets, ids, start = align_response(tokenizer, vocabulary, response, entries)
    assert targets.response_tokens == len(pieces) and targets.aligned_tokens == len(pieces)
    assert targets.positions == list(range(start, start + len(pieces)))
    the = vocabulary.by_bytes[b" the"]
    for position, candidates, logprobs in zip(targets.positions, targets.token_ids, targets.logprobs):
        assert candidates[0] == ids[position] and logprobs[0] == pytest.approx(-0.1)  # the sampled token, best first
        assert the in candidates


def test_only_tokens_with_the_same_span_align_where_the_tokenizations_differ(tokenizer, vocabulary):
    response = "unbelievable weather today"
    assert student_pieces(tokenizer, vocabulary, response)[:3] == [b"un", b"belie", b"vable"]
    entries = [entry("unb"), entry("eliev"), entry("able"), entry(" weather"), entry(" today")]
    targets, ids, start = align_response(tokenizer, vocabulary, response, entries)
    aligned = [vocabulary.token_bytes[ids[p]] for p in targets.positions]
    assert aligned == [b" weather", b" today"]
    assert targets.response_tokens == len(student_pieces(tokenizer, vocabulary, response))


def test_an_emoji_split_into_the_same_byte_tokens_aligns_byte_by_byte(tokenizer, vocabulary):
    response = "so happy 😀😀 today"
    pieces = student_pieces(tokenizer, vocabulary, response)
    assert b"\x80" in pieces  # SmolLM2 splits the emoji over byte tokens
    entries = [entry(piece) for piece in pieces]  # partial characters: token text is garbled, bytes are exact
    targets, _, _ = align_response(tokenizer, vocabulary, response, entries)
    assert targets.aligned_tokens == len(pieces)


def test_a_whole_emoji_token_does_not_align_with_partial_student_tokens(tokenizer, vocabulary):
    response = "so happy 😀 today"
    entries = [entry("so"), entry(" happy"), entry(" 😀"), entry(" today")]
    targets, ids, _ = align_response(tokenizer, vocabulary, response, entries)
    assert [vocabulary.token_bytes[ids[p]] for p in targets.positions] == [b"so", b" happy", b" today"]


def test_byte_level_markers_without_bytes_are_decoded(tokenizer, vocabulary):
    response = "café time 😀"
    pieces = student_pieces(tokenizer, vocabulary, response)
    symbols = {byte: char for char, byte in byte_level_alphabet().items()}
    spelled = ["".join(symbols[b] for b in piece) for piece in pieces]
    entries = [entry(piece, alternatives=[("Ġtime", -3.0)], with_bytes=False) for piece in spelled]
    targets, _, _ = align_response(tokenizer, vocabulary, response, entries)
    assert targets.aligned_tokens == len(pieces)
    assert all(vocabulary.by_bytes[b" time"] in candidates for candidates in targets.token_ids)


def test_sentencepiece_pieces_and_byte_fallback_are_decoded(tokenizer, vocabulary):
    response = "good night 😀"
    entries = [entry(p, with_bytes=False) for p in ["good", "▁night", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]]
    targets, ids, _ = align_response(tokenizer, vocabulary, response, entries)
    assert [vocabulary.token_bytes[ids[p]] for p in targets.positions][:2] == [b"good", b" night"]
    assert vocabulary.token_bytes[ids[targets.positions[-1]]] == b"\x80"  # the last emoji byte matches too


def test_whitespace_runs_and_newlines_align_by_bytes(tokenizer, vocabulary):
    response = "first line\n\n  second\tline  end"
    pieces = student_pieces(tokenizer, vocabulary, response)
    targets, _, _ = align_response(tokenizer, vocabulary, response, [entry(piece) for piece in pieces])
    assert targets.aligned_tokens == len(pieces)


def test_a_scrubbed_response_aligns_only_outside_the_edit(tokenizer, vocabulary):
    teacher_text = "mail me at bob@example.com now please"
    scrubbed = "mail me at [EMAIL] now please"
    entries = [entry(piece) for piece in student_pieces(tokenizer, vocabulary, teacher_text)]
    targets, ids, _ = align_response(tokenizer, vocabulary, scrubbed, entries)
    aligned = [vocabulary.token_bytes[ids[p]] for p in targets.positions]
    assert aligned == [b"mail", b" me", b" at", b" now", b" please"]


def test_alternatives_that_are_not_one_student_token_are_left_to_the_other_bucket(tokenizer, vocabulary):
    response = "great"
    assert "Ġsupercalifragilistic" not in tokenizer.get_vocab()
    entries = [
        entry(
            "great",
            math.log(0.6),
            [("great", math.log(0.6)), (" supercalifragilistic", math.log(0.3)), ("good", math.log(0.05))],
        )
    ]
    targets, _, _ = align_response(tokenizer, vocabulary, response, entries)
    assert targets.token_ids == [[vocabulary.by_bytes[b"great"], vocabulary.by_bytes[b"good"]]]
    assert [math.exp(lp) for lp in targets.logprobs[0]] == pytest.approx([0.6, 0.05])


def test_a_teacher_whose_text_is_unrelated_aligns_nothing(tokenizer, vocabulary):
    targets, _, _ = align_response(tokenizer, vocabulary, "hello world", [entry("zzz"), entry(" qqq")])
    assert targets.aligned_tokens == 0 and targets.response_tokens == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "logprobs is not JSON"),
        (json.dumps({"content": []}), "must be the list choices[0].logprobs.content"),
        (json.dumps([{"token": "a"}]), "logprobs entry 0 is not"),
    ],
)
def test_malformed_logprobs_get_a_one_line_error_naming_the_row(value, message):
    with pytest.raises(TeacherLogprobsError, match="^row 7: ") as caught:
        parse_teacher_logprobs(value, "row 7")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_absent_logprobs_mean_no_targets():
    assert parse_teacher_logprobs(None, "x") is None and parse_teacher_logprobs(float("nan"), "x") is None
    assert parse_teacher_logprobs("null", "x") is None


def test_build_kd_targets_gives_one_row_per_mask_row_and_counts_the_aligned_share(tokenizer, vocabulary):
    renderer = ChatRenderer(tokenizer)
    responses, rows = [], []
    for index, response in enumerate(["Sunny and warm today", "Traffic is awful 😤", "No logprobs for me"]):
        rendered = renderer.render("Be brief.", f"Post {index}", response)
        encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        start = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > rendered.spans["response"][0])
        rows.append({"example_id": f"e{index}", "input_ids": encoded["input_ids"], "response_start": start})
        logprobs = (
            None if index == 2 else json.dumps([entry(p) for p in student_pieces(tokenizer, vocabulary, response)])
        )
        responses.append(
            {
                "example_id": f"e{index}",
                "system_prompt": "Be brief.",
                "prompt": f"Post {index}",
                "response": response,
                "logprobs": logprobs,
            }
        )
    result = build_kd_targets(pd.DataFrame(rows), pd.DataFrame(responses), tokenizer)
    table = result.table
    assert list(table["example_id"]) == ["e0", "e1", "e2"]
    assert (table["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)).all()
    assert list(table["aligned_tokens"])[2] == 0 and len(table["kd_positions"].iloc[2]) == 0
    assert result.rows_with_logprobs == 2 and result.aligned_share == 1.0
    for row in table.itertuples():
        assert len(row.kd_positions) == len(row.kd_token_ids) == len(row.kd_logprobs) == row.aligned_tokens


@pytest.fixture(scope="module")
def sentencepiece_student():
    """A Llama/Phi-3-style tokenizer: ▁ for spaces (one prepended to the text), <0xNN> byte fallback, turns."""
    texts = ["the match was great tonight", "what a game, final score three to two", "great news about the weather"]
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    base.train_from_iterator(texts * 5, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    vocab, merges = base.get_vocab(), [tuple(m) for m in json.loads(base.to_str())["model"]["merges"]]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = base.pre_tokenizer
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Metaspace()])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"])
    student = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    student.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )
    return student


def test_a_sentencepiece_student_with_byte_fallback_aligns_by_bytes(sentencepiece_student, tokenizer, vocabulary):
    student = StudentVocabulary.of(sentencepiece_student)
    response = "great news, the match 😍 tonight"
    assert student.token_bytes[sentencepiece_student.convert_tokens_to_ids("<0xF0>")] == b"\xf0"
    teacher = [entry(piece) for piece in student_pieces(tokenizer, vocabulary, response)]  # SmolLM2 as the teacher
    targets, ids, start = align_response(sentencepiece_student, student, response, teacher)
    aligned = [student.token_bytes[ids[p]] for p in targets.positions]
    assert b" the" in aligned and b"\x8d" in aligned  # a whole word, and the emoji's last byte in both
    assert targets.response_tokens == len(ids) - start - 2  # every student token of the response, not <|end|>\n


def test_a_student_that_cannot_spell_bytes_is_refused_only_when_there_are_logprobs():
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "hello": 1, "##s": 2}, unk_token="[UNK]"))
    wordpiece.decoder = decoders.WordPiece()
    student = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    masks = pd.DataFrame([{"example_id": "e0", "input_ids": [1, 2], "response_start": 1}])
    responses = pd.DataFrame(
        [{"example_id": "e0", "system_prompt": None, "prompt": "p", "response": "hellos", "logprobs": None}]
    )
    assert build_kd_targets(masks, responses, student).rows_with_logprobs == 0
    with pytest.raises(StudentVocabularyError, match="does not spell tokens as bytes") as caught:
        build_kd_targets(masks, responses.assign(logprobs=json.dumps([entry("hellos")])), student)
    assert "\n" not in str(caught.value)
