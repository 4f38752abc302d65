"""Render examples with the student's chat template and know where each message's text lies in the result."""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError


SEGMENTS = ("system", "prompt", "response")
_ROLES = {"system": "system", "prompt": "user", "response": "assistant"}


class ChatTemplateError(ValueError):
    """The student's chat template cannot render an example so that its message texts can be located."""


@dataclass(frozen=True)
class RenderedExample:
    """The chat-templated text and the character span of each message's content in it (absent: no system prompt)."""

    text: str
    spans: dict[str, tuple[int, int]]
    contents: dict[str, str]


def _placeholder(index: int) -> str:
    return f"\ue000{index}\ue001"  # private-use characters: no template alters or contains them


class ChatRenderer:
    """Learns the template's scaffolding once per message shape, then places each example's texts in it.

    Every result is checked against the template's own rendering, so a template that rewrites content
    (e.g. trims it) is followed exactly or refused with a clear error, never silently misaligned.
    """

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; the student must be an "
                "instruct model whose tokenizer ships one (chat_template.jinja or tokenizer_config.json)"
            )
        self._tokenizer = tokenizer
        self._scaffolds: dict[tuple[str, ...], list[str]] = {}

    def _render(self, names: tuple[str, ...], contents: list[str]) -> str:
        messages = [{"role": _ROLES[n], "content": c} for n, c in zip(names, contents)]
        try:
            return self._tokenizer.apply_chat_template(messages, tokenize=False)
        except TemplateError as exc:
            raise ChatTemplateError(
                f"the student's chat template refuses a {'/'.join(_ROLES[n] for n in names)} conversation ({exc}); "
                "use a student whose template accepts these roles, or leave system_prompt empty in the prompt grid"
            ) from None

    def _scaffold(self, names: tuple[str, ...]) -> list[str]:
        if names not in self._scaffolds:
            text = self._render(names, [_placeholder(i) for i in range(len(names))])
            pieces = []
            for index in range(len(names)):
                before, found, text = text.partition(_placeholder(index))
                if not found:
                    raise ChatTemplateError(
                        f"the student's chat template drops the {_ROLES[names[index]]} message; "
                        "use a student whose template renders system, user and assistant turns"
                    )
                pieces.append(before)
            self._scaffolds[names] = [*pieces, text]
        return self._scaffolds[names]

    def render(self, system_prompt: str | None, prompt: str, response: str) -> RenderedExample:
        names = ("prompt", "response") if not system_prompt else SEGMENTS
        contents = [prompt, response] if not system_prompt else [system_prompt, prompt, response]
        expected = self._render(names, contents)
        for candidate in (contents, [c.strip() for c in contents]):
            rendered = self._place(names, candidate)
            if rendered.text == expected:
                return rendered
        raise ChatTemplateError(
            "the student's chat template rewrites message text beyond trimming, so tokens cannot be traced back "
            "to words; use a student whose template inserts message content verbatim"
        )

    def _place(self, names: tuple[str, ...], contents: list[str]) -> RenderedExample:
        scaffold = self._scaffold(names)
        parts, spans, cursor = [], {}, 0
        for name, piece, content in zip(names, scaffold, contents):
            cursor += len(piece)
            spans[name] = (cursor, cursor + len(content))
            cursor += len(content)
            parts += [piece, content]
        parts.append(scaffold[-1])
        return RenderedExample("".join(parts), spans, dict(zip(names, contents)))
