"""Masked-attention overhead: forward+backward time per mask mode against stock SDPA, on the same batch, in one run.

Two levels, both with LoRA r=8 on q/k/v/o_proj and a right-padded batch (the training case):
- model: the student (SmolLM2-135M by default) forward+backward per mode; the figure that matters for training;
- attention op: the attention call alone for one forward's worth of layers (bias built once, used per layer).
Modes are interleaved round by round so CPU frequency drift hits them all alike; each round gives a ratio to
stock SDPA, reported as median (min-max) over the rounds.
On a CPU shared with other jobs, ``--threads 1 --clock cpu`` times the process's own CPU work.
Target: masked / stock <= 1.10.

    .venv/bin/python -m bench.attention_overhead
    .venv/bin/python -m bench.attention_overhead --batch 4 --length 128 --rounds 7 --model /path/or/hub-id
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bench.measure import spread
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.training import attention
from opengrok_dagster.training.attention import MASK_MODES, attention_implementation


IMPLEMENTATIONS = {"stock sdpa": "sdpa", **{f"masked {mode}": attention_implementation(mode) for mode in MASK_MODES}}


def training_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows of 60-100% of ``length``, a ~30%-zero mask and probabilities in (0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (batch, length), generator=generator)
    lengths = torch.linspace(length, int(length * 0.6), batch).long()
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    labels = ids.masked_fill(attention_mask == 0, -100)
    labels[:, : length // 3] = -100
    m = (torch.rand(batch, length, generator=generator) > 0.3).float()
    p = torch.rand(batch, length, generator=generator).clamp(min=0.05)
    return {"input_ids": ids, "attention_mask": attention_mask, "labels": labels, "m": m, "p": p}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(step, clock) -> float:
    started = clock()
    step()
    return clock() - started


def model_level(model_path: str, batch: int, length: int, rounds: int, clock) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    data = training_batch(batch, length, model.config.vocab_size)
    inputs = {key: data[key] for key in ("input_ids", "attention_mask", "labels")}

    def step(name: str):
        model.base_model.model.set_attn_implementation(IMPLEMENTATIONS[name])
        mode = name.removeprefix("masked ")
        extra = {} if name == "stock sdpa" or mode == "none" else {"token_mask": data["p" if mode == "soft" else "m"]}

        def run():
            model.zero_grad(set_to_none=True)
            model(**inputs, **extra).loss.backward()

        return run

    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for name in IMPLEMENTATIONS:
        step(name)()  # warm-up
    for _ in range(rounds):
        for name in IMPLEMENTATIONS:
            times[name].append(_timed(step(name), clock))
    return times


class _Module(torch.nn.Module):
    """Stands in for an attention layer: what sdpa_attention_forward reads from it."""

    def __init__(self, heads: int, kv_heads: int):
        super().__init__()
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = True


def op_level(
    batch: int, length: int, layers: int, rounds: int, clock, heads=9, kv_heads=3, head_dim=64
) -> dict[str, list[float]]:
    data = training_batch(batch, length, 100)
    module = _Module(heads, kv_heads)
    padding = data["attention_mask"].bool()
    boolean_mask = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & padding[:, None, None, :]

    def tensors():
        generator = torch.Generator().manual_seed(1)
        make = lambda h: torch.randn(batch, h, length, head_dim, generator=generator, requires_grad=True)  # noqa: E731
        return make(heads), make(kv_heads), make(kv_heads)

    def step(name: str):
        mode = name.removeprefix("masked ")

        def run():
            q, k, v = tensors()
            token_mask = (data["p"] if mode == "soft" else data["m"]).clone()  # new tensor: the bias is rebuilt once
            total = 0
            for _ in range(layers):
                if name == "stock sdpa":
                    out, _ = sdpa_attention_forward(module, q, k, v, boolean_mask, scaling=head_dim**-0.5)
                else:
                    out, _ = attention.masked_sdpa_attention(
                        module, q, k, v, boolean_mask, mode=mode, token_mask=token_mask, scaling=head_dim**-0.5
                    )
                total = total + out.sum()
            total.backward()

        return run

    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for name in IMPLEMENTATIONS:
        step(name)()
    for _ in range(rounds):
        for name in IMPLEMENTATIONS:
            times[name].append(_timed(step(name), clock))
    return times


def table(title: str, times: dict[str, list[float]]) -> list[str]:
    stock = times["stock sdpa"]
    lines = [
        f"### {title}",
        "",
        "| attention | seconds, median (min-max) | vs stock SDPA, median (min-max) of rounds |",
        "|---|---:|---:|",
    ]
    for name, seconds in times.items():
        lines.append(f"| {name} | {spread(seconds, 4)} | {spread([s / b for s, b in zip(seconds, stock)], 3)} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="student path or id (default: the offline SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=30, help="attention calls per forward at op level (SmolLM2: 30)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 gives steadier figures on a shared CPU)"
    )
    parser.add_argument("--levels", nargs="+", choices=["op", "model"], default=["op", "model"])
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="'cpu' (process CPU time) with --threads 1 measures the work itself when other jobs share the CPU",
    )
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.clock} clock; "
        f"batch {args.batch} x {args.length}, {args.rounds} rounds\n"
    )
    if "op" in args.levels:
        print(
            "\n".join(
                table(
                    f"Attention op only, {args.layers} layers per forward",
                    op_level(args.batch, args.length, args.layers, args.rounds, clock),
                )
            ),
            flush=True,
        )
    if "model" in args.levels:
        model_path = args.model or str(check_offline_model(offline_model_dir()))
        times = model_level(model_path, args.batch, args.length, args.rounds, clock)
        print(
            "\n".join(table(f"Model forward+backward ({model_path.rstrip('/').rsplit('/', 1)[-1]}, LoRA r=8)", times))
        )


if __name__ == "__main__":
    main()
