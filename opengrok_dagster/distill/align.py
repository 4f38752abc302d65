"""Align a teacher's per-token top-k logprobs to the student's tokens of the same response.

Teacher and student tokenise differently (issue 16: an API teacher's vocabulary is not the student's). Both
token sequences spell the same text, so each token is placed by its *byte* span in that text (UTF-8): a byte
span is exact even where a tokenizer splits one character (an emoji) over several byte tokens, where
character offsets from a fast tokenizer overlap. A student token whose byte span equals a teacher token's
span gets that teacher position's distribution as its target: the top-k alternatives that are single
student tokens, with the rest of the probability mass left to an implicit "other" bucket (the loss
derives it). Every other response token keeps plain cross-entropy only.

Teacher tokens are read in the OpenAI chat-completions shape (``choices[0].logprobs.content``): ``bytes``
when the server sends them, else the token string, decoded as plain text, as byte-level BPE symbols
(``Ġ``) or as SentencePiece pieces (``▁``, ``<0x..>``), whichever spells the response. Where the response
differs from the teacher's text (the filter scrubbed PII), only spans inside unchanged stretches align.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

import numpy as np
import pandas as pd

from opengrok_dagster.masks.render import ChatRenderer
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
from opengrok_dagster.tasks.schemas import KD_COLUMNS


Span = tuple[int, int]
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SENTENCEPIECE_SPACE = "\u2581"


class TeacherLogprobsError(ValueError):
    """A row's ``logprobs`` value is not the chat-completions ``logprobs.content`` shape."""


class AlignmentInputError(ValueError):
    """The mask table and the responses it is aligned with disagree; the message names the fix."""


class StudentVocabularyError(ValueError):
    """The student's tokenizer cannot spell its tokens as bytes, which the alignment needs."""


