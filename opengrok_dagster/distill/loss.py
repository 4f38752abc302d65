"""The distillation loss: cross-entropy on response tokens + alpha x KL(teacher top-k + other || student).

Targets are sparse (see :mod:`opengrok_dagster.distill.align`): at an aligned input position ``t`` the
teacher's probabilities of up to ``k`` student token ids, predicted from the logits at ``t - 1`` like the
label at ``t``. Both distributions are coarsened to those ``k`` tokens plus one "other" bucket (the mass of
every remaining token), so the KL compares what the teacher actually told us and nothing it did not. With
temperature ``T`` both coarse distributions are softened (``q ∝ q^(1/T)``, student ``softmax(z / T)``) and the
KL is scaled by ``T²`` (Hinton et al.) so its gradient keeps its size as ``T`` changes.

The KL is summed over aligned positions and divided by the same count as the cross-entropy (the response
tokens of the batch, or ``num_items_in_batch`` under gradient accumulation): each response token adds
``CE + alpha·T²·KL`` where it is aligned, and ``CE`` alone where it is not.
"""

from __future__ import annotations

import torch
from transformers.loss.loss_utils import ForCausalLMLoss


IGNORE_INDEX = -100
KD_TOKEN_IDS = "kd_token_ids"  # batch x sequence x k student ids, -1 where a position has fewer (or no) targets
KD_LOGPROBS = "kd_logprobs"  # batch x sequence x k teacher log-probabilities of those ids
KD_INPUTS = (KD_TOKEN_IDS, KD_LOGPROBS)


def sparse_kl_sum(
    logits: torch.Tensor, token_ids: torch.Tensor, logprobs: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Σ over rows of KL(teacher || student) between the coarse distributions (the ``k`` ids + other).

    ``logits`` (n x vocab) are the student's at the rows to compare; ``token_ids``/``logprobs`` (n x k) the
    teacher's targets there, distinct ids per row, ``-1`` for padding. Rows without a valid id contribute 0.
    """
    valid = token_ids >= 0
    rows = valid.any(-1)
    if not bool(rows.all()):
        logits, token_ids, logprobs, valid = logits[rows], token_ids[rows], logprobs[rows], valid[rows]
    first_valid = token_ids.gather(-1, valid.int().argmax(-1, keepdim=True))
    ids = torch.where(valid, token_ids, first_valid)  # padding repeats a real id, with zero teacher probability
    teacher_top, teacher_other = _tempered_teacher(logprobs.to(logits.device), valid, temperature)
    return _CoarseKL.apply(logits, ids, valid, teacher_top, teacher_other, temperature)


def _tempered_teacher(logprobs: torch.Tensor, valid: torch.Tensor, temperature: float):
    """The teacher's coarse distribution (k ids + other = 1 - their mass), softened: q ∝ q^(1/T)."""
    top = torch.where(valid, logprobs.float(), float("-inf"))
    other = (1.0 - top.exp().sum(-1, keepdim=True)).clamp(min=0.0).log()
    tempered = torch.cat([top, other], dim=-1) / temperature
    probability = (tempered - torch.logsumexp(tempered, dim=-1, keepdim=True)).exp()
    return probability[:, :-1], probability[:, -1:]


def _kl_terms(target: torch.Tensor, log_target: torch.Tensor, log_student: torch.Tensor) -> torch.Tensor:
    """q (log q - log p), 0 where q = 0."""
    present = target > 0
    return torch.where(present, target * (log_target - log_student), 0.0)


class _CoarseKL(torch.autograd.Function):
    """KL(q || coarse softmax(z / T)) summed over rows, and its gradient, in one pass over the vocabulary each.

    With p = softmax(z / T), C the target ids and p_o = Σ_{v∉C} p_v, the gradient is (p_v - q_v) / T on C and
    p_v (1 - q_o / p_o) / T elsewhere: autograd through the same expression keeps several vocabulary-wide
    intermediates alive and is ~2x slower (bench/kd_overhead.py).
    """

    @staticmethod
    def forward(ctx, logits, ids, valid, teacher_top, teacher_other, temperature):
        scaled = logits.float() / temperature
        normaliser = torch.logsumexp(scaled, dim=-1, keepdim=True)
        log_top = scaled.gather(-1, ids) - normaliser
        rest = scaled.sub_(normaliser).exp_().scatter_(-1, ids, 0.0)  # p outside the targets, in place
        other = rest.sum(-1, keepdim=True)
        log_other = other.clamp(min=torch.finfo(other.dtype).tiny).log()
        kl = (_kl_terms(teacher_top, teacher_top.log(), log_top) * valid).sum()
        kl = kl + _kl_terms(teacher_other, teacher_other.log(), log_other).sum()
        ctx.save_for_backward(rest, log_top, other, ids, valid, teacher_top, teacher_other)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_output):
        rest, log_top, other, ids, valid, teacher_top, teacher_other = ctx.saved_tensors
        scale = grad_output / ctx.temperature
        on_targets = log_top.exp() - teacher_top * valid
        on_targets = torch.where(valid, on_targets, on_targets.gather(-1, valid.int().argmax(-1, keepdim=True)))
        ratio = torch.where(other > 0, teacher_other / other.clamp(min=torch.finfo(other.dtype).tiny), 0.0)
        grad = (rest * (1.0 - ratio)).scatter_(-1, ids, on_targets).mul_(scale)
        return grad.to(ctx.dtype), None, None, None, None, None


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kd_token_ids: torch.Tensor,
    kd_logprobs: torch.Tensor,
    *,
    alpha: float,
    temperature: float = 1.0,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """transformers' causal-LM cross-entropy on ``labels`` plus ``alpha·T²·KL`` at the aligned label positions.

    ``alpha = 0`` returns exactly the cross-entropy a causal LM computes from ``labels`` (same function, same
    reduction). Targets at positions whose label is ignored (prompt, padding) are skipped.
    """
    cross_entropy = ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)
    if alpha == 0:
        return cross_entropy
    shifted_labels = labels[:, 1:]
    ids = kd_token_ids[:, 1:].to(logits.device)
    rows = (ids >= 0).any(-1) & (shifted_labels != IGNORE_INDEX)
    kl = sparse_kl_sum(logits[:, :-1][rows], ids[rows], kd_logprobs[:, 1:].to(logits.device)[rows], temperature)
    count = num_items_in_batch if num_items_in_batch is not None else (shifted_labels != IGNORE_INDEX).sum()
    if torch.is_tensor(count):
        count = count.to(kl.device)
    return cross_entropy + alpha * temperature**2 * kl / count
