"""Tokenizer identity shared by the mask builder and the trainer: a table is only valid for the tokenizer that made it."""

from __future__ import annotations

import hashlib
import json


def tokenizer_fingerprint(tokenizer) -> str:
    """``<name>@<sha256 of the sorted vocabulary and special tokens>``: equal exactly when token ids mean the same."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = sorted(str(token) for token in tokenizer.all_special_tokens)
    digest = hashlib.sha256(json.dumps([vocabulary, special], ensure_ascii=False).encode()).hexdigest()[:16]
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"{name.rstrip('/').rsplit('/', 1)[-1]}@{digest}"


class TokenizerMismatchError(ValueError):
    """A mask table was built for another tokenizer than the one about to use it."""


def require_same_tokenizer(table_fingerprint: str, tokenizer) -> None:
    actual = tokenizer_fingerprint(tokenizer)
    if table_fingerprint != actual:
        raise TokenizerMismatchError(
            f"the mask table was built for tokenizer {table_fingerprint}, but the student's tokenizer is {actual}; "
            "re-materialise mask_tables with the same student model as the fine-tune"
        )


class TokenizerOffsetsError(ValueError):
    """The tokenizer cannot map tokens back to character spans, which aligning spaCy words needs."""


def require_offsets(tokenizer) -> None:
    """Fail early, naming the tokenizer, if it cannot return character offsets (slow Python tokenizers)."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    try:
        offsets = tokenizer("offsets probe", add_special_tokens=False, return_offsets_mapping=True).get(
            "offset_mapping"
        )
    except NotImplementedError:
        offsets = None
    if not offsets:
        raise TokenizerOffsetsError(
            f"tokenizer {name!r} ({type(tokenizer).__name__}) cannot return character offsets "
            "(return_offsets_mapping); mask tables need a fast tokenizer: give the student a tokenizer.json"
        )


def structural_special_ids(tokenizer) -> set[int]:
    """Special token ids that are structure (BOS, EOS, turn markers), so never masked; the unknown token is content."""
    return set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