def input_ids_digest(input_ids) -> str:
    """Identity of a mask-table row's tokens: targets index into exactly these positions."""
    return hashlib.sha256(np.asarray(input_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, inverted: each byte-level BPE symbol to its byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[chr(byte)] = byte
        else:
            symbols[chr(256 + extra)] = byte
            extra += 1
    return symbols


def decode_byte_level(piece: str) -> bytes | None:
    """``Ġhello`` -> ``b" hello"``; None if ``piece`` is not made of byte-level symbols."""
    alphabet = byte_level_alphabet()
    if not all(char in alphabet for char in piece):
        return None
    return bytes(alphabet[char] for char in piece)


def decode_sentencepiece(piece: str) -> bytes:
    """``▁hello`` -> ``b" hello"``, ``<0xF0>`` -> ``b"\\xf0"``."""
    byte = _BYTE_PIECE.match(piece)
    if byte:
        return bytes([int(byte.group(1), 16)])
    return piece.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")


@dataclass(frozen=True)
class StudentVocabulary:
    """Every student token id spelled as bytes, and the reverse map for teacher alternatives."""

    token_bytes: list[bytes]
    by_bytes: dict[bytes, int]
    fingerprint: str

    @classmethod
    def of(cls, tokenizer) -> StudentVocabulary:
        decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
        kinds = {decoder.get("type")} | {step.get("type") for step in decoder.get("decoders") or []}
        if "ByteLevel" in kinds:
            spell = decode_byte_level
        elif kinds & {"Metaspace", "ByteFallback", "Replace"}:
            spell = decode_sentencepiece
        else:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise StudentVocabularyError(
                f"student tokenizer {name!r} has decoder {sorted(k for k in kinds if k)}, which does not spell "
                "tokens as bytes; token-level distillation needs a byte-level BPE or SentencePiece student "
                "(GPT-2/Llama/Phi style)"
            )
        vocabulary = tokenizer.get_vocab()
        added = {token.content for token in tokenizer.added_tokens_decoder.values()}
        token_bytes = [b""] * (max(vocabulary.values()) + 1)
        by_bytes: dict[bytes, int] = {}
        for piece, token_id in sorted(vocabulary.items(), key=lambda item: item[1]):
            spelled = piece.encode("utf-8") if piece in added else spell(piece)
            token_bytes[token_id] = spelled if spelled is not None else piece.encode("utf-8")
            if piece not in added and spelled:
                by_bytes.setdefault(spelled, token_id)
        for token_id, token in tokenizer.added_tokens_decoder.items():
            if not token.special:
                by_bytes.setdefault(token.content.encode("utf-8"), token_id)  # a base token of the same bytes wins
        return cls(token_bytes, by_bytes, tokenizer_fingerprint(tokenizer))


@dataclass(frozen=True)
class TeacherToken:
    """One generated position: the sampled token and its top-k alternatives, as raw strings and optional bytes."""

    token: str
    data: bytes | None
    logprob: float
    alternatives: tuple[tuple[str, bytes | None, float], ...]


def parse_teacher_logprobs(value, where: str) -> list[TeacherToken] | None:
    """The ``logprobs`` column value (JSON text or parsed list) as tokens; None when logprobs were not requested."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    fix = "re-collect it, or clear the logprobs column of that row"
    try:
        content = json.loads(value) if isinstance(value, (str, bytes)) else value
    except json.JSONDecodeError as exc:
        raise TeacherLogprobsError(f"{where}: logprobs is not JSON ({exc.msg}); {fix}") from None
    if content is None:
        return None
    if not isinstance(content, list):
        raise TeacherLogprobsError(
            f"{where}: logprobs must be the list choices[0].logprobs.content, got {type(content).__name__}; {fix}"
        )
    tokens = []
    for index, entry in enumerate(content):
        try:
            alternatives = tuple(
                (str(alt["token"]), _optional_bytes(alt.get("bytes")), float(alt["logprob"]))
                for alt in entry.get("top_logprobs") or ()
            )
            tokens.append(
                TeacherToken(
                    str(entry["token"]), _optional_bytes(entry.get("bytes")), float(entry["logprob"]), alternatives
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise TeacherLogprobsError(
                f"{where}: logprobs entry {index} is not {{token, logprob, bytes, top_logprobs}} "
                f"({type(exc).__name__}: {exc}); {fix}"
            ) from None
    return tokens


def _optional_bytes(value) -> bytes | None:
    return None if value is None else bytes(value)


_SPELLINGS = (
    lambda piece: piece.encode("utf-8"),
    decode_byte_level,
    decode_sentencepiece,
)


def _spell(token: str, data: bytes | None, spelling) -> bytes | None:
    return data if data is not None else spelling(token)


def spell_teacher(tokens: list[TeacherToken], response: bytes):
    """The spelling (plain, byte-level, SentencePiece) under which the teacher's tokens concatenate to ``response``;
    plain text when none does (the response was then edited after collection)."""
    for spelling in _SPELLINGS:
        spelled = [_spell(t.token, t.data, spelling) for t in tokens]
        if all(s is not None for s in spelled) and b"".join(spelled) == response:
            return spelling
    return _SPELLINGS[0]


def byte_spans(pieces: list[bytes]) -> list[Span]:
    ends = np.cumsum([len(piece) for piece in pieces], dtype=np.int64)
    return [(int(end - len(piece)), int(end)) for piece, end in zip(pieces, ends)]


def project_spans(spans: list[Span], source: bytes, target: bytes) -> list[Span | None]:
    """Move byte spans of ``source`` into ``target``: exactly where one is a prefix of the other, else through the
    stretches the two share (a span crossing an edit, or outside ``target``, becomes None)."""
    shared = min(len(source), len(target))
    if source[:shared] == target[:shared]:
        return [span if span[1] <= shared else None for span in spans]
    blocks = SequenceMatcher(None, source, target, autojunk=False).get_matching_blocks()
    starts = np.array([block.a for block in blocks], dtype=np.int64)
    projected: list[Span | None] = []
    for start, end in spans:
        index = int(np.searchsorted(starts, start, side="right")) - 1
        block = blocks[index] if index >= 0 else None
        inside = block is not None and block.size and start >= block.a and end <= block.a + block.size
        projected.append((start - block.a + block.b, end - block.a + block.b) if inside else None)
    return projected


@dataclass(frozen=True)
class AlignedExample:
    """Sparse targets of one example: for each aligned input position, student token ids and teacher logprobs."""

    positions: list[int]
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    response_tokens: int

    @property
    def aligned_tokens(self) -> int:
        return len(self.positions)


def align_example(
    input_ids: list[int],
    text: str,
    response_span: Span,
    response_start: int,
    teacher: list[TeacherToken],
    vocabulary: StudentVocabulary,
) -> AlignedExample:
    """Targets for the student tokens ``input_ids[response_start:]`` of ``text`` (the chat-templated example whose
    response occupies characters ``response_span``) from the teacher tokens of that response."""
    text_bytes = text.encode("utf-8")
    first = len(text[: response_span[0]].encode("utf-8"))
    response = text[response_span[0] : response_span[1]].encode("utf-8")
    last = first + len(response)

    student_pieces = [vocabulary.token_bytes[i] if 0 <= i < len(vocabulary.token_bytes) else b"" for i in input_ids]
    student = project_spans(byte_spans(student_pieces), b"".join(student_pieces), text_bytes)
    spelling = spell_teacher(teacher, response)
    teacher_pieces = [_spell(t.token, t.data, spelling) or b"" for t in teacher]
    teacher_spans = project_spans(byte_spans(teacher_pieces), b"".join(teacher_pieces), response)
    by_span = {
        (span[0] + first, span[1] + first): index
        for index, span in enumerate(teacher_spans)
        if span and span[1] > span[0]
    }

    positions, token_ids, logprobs, response_tokens = [], [], [], 0
    for position in range(response_start, len(input_ids)):
        span = student[position]
        if span is None or span[1] <= first or span[0] >= last:
            response_tokens += span is None
            continue
        response_tokens += 1
        match = by_span.get(span) if span[1] > span[0] else None
        if match is None:
            continue
        candidates = _student_candidates(teacher[match], spelling, vocabulary)
        if candidates:
            positions.append(position)
            token_ids.append(list(candidates))
            logprobs.append(list(candidates.values()))
    return AlignedExample(positions, token_ids, logprobs, response_tokens)


def _student_candidates(token: TeacherToken, spelling, vocabulary: StudentVocabulary) -> dict[int, float]:
    """The teacher's alternatives (and sampled token) that are single student tokens, id -> logprob, best first."""
    candidates: dict[int, float] = {}
    seen: set[bytes] = set()
    for piece, data, logprob in ((token.token, token.data, token.logprob), *token.alternatives):
        spelled = _spell(piece, data, spelling)
        if spelled is None or spelled in seen or not math.isfinite(logprob):
            continue
        seen.add(spelled)
        student_id = vocabulary.by_bytes.get(spelled)
        if student_id is not None:
            candidates[student_id] = (
                float(np.logaddexp(candidates[student_id], logprob)) if student_id in candidates else logprob
            )
    return dict(sorted(candidates.items(), key=lambda item: -item[1]))


@dataclass
class KDTargetsResult:
    table: pd.DataFrame
    response_tokens: int
    aligned_tokens: int
    rows_with_logprobs: int

    @property
    def aligned_share(self) -> float:
        return self.aligned_tokens / self.response_tokens if self.response_tokens else 0.0


def build_kd_targets(mask_table: pd.DataFrame, responses: pd.DataFrame, tokenizer) -> KDTargetsResult:
    """One row per mask-table row: the sparse targets of its response (empty lists where the teacher sent no logprobs).

    ``responses`` holds, per ``example_id``, the rendered texts (``system_prompt, prompt, response``) and the
    teacher's ``logprobs``; each example is re-rendered with the student's chat template to locate its response.
    """
    vocabulary = renderer = None  # built for the first row with logprobs: without any, nothing is asked of the student
    by_id = responses.drop_duplicates("example_id").set_index("example_id")
    rows, response_tokens, aligned_tokens, with_logprobs = [], 0, 0, 0
    for row in mask_table.itertuples(index=False):
        example_id, input_ids = str(row.example_id), [int(i) for i in row.input_ids]
        source = by_id.loc[example_id] if example_id in by_id.index else None
        where = f"raw response of example {example_id}"
        teacher = None if source is None else parse_teacher_logprobs(source["logprobs"], where)
        targets = AlignedExample([], [], [], 0)
        if teacher is not None:
            if vocabulary is None:
                vocabulary, renderer = StudentVocabulary.of(tokenizer), ChatRenderer(tokenizer)
            system = None if pd.isna(source["system_prompt"]) else str(source["system_prompt"])
            rendered = renderer.render(system, str(source["prompt"]), str(source["response"]))
            if hasattr(row, "text") and rendered.text != row.text:
                raise AlignmentInputError(
                    f"mask_tables row {example_id!r} was rendered from other texts than filtered_responses holds now; "
                    "re-materialise mask_tables before kd_targets"
                )
            span = rendered.spans["response"]
            targets = align_example(input_ids, rendered.text, span, int(row.response_start), teacher, vocabulary)
            with_logprobs += 1
            response_tokens += targets.response_tokens
            aligned_tokens += targets.aligned_tokens
        rows.append(
            {
                "example_id": example_id,
                "input_ids_digest": input_ids_digest(input_ids),
                "kd_positions": np.asarray(targets.positions, dtype=np.int32),
                "kd_token_ids": [np.asarray(ids, dtype=np.int32) for ids in targets.token_ids],
                "kd_logprobs": [np.asarray(lp, dtype=np.float32) for lp in targets.logprobs],
                "response_tokens": targets.response_tokens,
                "aligned_tokens": targets.aligned_tokens,
            }
        )
    table = pd.DataFrame(rows, columns=list(KD_COLUMNS))
    table["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    return KDTargetsResult(table, response_tokens, aligned_tokens, with_logprobs)
