"""Teacher logprobs by scoring a response with the teacher's checkpoint (a tiny Llama with SmolLM2's tokenizer), and
the front that attaches them to the embedded teacher's answers (before a loopback server that ignores logprobs)."""

import asyncio
import json
import math

import httpx
import pytest
import torch
from transformers import LlamaForCausalLM

from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.result import SamplingParams
from opengrok_dagster.distill.align import StudentVocabulary, align_example, parse_teacher_logprobs
from opengrok_dagster.masks.render import ChatRenderer
from opengrok_dagster.offline.logprobs import TeacherLogprobs
from opengrok_dagster.offline.logprobs_server import LogprobsServer


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


@pytest.fixture
def front(teacher):
    """The logprobs front before a loopback server that ignores logprobs, as `transformers serve` does."""
    with LogprobsServer(LoopbackTeacher(LoopbackConfig(returns_logprobs=False)), scorer=teacher) as server:
        yield server


def ask(base_url: str, sampling: SamplingParams):
    async def go():
        async with TeacherClient(
            TeacherEndpoint(base_url, "loopback"), sampling, ClientLimits(max_attempts=1)
        ) as client:
            return await asyncio.gather(*(client.complete(MESSAGES, prompt_id=f"p{i}") for i in range(3)))

    return asyncio.run(go())


def test_the_front_attaches_the_checkpoints_logprobs_to_each_answer(front, teacher):
    results = ask(front.base_url, SamplingParams(top_logprobs=3))
    assert len({r.text for r in results}) == 1 and all(r.ok and r.request_id for r in results)
    assert front.upstream.successful_prompts() == [MESSAGES[-1]["content"]] * 3  # every answer is the upstream's
    for result in results:
        assert json.loads(result.logprobs) == teacher.content(MESSAGES, result.text, top_logprobs=3)
        assert all(len(entry["top_logprobs"]) == 3 for entry in json.loads(result.logprobs))
    assert json.loads(ask(front.base_url, SamplingParams(top_logprobs=0))[0].logprobs)[0]["top_logprobs"] == []


def test_the_front_passes_other_requests_through_untouched(front):
    direct = httpx.post(
        f"{front.upstream.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES}
    ).json()
    through = httpx.post(f"{front.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert through.status_code == 200 and "logprobs" not in through.json()["choices"][0]
    assert through.json()["choices"] == direct["choices"] and through.headers["x-request-id"]
    assert httpx.get(front.base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"top_logprobs": 21}, "top_logprobs must be an integer from 0 to 20"),
        ({"top_logprobs": 2, "stream": True}, "logprobs only without stream"),
    ],
)
def test_the_front_refuses_what_it_cannot_score(front, fields, message):
    answer = httpx.post(
        f"{front.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES, "logprobs": True, **fields}
    )
    assert answer.status_code == 400 and message in answer.json()["error"]["message"]
    assert not front.upstream.requests  # refused before anything reached the model


def test_stopping_the_front_stops_its_upstream(teacher):
    upstream = LoopbackTeacher(LoopbackConfig(returns_logprobs=False))
    server = LogprobsServer(upstream, scorer=teacher).start()
    server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(upstream.base_url.removesuffix("/v1") + "/health", timeout=2)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=2)
