"""Invariants of the distillation loss on a tiny Llama built from config, in every mask mode."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from opengrok_dagster.distill.loss import (
    KD_INPUTS,
    KD_LOGPROBS,
    KD_TOKEN_IDS,
    distillation_loss,
    sparse_kl_sum,
)
from opengrok_dagster.distill.targets import ExampleTargets, KDCollator, KDTargets
from opengrok_dagster.training.attention import MASK_MODES, attention_implementation
from opengrok_dagster.training.data import MaskCollator, MaskedExample


VOCAB = 61
TOP_K = 4


def tiny_student(mode: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    )
    model.set_attn_implementation(attention_implementation(mode))
    return model


def examples() -> list[MaskedExample]:
    generator = torch.Generator().manual_seed(3)
    out = []
    for index, (length, start) in enumerate([(14, 5), (9, 3), (12, 6)]):
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        m = [float(v) for v in torch.randint(0, 2, (length,), generator=generator)]
        p = torch.rand(length, generator=generator).clamp(min=0.1).tolist()
        out.append(MaskedExample(f"e{index}", ids, start, m, p))
    return out


def random_targets(batch_examples, seed=5) -> KDTargets:
    """Teacher top-k over random ids at every other response position (plus one in the prompt, to be skipped)."""
    generator = torch.Generator().manual_seed(seed)
    by_example = {}
    for example in batch_examples:
        positions = [1, *range(example.response_start, len(example.input_ids), 2)]
        ids, logprobs = [], []
        for _ in positions:
            k = int(torch.randint(1, TOP_K + 1, (1,), generator=generator))
            chosen = torch.randperm(VOCAB, generator=generator)[:k]
            mass = torch.rand(k + 1, generator=generator).softmax(0)[:k]  # leaves some mass to "other"
            ids.append(chosen.numpy())
            logprobs.append(mass.log().numpy())
        by_example[example.example_id] = ExampleTargets(torch.tensor(positions).numpy(), ids, logprobs)
    return KDTargets(by_example, TOP_K, "test")


def batch(mode: str, targets: KDTargets | None = None):
    collate = MaskCollator(0, mode)
    return (KDCollator(collate, targets) if targets else collate)(examples())


def split(inputs: dict):
    inputs = dict(inputs)
    kd = {key: inputs.pop(key) for key in KD_INPUTS if key in inputs}
    labels = inputs.pop("labels")
    return inputs, labels, kd


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("num_items", [None, 23])
def test_alpha_zero_is_exactly_the_models_own_cross_entropy(mode, num_items):
    model = tiny_student(mode)
    inputs = batch(mode, random_targets(examples()))
    forward, labels, kd = split(inputs)
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    reference = model(**forward, labels=labels, **extra).loss
    logits = model(**forward).logits
    loss = distillation_loss(logits, labels, **kd, alpha=0.0, temperature=2.0, num_items_in_batch=num_items)
    assert torch.equal(loss, reference)


def coarse_kl_by_hand(logits_row, ids, logprobs, temperature):
    """The definition, position by position in float64: coarse (k ids + other), tempered, KL(teacher || student)."""
    student = torch.softmax(logits_row.double() / temperature, -1)
    student_coarse = [float(student[i]) for i in ids] + [1.0 - float(student[list(ids)].sum())]
    teacher = [math.exp(lp) for lp in logprobs]
    teacher = [p ** (1 / temperature) for p in teacher + [max(1.0 - sum(teacher), 0.0)]]
    teacher = [p / sum(teacher) for p in teacher]
    return sum(q * math.log(q / s) for q, s in zip(teacher, student_coarse) if q > 0)


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_is_cross_entropy_plus_alpha_t2_kl_per_response_token(mode, temperature):
    model = tiny_student(mode)
    targets = random_targets(examples())
    forward, labels, kd = split(batch(mode, targets))
    logits = model(**forward).logits
    cross_entropy = distillation_loss(logits, labels, **kd, alpha=0.0)
    loss = distillation_loss(logits, labels, **kd, alpha=0.5, temperature=temperature)
    expected_kl = 0.0
    for row, example in enumerate(examples()):
        target = targets.by_example[example.example_id]
        for position, ids, logprobs in zip(target.positions, target.token_ids, target.logprobs):
            if position >= example.response_start:  # the prompt position carries no label, so no KL
                expected_kl += coarse_kl_by_hand(logits[row, position - 1].detach(), ids, logprobs, temperature)
    response_tokens = int((labels[:, 1:] != -100).sum())
    expected = cross_entropy + 0.5 * temperature**2 * expected_kl / response_tokens
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def matching_teacher(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher logprobs whose tempered coarse distribution is exactly the student's at ``temperature``."""
    student = torch.log_softmax(logits.double() / temperature, -1)
    top = student.gather(-1, ids)
    other = torch.log1p(-top.exp().sum(-1, keepdim=True))
    untempered = temperature * torch.cat([top, other], -1)
    return (untempered - torch.logsumexp(untempered, -1, keepdim=True))[..., :-1].float()


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_a_student_that_matches_the_targets_gets_no_kl_gradient(temperature):
    logits = (torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    ids = torch.stack([torch.randperm(VOCAB, generator=torch.Generator().manual_seed(r))[:TOP_K] for r in range(6)])
    ids[0, 2:] = -1  # padded rows take part too
    teacher = matching_teacher(logits.detach(), ids.clamp(min=0), temperature)
    teacher[ids < 0] = 0.0
    if (ids < 0).any():  # recompute the padded row so that its two real ids and "other" match the student
        teacher[0, :2] = matching_teacher(logits.detach()[:1], ids[:1, :2], temperature)[0]
    kl = sparse_kl_sum(logits, ids, teacher, temperature)
    kl.backward()
    assert abs(kl.item()) < 1e-5
    torch.testing.assert_close(logits.grad, torch.zeros_like(logits), rtol=0, atol=1e-6)


def test_a_matching_student_has_the_cross_entropy_gradient_alone_in_every_parameter():
    model = tiny_student("hard")
    forward, labels, _ = split(batch("hard"))
    logits = model(**forward).logits
    rows, length = labels.shape
    generator = torch.Generator().manual_seed(9)
    ids = torch.stack([torch.randperm(VOCAB, generator=generator)[:TOP_K] for _ in range(rows * length)])
    ids = ids.view(rows, length, TOP_K)
    matched = torch.zeros(rows, length, TOP_K)
    matched[:, 1:] = matching_teacher(logits.detach()[:, :-1], ids[:, 1:], 1.0)
    distillation_loss(logits, labels, ids, matched, alpha=2.0).backward()
    with_kd = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    distillation_loss(model(**forward).logits, labels, ids, matched, alpha=0.0).backward()
    for kd_grad, ce_grad in zip(with_kd, (p.grad for p in model.parameters())):
        torch.testing.assert_close(kd_grad, ce_grad, rtol=1e-4, atol=1e-6)


def reference_kl(logits, ids, logprobs, temperature):
    """The definition with autograd in float64: masked log-sum-exp for the student's "other" bucket."""
    valid = ids >= 0
    scaled = logits.double() / temperature
    normaliser = torch.logsumexp(scaled, -1, keepdim=True)
    top = scaled.gather(-1, ids.clamp(min=0)) - normaliser
    targets = torch.zeros_like(scaled, dtype=torch.bool).scatter_(-1, ids.clamp(min=0), valid)
    other = torch.logsumexp(scaled.masked_fill(targets, float("-inf")), -1, keepdim=True) - normaliser
    teacher = torch.where(valid, logprobs.double(), float("-inf"))
    teacher = torch.cat([teacher, (1 - teacher.exp().sum(-1, keepdim=True)).log()], -1) / temperature
    teacher = teacher - torch.logsumexp(teacher, -1, keepdim=True)
    student = torch.cat([top, other], -1)
    keep = torch.cat([valid, torch.ones_like(valid[:, :1])], -1)
    return torch.where(keep, teacher.exp() * (teacher - student), 0.0).sum()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_the_kl_and_its_gradient_equal_autograd_of_the_definition(temperature):
    generator = torch.Generator().manual_seed(4)
    logits = (torch.randn(5, VOCAB, generator=generator) * 4).requires_grad_()
    ids = torch.stack([torch.randperm(VOCAB, generator=generator)[:TOP_K] for _ in range(5)])
    ids[1, 1:] = -1
    ids[3] = -1  # a row without targets contributes nothing
    logprobs = torch.log(torch.rand(5, TOP_K + 1, generator=generator).softmax(-1)[:, :TOP_K])
    kl = sparse_kl_sum(logits, ids, logprobs, temperature)
    (ours,) = torch.autograd.grad(kl, logits)
    expected = reference_kl(logits, ids, logprobs, temperature)
    (theirs,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert ours[3].abs().max() == 0


def test_kl_descent_moves_the_student_to_the_teacher():
    logits = torch.zeros(1, VOCAB, requires_grad=True)
    ids = torch.tensor([[3, 7]])
    teacher = torch.tensor([[math.log(0.7), math.log(0.2)]])
    optimiser = torch.optim.SGD([logits], lr=5.0)
    first = None
    for _ in range(200):
        optimiser.zero_grad()
        kl = sparse_kl_sum(logits, ids, teacher)
        first = kl.item() if first is None else first
        kl.backward()
        optimiser.step()
    probabilities = torch.softmax(logits.detach(), -1)[0]
    assert first > 0.5 and kl.item() < 1e-4
    assert probabilities[3].item() == pytest.approx(0.7, abs=1e-2)
    assert probabilities[7].item() == pytest.approx(0.2, abs=1e-2)


def test_targets_outside_the_labels_add_nothing():
    model = tiny_student("none")
    forward, labels, kd = split(batch("none", random_targets(examples())))
    prompt_only = kd[KD_TOKEN_IDS].clone()
    prompt_only[:, 2:] = -1  # keep only the target at position 1, inside every prompt
    logits = model(**forward).logits
    assert (prompt_only[:, 1] >= 0).any()
    torch.testing.assert_close(
        distillation_loss(logits, labels, prompt_only, kd[KD_LOGPROBS], alpha=1.0),
        distillation_loss(logits, labels, prompt_only, kd[KD_LOGPROBS], alpha=0.0),
        rtol=0,
        atol=0,
    )
