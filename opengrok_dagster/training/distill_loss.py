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
    teacher's targets there, ids ``-1`` for padding. Rows without a valid id contribute 0.
    """
    valid = token_ids >= 0
    ids = token_ids.clamp(min=0)
    scaled = logits.float() / temperature
    normaliser = torch.logsumexp(scaled, dim=-1, keepdim=True)
    student_top = scaled.gather(-1, ids) - normaliser
    is_target = torch.zeros_like(scaled, dtype=torch.bool).scatter_(-1, ids, valid)
    student_other = torch.logsumexp(scaled.masked_fill(is_target, float("-inf")), dim=-1, keepdim=True) - normaliser
    student = torch.cat([student_top, student_other], dim=-1)

    teacher_top = torch.where(valid, logprobs.float(), float("-inf"))
    other_mass = (1.0 - teacher_top.exp().sum(-1, keepdim=True)).clamp(min=0.0)
    teacher = torch.cat([teacher_top, other_mass.log()], dim=-1) / temperature
    teacher = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)
    probability = teacher.exp()
    present = probability > 0  # 0 · log 0 = 0, computed without an inf or NaN reaching the gradient
    terms = probability * (torch.where(present, teacher, 0.0) - torch.where(present, student, 0.0))
    return (terms * valid.any(-1, keepdim=True)).sum()


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
