"""Teacher logprobs by scoring a response with the teacher's checkpoint (a tiny Llama with SmolLM2's tokenizer)."""

import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from opengrok_dagster.distill.align import StudentVocabulary, align_example, parse_teacher_logprobs
from opengrok_dagster.masks.render import ChatRenderer
from opengrok_dagster.offline.logprobs import TeacherLogprobs


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How was the match?"}]
RESPONSE = "What a game!! 😍 Final score 3-2\n#football"


@pytest.fixture(scope="module")
def teacher(tiny_student, tokenizer):
    """The shared tiny Llama (tests/conftest.py) as the teacher whose logprobs are read."""
    return TeacherLogprobs(LlamaForCausalLM.from_pretrained(tiny_student), tokenizer, top_logprobs=5)


def test_tokens_spell_the_response_and_carry_the_models_own_logprobs(teacher, tokenizer):
    content = teacher.content(MESSAGES, RESPONSE)
    assert b"".join(bytes(entry["bytes"]) for entry in content) == RESPONSE.encode()
    prompt_ids = tokenizer(
        tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )["input_ids"]
    response_ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = teacher.model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[0]
    expected = torch.log_softmax(logits, -1)
    for index, (entry, token_id) in enumerate(zip(content, response_ids)):
        assert entry["logprob"] == pytest.approx(float(expected[len(prompt_ids) + index - 1, token_id]), abs=1e-5)
        values = [alt["logprob"] for alt in entry["top_logprobs"]]
        assert len(values) == 5 and values == sorted(values, reverse=True) and entry["logprob"] <= values[0] + 1e-6
        assert sum(math.exp(v) for v in values) <= 1 + 1e-5


def test_scored_logprobs_are_the_collected_shape_and_align_fully_to_the_same_tokenizer(teacher, tokenizer):
    teacher_tokens = parse_teacher_logprobs(json.dumps(teacher.content(MESSAGES, RESPONSE)), "scored")
    rendered = ChatRenderer(tokenizer).render("Be brief.", "How was the match?", RESPONSE)
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    start = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > rendered.spans["response"][0])
    targets = align_example(
        encoded["input_ids"],
        rendered.text,
        rendered.spans["response"],
        start,
        teacher_tokens,
        StudentVocabulary.of(tokenizer),
    )
    assert targets.response_tokens == len(teacher_tokens) and targets.aligned_tokens == targets.response_tokens
    assert all(len(ids) >= 5 for ids in targets.token_ids)  # the top-5 plus the scored token when outside them
