"""Masked attention for the fine-tune (report 3.2): a per-token mask applied to the attention scores before the softmax.

One attention function, registered with transformers' ``AttentionInterface`` under ``opengrok_<mode>`` for each
mask mode, with transformers' stock SDPA mask function registered under the same names in
``AttentionMaskInterface`` (an implementation without a mask function gets *no* causal/padding mask at all).
It therefore works for any causal LM that dispatches through the attention interface (Llama, SmolLM2, Phi-3, ...).

The per-token mask reaches every attention layer as the forward keyword ``token_mask`` (shape batch x keys,
sent by :class:`opengrok_dagster.training.data.MaskCollator`); without it every mode is stock SDPA, so
generation and evaluation never need it. A packed batch (several examples in one row) also sends
``segment_ids`` (batch x keys, the example each token belongs to): every mode then adds a block-diagonal
mask, so a token sees only its own example, while the token mask stays that example's own. Modes:

- ``none``: stock SDPA.
- ``paper``: exactly as the report writes it, scores multiplied by the key mask before the softmax. Because
  ``(q . k_j / sqrt(d)) * m_j = q . (m_j k_j) / sqrt(d)``, the keys are scaled by ``m`` and stock SDPA runs
  unchanged (no extra cost). So written, a masked key's *score* becomes 0, not -inf: it still receives weight
  ``exp(0) / Z``; causal and padding masks are kept.
- ``hard``: masked keys get -inf (what the report intends: the model cannot attend to masked tokens); every
  token still attends to itself, so no softmax row is empty and no NaN appears; causal and padding masks kept.
- ``soft``: ``log(p_j)`` of the mask probabilities is added to the scores (``p = 0`` acts like ``hard``).

On CUDA, ``hard`` and ``soft`` run through compiled FlexAttention instead (:func:`flex_masked_attention`):
the mask becomes a block mask (a ``mask_mod``: whole blocks of masked or future keys are skipped, where SDPA
with a dense mask computes them all) and ``soft`` adds ``log p`` in a ``score_mod``; same result within
floating-point tolerance (tested against the SDPA path).

The bias (or key scale) is built once per forward: every layer receives the same ``attention_mask`` and
``token_mask`` tensors, so the first layer builds it and the others reuse it (:class:`_PerForwardBias`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from opengrok_dagster.training import MASK_MODES


FLEX_MODES = ("hard", "soft")  # on CUDA these run through FlexAttention
TOKEN_MASK_KWARG = "token_mask"
SEGMENT_IDS_KWARG = "segment_ids"
_IMPLEMENTATION_PREFIX = "opengrok_"


class UnknownMaskModeError(ValueError):
    """A mask mode outside ``MASK_MODES``."""


def require_mask_mode(mode: str) -> str:
    if mode not in MASK_MODES:
        raise UnknownMaskModeError(f"unknown mask mode {mode!r}; use one of {', '.join(MASK_MODES)}")
    return mode


def attention_implementation(mode: str) -> str:
    """The ``attn_implementation`` name that trains with ``mode`` (registering it on first use)."""
    register_masked_attention()
    return _IMPLEMENTATION_PREFIX + require_mask_mode(mode)


def register_masked_attention() -> None:
    """Register the masked attention and its mask function for every mode (idempotent)."""
    for mode in MASK_MODES:
        name = _IMPLEMENTATION_PREFIX + mode
        AttentionInterface.register(name, _attention_for(mode))
        AttentionMaskInterface.register(name, sdpa_mask)


def _attention_for(mode: str) -> Callable:
    def masked_attention(module, query, key, value, attention_mask, token_mask=None, segment_ids=None, **kwargs):
        return masked_sdpa_attention(
            module,
            query,
            key,
            value,
            attention_mask,
            mode=mode,
            token_mask=token_mask,
            segment_ids=segment_ids,
            **kwargs,
        )

    masked_attention.__name__ = f"masked_sdpa_attention_{mode}"
    return masked_attention


def masked_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    mode: str,
    token_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Stock SDPA with the per-token mask applied in ``mode``; shapes as transformers' ``sdpa_attention_forward``.

    ``segment_ids`` (packed rows) confine attention to each token's own example in every mode.
    """
    q_length, kv_length = query.shape[2], key.shape[2]
    for name, tensor in ((TOKEN_MASK_KWARG, token_mask), (SEGMENT_IDS_KWARG, segment_ids)):
        if tensor is not None and tensor.shape != (key.shape[0], kv_length):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but the attention has batch {key.shape[0]} x "
                f"{kv_length} keys; "
                "it is a training-time input for full sequences (leave it out when generating with a cache)"
            )
    if segment_ids is not None:
        attention_mask = _PER_FORWARD.get(
            "segments",
            (q_length, kv_length),
            (segment_ids, attention_mask),
            lambda: block_diagonal_mask(segment_ids, attention_mask, q_length, kv_length),
        )
    if mode == "none" or token_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if mode == "paper":
        scale = _PER_FORWARD.get("scale", key.dtype, (token_mask,), lambda: key_scale(token_mask, key.dtype))
        return sdpa_attention_forward(module, query, key * scale, value, attention_mask, **kwargs)
    if mode in FLEX_MODES and query.is_cuda and not (module.training and getattr(module, "attention_dropout", 0.0)):
        return flex_masked_attention(
            module, query, key, value, attention_mask, mode=mode, token_mask=token_mask, **kwargs
        )
    bias = _PER_FORWARD.get(
        "bias",
        (mode, query.dtype, q_length, kv_length),
        (token_mask, attention_mask),
        lambda: attention_bias(mode, token_mask, attention_mask, q_length, kv_length, query.dtype),
    )
    return sdpa_attention_forward(module, query, key, value, bias, **kwargs)


