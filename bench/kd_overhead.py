"""Distillation step-time overhead: a training step with the KD term against the same step with cross-entropy only.

One step is what the Trainer does per batch: collate, forward, loss, backward, AdamW update; the student is
SmolLM2-135M with LoRA r=8 on q/k/v/o_proj, a right-padded batch of random token ids (lengths 60-100% of
``--length``, the first third prompt). The KD side adds the targets the trainer would get from ``kd_targets``:
at 90% of the response positions (the aligned share measured on English tweets, experiments.kd_alignment) the
teacher's top-``k`` ids and logprobs, collated by ``KDCollator``, and computes ``distillation_loss`` as the
trainer's ``compute_loss`` does. Sides are interleaved round by round; each round gives a ratio to the
cross-entropy step, reported as median (min-max). ``--threads 1 --clock cpu`` times the process's own CPU work
on a CPU shared with other jobs. Target: KD / CE <= 1.15.

    .venv/bin/python -m bench.kd_overhead --threads 1 --clock cpu
    .venv/bin/python -m bench.kd_overhead --batch 8 --length 256 --rounds 7 --top-k 8 20
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from bench.measure import spread
from opengrok_dagster.distill.loss import KD_INPUTS, distillation_loss
from opengrok_dagster.distill.targets import ExampleTargets, KDTargets
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.training.data import MaskCollator, MaskedExample


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
ALIGNED_SHARE = 0.9


def examples(batch: int, length: int, vocab: int, seed: int = 0) -> list[MaskedExample]:
    rng = np.random.default_rng(seed)
    out = []
    for row, size in enumerate(np.linspace(length, int(length * 0.6), batch).astype(int)):
        ids = rng.integers(10, vocab, size).tolist()
        out.append(MaskedExample(f"row{row}", ids, length // 3, [1.0] * size, [1.0] * size))
    return out


def targets(rows: list[MaskedExample], top_k: int, vocab: int, seed: int = 1) -> KDTargets:
    """Top-k at ALIGNED_SHARE of each row's response positions, the rest of the mass left to "other"."""
    rng = np.random.default_rng(seed)
    by_example = {}
    for example in rows:
        response = np.arange(example.response_start, len(example.input_ids))
        positions = np.sort(rng.choice(response, int(round(ALIGNED_SHARE * len(response))), replace=False))
        logprobs = [np.log(rng.dirichlet(np.ones(top_k + 1))[:top_k]).astype(np.float32) for _ in positions]
        ids = [rng.choice(vocab, top_k, replace=False) for _ in positions]
        by_example[example.example_id] = ExampleTargets(positions, ids, logprobs)
    return KDTargets(by_example, top_k, f"bench-top{top_k}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="student path or id (default: the offline SmolLM2-135M)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top-k", type=int, nargs="+", default=[8, 20], help="alternatives (Grok: 8, OpenAI: 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="'cpu' = this process's CPU time")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = args.model or str(check_offline_model(offline_model_dir()))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    rows = examples(args.batch, args.length, vocab)
    base = MaskCollator(0, "none")
    collators = {"cross-entropy only": base}
    collators.update({f"CE + KD, top-{k}": targets(rows, k, vocab).collator(base) for k in args.top_k})

    def step(collate) -> float:
        started = clock()
        inputs = collate(rows)
        kd = {key: inputs.pop(key) for key in KD_INPUTS if key in inputs}
        optimizer.zero_grad(set_to_none=True)
        if kd:
            labels = inputs.pop("labels")
            loss = distillation_loss(model(**inputs).logits, labels, **kd, alpha=0.5, temperature=1.0)
        else:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        return clock() - started

    times: dict[str, list[float]] = {name: [] for name in collators}
    for collate in collators.values():
        step(collate)  # warm-up
    for _ in range(args.rounds):
        for name, collate in collators.items():
            times[name].append(step(collate))
    name = model_path.rstrip("/").rsplit("/", 1)[-1]
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, {args.clock} clock; {name} + LoRA r=8, batch {args.batch} x {args.length}, targets at "
        f"{ALIGNED_SHARE:.0%} of response positions, {args.rounds} rounds; CPU shared with other jobs\n"
    )
    print("| step | seconds, median (min-max) | vs cross-entropy only, median (min-max) of rounds |")
    print("|---|---:|---:|")
    plain = times["cross-entropy only"]
    for name, seconds in times.items():
        print(f"| {name} | {spread(seconds, 4)} | {spread([s / b for s, b in zip(seconds, plain)], 3)} |")


if __name__ == "__main__":
    main()
