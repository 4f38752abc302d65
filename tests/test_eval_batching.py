"""Batched evaluation equals the per-post path it replaced, on a tiny model built from config.

Tolerance: label log-likelihoods within 1e-4 nats (fp32; the batched path differs only in summation order
and padding), the same chosen label for every post, identical greedy generations, response NLL within 1e-4.
"""

import copy

import numpy as np
import pytest
import torch

from opengrok_dagster.evaluation.local import LocalStudent, find_checkpoints
from opengrok_dagster.tasks.formats import classification_messages
from opengrok_dagster.training.device import DeviceUnavailableError
from tests.conftest import adapters


pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOPICS = ["arts & culture", "business & entrepreneurs", "celebrity & pop culture", "sports", "science & technology"]
POSTS = [
    "what a day",
    "rain again, the third week in a row and the trains are late",
    "ok",
    "Messi scores twice as Inter Miami win the final",
    "new GPU launch sold out in minutes #tech",
    "meh",
]


def per_post_label_logprobs(student: LocalStudent, messages, answers) -> np.ndarray:
    """The scorer before batching, kept verbatim as the reference: one post at a time from the shared prefix."""
    from opengrok_dagster.evaluation.local import _common_prefix_length

    continuations = [student._continuation(a) for a in answers]
    width = max(map(len, continuations))
    candidates = torch.tensor([c + [student.tokenizer.pad_token_id] * (width - len(c)) for c in continuations])
    candidate_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in continuations])
    prompts = [student._prompt_ids(item) for item in messages]
    shared = _common_prefix_length(prompts)
    scores = np.zeros((len(messages), len(answers)))
    model = student.model
    with torch.inference_mode():
        prefix_cache = (
            model(input_ids=torch.tensor([prompts[0][:shared]]), use_cache=True, logits_to_keep=1).past_key_values
            if shared
            else None
        )
        for row, prompt in enumerate(prompts):
            cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else None
            out = model(
                input_ids=torch.tensor([prompt[shared:]]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(answers))
            mask = torch.cat([torch.ones(len(answers), len(prompt), dtype=torch.long), candidate_mask], dim=1)
            rest = torch.log_softmax(
                model(input_ids=candidates, attention_mask=mask, past_key_values=cache).logits.float(), dim=-1
            )
            token_logprobs = torch.cat(
                [
                    first[candidates[:, 0]].unsqueeze(1),
                    rest[:, :-1].gather(2, candidates[:, 1:].unsqueeze(2)).squeeze(2),
                ],
                dim=1,
            )
            scores[row] = (token_logprobs * candidate_mask).sum(dim=1).numpy()
    return scores


@pytest.fixture
def student(checkpoints_home, tiny_student):
    checkpoints, _ = find_checkpoints(adapters(checkpoints_home), ("none", "hard"))
    return LocalStudent(str(tiny_student), checkpoints, batch_tokens=96)  # small batches: several per call, uneven


@pytest.mark.parametrize("multi_label", [False, True])
def test_batched_label_scores_equal_the_per_post_path(student, multi_label):
    words = TOPICS if multi_label else ["negative", "neutral", "positive"]
    messages = [classification_messages("What is this post about?", post, words, multi_label) for post in POSTS]
    for variant in student.variants:
        with student.using(variant):
            batched = student.label_logprobs(messages, words)
            reference = per_post_label_logprobs(student, messages, words)
        np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=0)
        assert (batched.argmax(axis=1) == reference.argmax(axis=1)).all()


def test_eager_attention_takes_the_same_mask_as_an_additive_one(student):
    """Models without SDPA load with eager attention, which adds the mask instead of selecting by it."""
    words = ["negative", "neutral", "positive"]
    messages = [classification_messages("How does this post feel?", post, words) for post in POSTS]
    student.model.set_attn_implementation("eager")
    assert student.model.config._attn_implementation == "eager"
    with student.using("lora:none"):
        batched, reference = student.label_logprobs(messages, words), per_post_label_logprobs(student, messages, words)
    np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=0)


def test_posts_with_no_common_prefix_are_scored_from_left_padding_alone(student):
    """No shared prefix means no cache: the left padding is then the first thing in each row."""
    messages = [[{"role": "user", "content": post}] for post in POSTS]
    student.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no common start
    student._continuations.clear()
    batched = student.label_logprobs(messages, ["yes", "no"])
    np.testing.assert_allclose(batched, per_post_label_logprobs(student, messages, ["yes", "no"]), atol=1e-4, rtol=0)


def test_batched_generation_and_nll_equal_one_post_at_a_time(student):
    messages = [[{"role": "user", "content": f"Write about: {post}"}] for post in POSTS]
    responses = [post.upper() for post in POSTS]
    with student.using("lora:hard"):
        batched = student.generate(messages, max_new_tokens=6, batch_size=4)
        by_budget = student.generate(messages, max_new_tokens=6)  # batches of up to batch_tokens (96) tokens
        single = [student.generate([m], max_new_tokens=6, batch_size=1)[0] for m in messages]
        nll, tokens = student.response_nll(messages, responses)
        one_by_one = [student.response_nll([m], [r]) for m, r in zip(messages, responses)]
    assert batched == single == by_budget
    np.testing.assert_allclose(nll, [n[0] for n, _ in one_by_one], atol=1e-4, rtol=0)
    assert tokens.tolist() == [int(t[0]) for _, t in one_by_one]


def test_the_student_sits_on_the_resolved_device_in_its_precision(tiny_student):
    student = LocalStudent(str(tiny_student), precision="bf16")
    assert (student.device, student.dtype) == ("cpu", "bf16")
    assert next(student.model.parameters()).dtype == torch.bfloat16
    assert np.isfinite(student.label_logprobs([[{"role": "user", "content": "hi"}]] * 2, ["a", "b"])).all()


def test_a_device_this_machine_lacks_is_refused_naming_the_setting(tiny_student):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(
        DeviceUnavailableError,
        match="evaluation device 'cuda' is not available on this machine .* set eval_report's device",
    ):
        LocalStudent(str(tiny_student), device="cuda")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_verify_adapter_generates_what_the_evaluation_will(checkpoints_home, tiny_student, precision):
    """The trainer's check loads the adapter as the evaluation does: same device, same precision, same tokens."""
    from transformers import AutoTokenizer

    from opengrok_dagster.training.device import resolve_placement
    from opengrok_dagster.training.publishing import VERIFY_PROMPT, verify_adapter

    adapter = adapters(checkpoints_home)["hard"]
    AutoTokenizer.from_pretrained(tiny_student).save_pretrained(adapter)
    checkpoints, _ = find_checkpoints({"hard": adapters(checkpoints_home)["hard"]}, ("hard",))
    student = LocalStudent(str(tiny_student), checkpoints, precision=precision)
    with student.using("lora:hard"):
        evaluated = student.generate([[{"role": "user", "content": VERIFY_PROMPT}]], max_new_tokens=12)[0]
    assert verify_adapter(adapter, str(tiny_student), resolve_placement("auto", precision)) == evaluated