def flex_masked_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    mode: str,
    token_mask: torch.Tensor,
    scaling: float | None = None,
    compiled: bool | None = None,
    **_,
) -> tuple[torch.Tensor, None]:
    """``hard`` / ``soft`` with FlexAttention: the allowed pairs as a block mask, ``soft``'s ``log p`` as a score_mod.

    ``attention_mask`` is the boolean causal + padding (+ block-diagonal) mask or None (plain causal), as for
    :func:`attention_bias`. ``compiled`` defaults to compiling on CUDA (the fused kernel); eager elsewhere.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, q_length, kv_length = query.shape[0], query.shape[2], key.shape[2]
    compiled = query.is_cuda if compiled is None else compiled

    def build():
        allowed = _causal_padding_mask(attention_mask, batch, q_length, kv_length, query.device)[:, 0]
        keep = token_mask > 0
        offset = kv_length - q_length

        def mask_mod(b, h, q_index, kv_index):
            pair = allowed[b, q_index, kv_index]
            if mode == "hard":  # a token always sees itself, as in attention_bias
                pair = (pair & keep[b, kv_index]) | (q_index + offset == kv_index)
            return pair

        block_mask = create_block_mask(
            mask_mod, batch, None, q_length, kv_length, device=query.device, _compile=compiled
        )
        finite_min = torch.finfo(query.dtype).min
        log_p = torch.log(token_mask.to(query.dtype).clamp(min=0.0)).clamp(min=finite_min)
        return block_mask, log_p

    block_mask, log_p = _PER_FORWARD.get(
        "flex", (mode, query.dtype, q_length, kv_length, compiled), (token_mask, attention_mask), build
    )

    def add_log_p(score, b, h, q_index, kv_index):
        return score + log_p[b, kv_index]

    attend = _compiled_flex_attention() if compiled else flex_attention
    output = attend(
        query,
        key,
        value,
        score_mod=add_log_p if mode == "soft" else None,
        block_mask=block_mask,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


_COMPILED_FLEX: list[Callable] = []


def _compiled_flex_attention() -> Callable:
    """FlexAttention compiled once per process (eager FlexAttention materialises every score)."""
    if not _COMPILED_FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=True))
    return _COMPILED_FLEX[0]


def block_diagonal_mask(
    segment_ids: torch.Tensor, attention_mask: torch.Tensor | None, q_length: int, kv_length: int
) -> torch.Tensor:
    """Causal + padding mask (batch, 1, queries, keys) restricted to pairs of tokens of the same packed example."""
    allowed = _causal_padding_mask(attention_mask, segment_ids.shape[0], q_length, kv_length, segment_ids.device)
    same_example = segment_ids[:, None, kv_length - q_length :, None] == segment_ids[:, None, None, :]
    return allowed & same_example


def key_scale(token_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``paper`` mode: the key vectors times ``m``, broadcast over heads and head dimension."""
    return token_mask.to(dtype)[:, None, :, None]


def attention_bias(
    mode: str,
    token_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    q_length: int,
    kv_length: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The 4D mask (batch, 1, queries, keys) handed to SDPA for ``hard`` (bool) or ``soft`` (additive float).

    ``attention_mask`` is what the stock SDPA mask function built: a boolean causal+padding mask, or ``None``
    when the batch has no padding (then plain causal).
    """
    allowed = _causal_padding_mask(attention_mask, token_mask.shape[0], q_length, kv_length, token_mask.device)
    if mode == "hard":
        keep = (token_mask > 0)[:, None, None, :]
        self_attention = torch.eye(q_length, kv_length, dtype=torch.bool, device=token_mask.device).roll(
            kv_length - q_length, dims=1
        )
        # A token's own key is always attendable, so no row is empty (empty rows softmax to NaN).
        return (allowed & keep) | self_attention
    if mode == "soft":
        finite_min = torch.finfo(dtype).min
        log_p = torch.log(token_mask.to(dtype).clamp(min=0.0)).clamp(min=finite_min)[:, None, None, :]
        # finfo.min instead of -inf keeps fully masked rows (padding queries) finite, as transformers' eager mask does.
        return torch.where(allowed, log_p, torch.full((), finite_min, dtype=dtype, device=token_mask.device))
    raise UnknownMaskModeError(f"mode {mode!r} has no attention bias; use hard or soft")


def _causal_padding_mask(attention_mask, batch_size, q_length, kv_length, device) -> torch.Tensor:
    if attention_mask is not None:
        if attention_mask.dtype != torch.bool:
            raise TypeError(f"expected the boolean mask of the SDPA mask function, got {attention_mask.dtype}")
        return attention_mask
    causal = torch.ones(q_length, kv_length, dtype=torch.bool, device=device).tril(kv_length - q_length)
    return causal.expand(batch_size, 1, q_length, kv_length)


class _PerForwardBias:
    """Caches what is built from the tensors of the current forward, one slot per kind (segments, scale, bias).

    All layers of one forward get the very same mask tensor objects, so identity (held by weak reference,
    never by id alone) says whether a cached value still applies. Gradient-checkpoint recomputation reuses
    it too. Slots are per thread.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, slot: str, key, sources: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        entries = self._local.__dict__.setdefault("entries", {})
        cached = entries.get(slot)
        if cached is not None:
            cached_key, refs, value = cached
            if (
                cached_key == key
                and len(refs) == len(sources)
                and all(
                    (ref is None and source is None) or (ref is not None and ref() is source)
                    for ref, source in zip(refs, sources)
                )
            ):
                return value
        value = build()
        refs = tuple(None if source is None else weakref.ref(source) for source in sources)
        entries[slot] = (key, refs, value)
        return value


_PER_FORWARD = _PerForwardBias()
