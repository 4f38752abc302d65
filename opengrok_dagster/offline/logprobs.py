"""Top-k logprobs of the embedded teacher's responses, by scoring them with the same checkpoint.

`transformers serve` (5.23) accepts ``logprobs``/``top_logprobs`` in a chat-completions request but ignores
them (``UNUSED_CHAT_COMPLETION_FIELDS`` in ``transformers/cli/serving/chat_completion.py``: a logged warning,
and every choice is built without ``logprobs``), so the embedded teacher cannot return them while it
generates. One teacher-forced forward pass over prompt + response gives the same numbers: at each response
token, the model's next-token distribution given exactly the text before it (temperature 1, before any
sampling filter), which is what an API's ``top_logprobs`` report. The result has the OpenAI shape
(``choices[0].logprobs.content``) that the ``logprobs`` column of raw responses holds.
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

    def _entry(self, token_id: int, logprob: float) -> dict:
        data = self.token_bytes[token_id]
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    @torch.no_grad()
    def content(self, messages: list[dict], response: str) -> list[dict]:
        """``choices[0].logprobs.content`` of ``response`` to the chat ``messages`` (which end before the answer).

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
        top = logprobs.topk(self.top_logprobs, dim=-1) if self.top_logprobs else None
        content = []
        for row, token_id in enumerate(response_ids):
            alternatives = (
                []
                if top is None
                else [self._entry(int(i), float(lp)) for i, lp in zip(top.indices[row], top.values[row])]
            )
            content.append({**self._entry(token_id, float(logprobs[row, token_id])), "top_logprobs": alternatives})
        return content
