"""The student on this machine: the base model and every LoRA checkpoint, loaded once and switched in place.

Classification is scored by label log-likelihood: the prompt is run once, its KV cache is shared by every
label's continuation, and the label whose tokens (up to the end of the assistant turn) are most likely wins.
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from opengrok_dagster.training import CHECKPOINT_RECORD

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class CheckpointError(ValueError):
    """A LoRA checkpoint cannot be evaluated with this student (wrong base model, damaged directory)."""


@dataclass(frozen=True)
class Checkpoint:
    mask_mode: str
    adapter_dir: Path
    base_model: str
    version: str  # short sha256 of the adapter weights
    record: dict = field(default_factory=dict)  # opengrok_checkpoint.json, without the example id list

    @property
    def variant(self) -> str:
        return f"lora:{self.mask_mode}"


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def read_checkpoint(adapter_dir: Path, mask_mode: str) -> Checkpoint:
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    weights = next((adapter_dir / name for name in ADAPTER_WEIGHTS if (adapter_dir / name).is_file()), None)
    if not config_path.is_file() or weights is None:
        raise CheckpointError(f"{adapter_dir} is not a peft adapter (needs adapter_config.json and adapter weights); re-materialise lora_checkpoint[{mask_mode}]")
    try:
        adapter_config = json.loads(config_path.read_text())
        record = json.loads((adapter_dir / CHECKPOINT_RECORD).read_text()) if (adapter_dir / CHECKPOINT_RECORD).is_file() else {}
    except ValueError as exc:
        raise CheckpointError(f"unreadable JSON in {adapter_dir} ({exc}); re-materialise lora_checkpoint[{mask_mode}]") from None
    base_model = record.get("base_model") or adapter_config.get("base_model_name_or_path") or ""
    record = {key: value for key, value in record.items() if key != "example_ids"} | {"examples": len(record.get("example_ids", []))}
    return Checkpoint(mask_mode, adapter_dir, str(base_model), _digest(weights), record)


def find_checkpoints(adapter_dirs: Mapping[str, Path], mask_modes: tuple[str, ...]) -> tuple[list[Checkpoint], dict[str, str]]:
    """The checkpoints of ``mask_modes`` at ``adapter_dirs`` (mode -> directory, as the ``lora_checkpoint``
    manifests give them), and for each mode without one the reason, for the report."""
    found, missing = [], {}
    for mode in mask_modes:
        adapter_dir = adapter_dirs.get(mode)
        if adapter_dir is None:
            missing[mode] = f"lora_checkpoint[{mode}] is not materialised: materialise it to include it"
        elif not (Path(adapter_dir) / "adapter_config.json").is_file():
            missing[mode] = f"no adapter at {adapter_dir}: re-materialise lora_checkpoint[{mode}] to include it"
        else:
            found.append(read_checkpoint(Path(adapter_dir), mode))
    return found, missing


def model_identity(name_or_path: str) -> str:
    """What names a base model independent of where it is stored: the last path or hub-id component."""
    return str(name_or_path).rstrip("/").rsplit("/", 1)[-1].lower()


def require_base_model(checkpoint: Checkpoint, student_model: str) -> None:
    if model_identity(checkpoint.base_model) != model_identity(student_model):
        raise CheckpointError(
            f"adapter {checkpoint.adapter_dir} (mask mode {checkpoint.mask_mode}) was trained on base model "
            f"{checkpoint.base_model!r}, but the student being evaluated is {student_model!r}: set the student "
            "(OPENGROK_STUDENT_MODEL) to that base model, or re-train the checkpoint on this student"
        )


class LocalStudent:
    """The base student plus every checkpoint as a named peft adapter; ``using(variant)`` activates one."""

    BASE = "base"

    def __init__(self, model_path: str, checkpoints: list[Checkpoint] = (), max_length: int = 512, threads: int = 0) -> None:
        """``threads`` > 0 sets torch's CPU threads: on a machine shared with other jobs, 1 thread avoids the
        spin-waiting that makes 2 threads many times slower (bench/evaluation_time.py); 0 keeps torch's default."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads > 0:
            torch.set_num_threads(threads)
        self.model_path = model_path
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.checkpoints = list(checkpoints)
        for checkpoint in self.checkpoints:
            require_base_model(checkpoint, model_path)
            model = self._attach(model, checkpoint)
        self.model = model.eval()
        self._continuations: dict[str, list[int]] = {}

    @staticmethod
    def _attach(model, checkpoint: Checkpoint):
        from peft import PeftModel

        try:
            if isinstance(model, PeftModel):
                model.load_adapter(str(checkpoint.adapter_dir), adapter_name=checkpoint.mask_mode)
                return model
            return PeftModel.from_pretrained(model, str(checkpoint.adapter_dir), adapter_name=checkpoint.mask_mode)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"cannot load adapter {checkpoint.adapter_dir} onto {checkpoint.base_model!r}: {str(exc)[:300]}; "
                f"re-materialise lora_checkpoint[{checkpoint.mask_mode}] with this student"
            ) from None

    @property
    def variants(self) -> list[str]:
        return [self.BASE, *(c.variant for c in self.checkpoints)]

    @contextmanager
    def using(self, variant: str) -> Iterator[None]:
        if not self.checkpoints:
            if variant != self.BASE:
                raise KeyError(variant)
            yield
            return
        if variant == self.BASE:
            with self.model.disable_adapter():
                yield
            return
        self.model.set_adapter(variant.removeprefix("lora:"))
        yield

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)[-self.max_length:]

    def _continuation(self, answer: str) -> list[int]:
        """Token ids the chat template puts after the generation prompt for ``answer`` (end of turn included)."""
        if answer not in self._continuations:
            probe = [{"role": "user", "content": "x"}]
            prompt = self._prompt_ids(probe)
            full = list(self.tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=False))
            if full[: len(prompt)] == prompt and len(full) > len(prompt):
                self._continuations[answer] = full[len(prompt):]
            else:
                self._continuations[answer] = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return self._continuations[answer]

    def label_logprobs(self, messages: list[list[dict[str, str]]], answers: list[str]) -> np.ndarray:
        """(items x answers) summed log-probability of each answer after each prompt.

        The prompts' common prefix (system prompt, question, label list) is run once; each item continues
        from a copy of its KV cache, and every answer continues from the item's cache.
        """
        import torch

        continuations = [self._continuation(a) for a in answers]
        width = max(map(len, continuations))
        candidates = torch.tensor([c + [self.tokenizer.pad_token_id] * (width - len(c)) for c in continuations])
        candidate_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in continuations])
        prompts = [self._prompt_ids(item) for item in messages]
        shared = _common_prefix_length(prompts)
        scores = np.zeros((len(messages), len(answers)))
        with torch.inference_mode():
            prefix_cache = self.model(input_ids=torch.tensor([prompts[0][:shared]]), use_cache=True, logits_to_keep=1).past_key_values if shared else None
            for row, prompt in enumerate(prompts):
                cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else None
                out = self.model(
                    input_ids=torch.tensor([prompt[shared:]]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    past_key_values=cache, use_cache=True, logits_to_keep=1,
                )
                first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                cache = out.past_key_values
                cache.batch_repeat_interleave(len(answers))
                mask = torch.cat([torch.ones(len(answers), len(prompt), dtype=torch.long), candidate_mask], dim=1)
                rest = torch.log_softmax(self.model(input_ids=candidates, attention_mask=mask, past_key_values=cache).logits.float(), dim=-1)
                token_logprobs = torch.cat(
                    [first[candidates[:, 0]].unsqueeze(1), rest[:, :-1].gather(2, candidates[:, 1:].unsqueeze(2)).squeeze(2)], dim=1
                )
                scores[row] = (token_logprobs * candidate_mask).sum(dim=1).numpy()
        return scores

    def generate(self, messages: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
        """Greedy completions, batched with left padding."""
        import torch

        texts = []
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(messages), batch_size):
                prompts = [self._prompt_ids(m) for m in messages[start:start + batch_size]]
                width = max(map(len, prompts))
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                )
                texts.extend(self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
        return texts

    def response_nll(self, messages: list[list[dict[str, str]]], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Summed negative log-likelihood of each response after its prompt, and its token count."""
        import torch

        nll, counts = np.zeros(len(messages)), np.zeros(len(messages), dtype=np.int64)
        with torch.inference_mode():
            for row, (item, response) in enumerate(zip(messages, responses)):
                prompt = self.tokenizer.apply_chat_template(item, add_generation_prompt=True, tokenize=True, return_dict=False)
                full = list(self.tokenizer.apply_chat_template(item + [{"role": "assistant", "content": response}], tokenize=True, return_dict=False))
                overflow = max(0, len(full) - self.max_length)  # keep the response whole: drop the prompt's start
                full = full[overflow:]
                start = max(1, len(prompt) - overflow)
                ids = torch.tensor([full])
                logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0, start - 1:-1].float(), dim=-1)
                targets = ids[0, start:]
                nll[row] = float(-logprobs.gather(1, targets.unsqueeze(1)).sum())
                counts[row] = len(targets)
        return nll, counts


def _common_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens shared by the start of every sequence, leaving each at least one token of its own."""
    shortest = min(map(len, sequences))
    length = 0
    while length < shortest - 1 and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length
