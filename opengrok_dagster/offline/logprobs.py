"""Top-k logprobs of the embedded teacher's responses, by scoring them with the same checkpoint.

`transformers serve` (5.23) accepts ``logprobs``/``top_logprobs`` in a chat-completions request but ignores
them (``UNUSED_CHAT_COMPLETION_FIELDS`` in ``transformers/cli/serving/chat_completion.py``: a logged warning,
and every choice is built without ``logprobs``), so it cannot return them while it generates. One
teacher-forced forward pass over prompt + response gives the numbers instead: at each response token, the
model's next-token distribution given exactly the text before it, at temperature 1 and before any sampling
filter (top_p, a ``response_format`` grammar), whether the text was sampled or greedy; that is what OpenAI's
``top_logprobs`` and vLLM's default report. The response is re-tokenised, so a sampled non-canonical
tokenisation is scored as its canonical one. The result has the OpenAI shape (``choices[0].logprobs.content``)
that the ``logprobs`` column of raw responses holds; :mod:`.logprobs_server` attaches it to the embedded
teacher's answers when a request asks for logprobs.
"""

from __future__ import annotations

import torch


class TeacherLogprobs:
    """Scores responses with the teacher's checkpoint; ``top_logprobs`` alternatives per token (OpenAI allows 20)."""

    def __init__(self, model, tokenizer, top_logprobs: int = 8) -> None:
        from opengrok_dagster.distill.align import StudentVocabulary

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.top_logprobs = top_logprobs
        self.token_bytes = StudentVocabulary.of(tokenizer).token_bytes  # a token may end mid-character

    @classmethod
    def load(cls, model_dir, top_logprobs: int = 8) -> TeacherLogprobs:
        """The scorer of the checkpoint in ``model_dir``, in fp32 on the CPU, as the embedded teacher serves it."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(str(model_dir)), top_logprobs)

    def _entry(self, token_id: int, logprob: float) -> dict:
        data = self.token_bytes[token_id]
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    @torch.no_grad()
    def content(self, messages: list[dict], response: str, top_logprobs: int | None = None) -> list[dict]:
        """``choices[0].logprobs.content`` of ``response`` to the chat ``messages`` (which end before the answer),
        with ``top_logprobs`` alternatives per token (default: the scorer's).

        The response is tokenised on its own after the generation prompt, as generated tokens follow the
        prompt's, so no token straddles the two.
        """
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if not response_ids:
            return []
        ids = torch.tensor([prompt_ids + response_ids], device=self.model.device)
        logits = self.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        k = self.top_logprobs if top_logprobs is None else top_logprobs
        top = logprobs.topk(k, dim=-1) if k else None
        content = []
        for row, token_id in enumerate(response_ids):
            alternatives = (
                []
                if top is None
                else [self._entry(int(i), float(lp)) for i, lp in zip(top.indices[row], top.values[row])]
            )
            content.append({**self._entry(token_id, float(logprobs[row, token_id])), "top_logprobs": alternatives})
        return content
