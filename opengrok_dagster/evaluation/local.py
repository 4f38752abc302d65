"""The student on this machine: the base model and every LoRA checkpoint, loaded once and switched in place.

Classification is scored by label log-likelihood: the label whose tokens (up to the end of the assistant
turn) are most likely after the prompt wins. The prefix every prompt shares (system prompt, question, label
list) is run once and its KV cache reused; posts then go in left-padded batches, each row carrying every
label's tokens behind the post under a mask that keeps the labels apart, so a batch costs one forward.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
        raise CheckpointError(
            f"{adapter_dir} is not a peft adapter (needs adapter_config.json and adapter weights); re-materialise lora_checkpoint[{mask_mode}]"
        )
    try:
        adapter_config = json.loads(config_path.read_text())
        record = (
            json.loads((adapter_dir / CHECKPOINT_RECORD).read_text())
            if (adapter_dir / CHECKPOINT_RECORD).is_file()
            else {}
        )
    except ValueError as exc:
        raise CheckpointError(
            f"unreadable JSON in {adapter_dir} ({exc}); re-materialise lora_checkpoint[{mask_mode}]"
        ) from None
    base_model = record.get("base_model") or adapter_config.get("base_model_name_or_path") or ""
    record = {key: value for key, value in record.items() if key != "example_ids"} | {
        "examples": len(record.get("example_ids", []))
    }
    return Checkpoint(mask_mode, adapter_dir, str(base_model), _digest(weights), record)


def find_checkpoints(
    adapter_dirs: Mapping[str, Path], mask_modes: tuple[str, ...]
) -> tuple[list[Checkpoint], dict[str, str]]:
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


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Tokens per forward pass (as padded; answers scored after a prompt included): on this 2-core CPU larger batches
# gain nothing (bench/evaluation_floor.py), and the full-vocabulary logits of a batch stay near 200 MB (fp32).
DEFAULT_BATCH_TOKENS = 1024


class LocalStudent:
    """The base student plus every checkpoint as a named peft adapter; ``using(variant)`` activates one.

    The model sits on the resolved device in the resolved precision (``auto``: cuda bf16, else fp16 on older
    CUDA GPUs, mps and cpu fp32). Posts are scored and generated in batches of about ``batch_tokens`` tokens.
    """

    BASE = "base"

    def __init__(
        self,
        model_path: str,
        checkpoints: list[Checkpoint] = (),
        max_length: int = 512,
        threads: int = 0,
        device: str = "auto",
        precision: str = "auto",
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        """``threads`` > 0 sets torch's CPU threads: on a machine shared with other jobs, 1 thread avoids the
        spin-waiting that makes 2 threads many times slower (bench/evaluation_time.py); 0 keeps torch's default."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from opengrok_dagster.training.device import resolve_placement

        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
        self.placement = resolve_placement(device, precision, stage="evaluation", setting="eval_report's device")
        if threads > 0:
            torch.set_num_threads(threads)
        self.model_path = model_path
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, DTYPES[self.placement.precision])
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.checkpoints = list(checkpoints)
        for checkpoint in self.checkpoints:
            require_base_model(checkpoint, model_path)
            model = self._attach(model, checkpoint)
        self.model = model.to(self.placement.device).eval()
        self._continuations: dict[str, list[int]] = {}

    @property
    def device(self) -> str:
        return self.placement.device

    @property
    def dtype(self) -> str:
        return self.placement.precision

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
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)[-self.max_length :]

    def _continuation(self, answer: str) -> list[int]:
        """Token ids the chat template puts after the generation prompt for ``answer`` (end of turn included)."""
        if answer not in self._continuations:
            probe = [{"role": "user", "content": "x"}]
            prompt = self._prompt_ids(probe)
            full = list(
                self.tokenizer.apply_chat_template(
                    probe + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=False
                )
            )
            if full[: len(prompt)] == prompt and len(full) > len(prompt):
                self._continuations[answer] = full[len(prompt) :]
            else:
                self._continuations[answer] = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [
                    self.tokenizer.eos_token_id
                ]
        return self._continuations[answer]

    def _tensor(self, rows):
        import torch

        return torch.tensor(rows, device=self.placement.device)

    def label_logprobs(self, messages: list[list[dict[str, str]]], answers: list[str]) -> np.ndarray:
        """(items x answers) summed log-probability of each answer after each prompt.

        The prompts' common prefix is run once; batches of items of similar length continue from copies of its
        KV cache, all answers of a batch scored in the same forward (``_score_batch``).
        """
        import torch

        continuations = [self._continuation(a) for a in answers]
        prompts = [self._prompt_ids(item) for item in messages]
        scores = np.zeros((len(messages), len(answers)))
        if not prompts:
            return scores
        shared = _common_prefix_length(prompts)
        answer_tokens = sum(len(c) - 1 for c in continuations)  # the answer block each row carries
        with torch.inference_mode():
            prefix_cache = None
            if shared:
                prefix = self._tensor([prompts[0][:shared]])
                prefix_cache = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
            for rows in _length_batches([len(p) - shared for p in prompts], answer_tokens, self.batch_tokens):
                suffixes = [prompts[r][shared:] for r in rows]
                scores[rows] = self._score_batch(suffixes, shared, prefix_cache, continuations).cpu().numpy()
        return scores

    def _score_batch(self, suffixes: list[list[int]], shared: int, prefix_cache, continuations: list[list[int]]):
        """(batch x answers) answer log-probabilities for prompts ``prefix + suffix``, the prefix cached.

        One forward per batch: each row is the item's own tokens (left-padded) followed by every answer's tokens
        but the last, side by side; a 4D mask lets each answer see the prompt and its own earlier tokens only,
        and each answer's positions restart where the prompt ends, so every answer is scored as if alone.
        """
        import torch

        batch, width = len(suffixes), max(map(len, suffixes))
        pad, device = self.tokenizer.pad_token_id, self.placement.device
        answer_inputs = [c[:-1] for c in continuations]
        block = sum(map(len, answer_inputs))
        own = torch.tensor([[False] * (width - len(s)) + [True] * len(s) for s in suffixes], device=device)
        ids = self._tensor([[pad] * (width - len(s)) + s + [t for a in answer_inputs for t in a] for s in suffixes])
        # which answer each column of the answer block belongs to, and its step within that answer
        owner = torch.tensor([j for j, a in enumerate(answer_inputs) for _ in a], device=device, dtype=torch.long)
        step = torch.tensor([k for a in answer_inputs for k in range(len(a))], device=device, dtype=torch.long)
        prompt_to_prompt = torch.ones(width, width, dtype=torch.bool, device=device).tril() & own[:, None, :]
        prompt_to_prompt |= torch.eye(width, dtype=torch.bool, device=device)  # a pad sees itself: no empty row
        block_to_block = (owner[:, None] == owner[None, :]) & (step[:, None] >= step[None, :])
        mask = torch.cat(
            [
                torch.cat([prompt_to_prompt, own.new_zeros(batch, width, block)], dim=2),
                torch.cat(
                    [own[:, None, :].expand(batch, block, width), block_to_block.expand(batch, block, block)], 2
                ),
            ],
            dim=1,
        )
        mask = torch.cat([mask.new_ones(batch, width + block, shared), mask], dim=2)[:, None]
        lengths = own.sum(1, keepdim=True)
        positions = torch.cat([shared + (own.cumsum(1) - 1).clamp(min=0), shared + lengths + step[None, :]], dim=1)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
        if self.model.config._attn_implementation == "eager":  # eager adds the mask: 0 or the dtype's min
            additive = torch.zeros(mask.shape, dtype=self.model.dtype, device=device)
            mask = additive.masked_fill(~mask, torch.finfo(self.model.dtype).min)
        keep = torch.arange(width - 1, width + block, device=device)  # the prompt's last token, then the block
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            logits_to_keep=keep,
        ).logits.float()
        logprobs = logits - logits.logsumexp(dim=2, keepdim=True)
        scores = logprobs[:, 0, [c[0] for c in continuations]]
        if block:
            # answer token k+1 is predicted at the answer's input k; its input 0 follows the prompt's last token
            targets = self._tensor([t for c in continuations for t in c[1:]])
            later = logprobs[:, 1:].gather(2, targets[None, :, None].expand(batch, block, 1)).squeeze(2)
            scores = scores.index_add(1, owner, later)
        return scores

    def generate(
        self, messages: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int | None = None
    ) -> list[str]:
        """Greedy completions, batched with left padding; prompts of similar length share a batch of at most
        ``batch_size`` prompts, by default as many as fit ``batch_tokens`` with their new tokens."""
        import torch

        prompts = [self._prompt_ids(m) for m in messages]
        texts: list[str] = [""] * len(prompts)
        pad = self.tokenizer.pad_token_id
        if batch_size is None:
            batches = _length_batches([len(p) for p in prompts], max_new_tokens, self.batch_tokens)
        else:
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            batches = (order[start : start + batch_size] for start in range(0, len(order), batch_size))
        with torch.inference_mode():
            for rows in batches:
                width = max(len(prompts[r]) for r in rows)
                ids = self._tensor([[pad] * (width - len(prompts[r])) + prompts[r] for r in rows])
                mask = self._tensor([[0] * (width - len(prompts[r])) + [1] * len(prompts[r]) for r in rows])
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
                for row, text in zip(rows, self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                    texts[row] = text
        return texts

    def response_nll(
        self, messages: list[list[dict[str, str]]], responses: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed negative log-likelihood of each response after its prompt, and its token count (batched,
        right-padded)."""
        import torch

        sequences, starts = [], []
        for item, response in zip(messages, responses):
            template = self.tokenizer.apply_chat_template
            prompt = template(item, add_generation_prompt=True, tokenize=True, return_dict=False)
            answered = item + [{"role": "assistant", "content": response}]
            full = list(template(answered, tokenize=True, return_dict=False))
            overflow = max(0, len(full) - self.max_length)  # keep the response whole: drop the prompt's start
            sequences.append(full[overflow:])
            starts.append(max(1, len(prompt) - overflow))
        nll, counts = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=np.int64)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for rows in _length_batches([len(s) for s in sequences], 0, self.batch_tokens):
                width = max(len(sequences[r]) for r in rows)
                ids = self._tensor([sequences[r] + [pad] * (width - len(sequences[r])) for r in rows])
                real = self._tensor([[1] * len(sequences[r]) + [0] * (width - len(sequences[r])) for r in rows])
                scored = self._tensor(
                    [
                        [0] * starts[r] + [1] * (len(sequences[r]) - starts[r]) + [0] * (width - len(sequences[r]))
                        for r in rows
                    ]
                )
                logits = self.model(input_ids=ids, attention_mask=real).logits[:, :-1].float()
                token_logprobs = logits.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2) - logits.logsumexp(dim=2)
                nll[rows] = (-(token_logprobs * scored[:, 1:]).sum(dim=1)).cpu().numpy()
                counts[rows] = scored.sum(dim=1).cpu().numpy()
        return nll, counts


def _length_batches(lengths: list[int], extra_per_item: int, budget: int) -> Iterator[list[int]]:
    """Indices grouped by similar length (so little is padding), each group at most ``budget`` tokens as padded
    (``extra_per_item`` more tokens per item, e.g. the answers scored after it); at least one item per group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    group: list[int] = []
    for index in order:
        if group and (len(group) + 1) * (lengths[index] + extra_per_item) > budget:
            yield group
            group = []
        group.append(index)
    if group:
        yield group


def _common_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens shared by the start of every sequence, leaving each at least one token of its own."""
    shortest = min(map(len, sequences))
    length = 0
    while length < shortest - 1 and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length
