"""The GPU path in one run on one GPU (sized for an H200, <= 8 minutes, nothing downloaded).

The GPU machine has no network, so the large model is Phi-3-mini-4k-instruct's architecture built from its
config values (below) with random weights and the offline student's tokenizer; real-token timing uses the
offline SmolLM2-135M-Instruct. Measures, side by side in this one run:

1. masked attention per mode vs stock SDPA, forward + backward, at Phi-3-mini shapes (``hard``/``soft`` go
   through compiled FlexAttention on CUDA, as in training);
2. FlexAttention vs SDPA with the same boolean mask (``hard``): time, and the largest difference of outputs
   and gradients;
3. training tokens/s, ours vs TRL SFTTrainer (bench/training_throughput.py) on SmolLM2 with real tweets and on
   the Phi-3-mini-sized model;
4. evaluation posts/s (label scoring of TweetEval sentiment posts by the student);
5. peak GPU memory of each section.

    .venv/bin/python -m bench --only gpu_check      # on the GPU machine: writes its section of docs/benchmarks.md
    .venv/bin/python -m bench.gpu_check --smoke     # shrunk, on CPU: checks that the script runs (tests/test_bench.py)

Sections that would start after ``--budget-s`` are skipped and say so, so the run ends in time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bench import training_throughput
from bench.measure import spread
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.training import attention
from opengrok_dagster.training.attention import MASK_MODES


# microsoft/Phi-3-mini-4k-instruct config.json (the shapes that matter for speed and memory).
PHI3_MINI = dict(
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
SMOKE_PHI3 = dict(
    PHI3_MINI, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4
)
PHI3_TARGETS = ["qkv_proj", "o_proj"]
SENTIMENT_LABELS = ["negative", "neutral", "positive"]


class Check:
    """Times and records the sections; skips those that would start past the budget."""

    def __init__(self, device: str, budget_s: float) -> None:
        self.device = device
        self.budget_s = budget_s
        self.started = time.perf_counter()
        self.lines: list[str] = []

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def timed(self, step, repeats: int) -> list[float]:
        step()  # warm-up (compilation, autotuning)
        times = []
        for _ in range(repeats):
            self.sync()
            started = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - started)
        return times

    def section(self, title: str, run) -> None:
        elapsed = time.perf_counter() - self.started
        self.lines.append(f"### {title}\n")
        if elapsed > self.budget_s:
            self.lines.append(f"skipped: {elapsed:.0f} s had passed (budget {self.budget_s:.0f} s)\n")
            return
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        print(f"== {title}", file=sys.stderr, flush=True)
        section_started = time.perf_counter()
        self.lines += run()
        peak = (
            f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, " if self.device == "cuda" else ""
        )
        self.lines.append(f"\n{peak}{time.perf_counter() - section_started:.0f} s\n")


def attention_inputs(batch: int, length: int, heads: int, head_dim: int, device: str, dtype, grad: bool):
    generator = torch.Generator().manual_seed(0)

    def make():
        return torch.randn(batch, heads, length, head_dim, generator=generator).to(device, dtype).requires_grad_(grad)

    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    padding = (torch.arange(length)[None, :] < lengths[:, None]).to(device)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = causal[None, None] & padding[:, None, None, :]
    token_masks = {
        "m": (torch.rand(batch, length, generator=generator) > 0.3).float().to(device),
        "p": torch.rand(batch, length, generator=generator).clamp(min=0.05).to(device),
    }
    return (make(), make(), make()), mask, token_masks


def attention_per_mode(check: Check, sizes: SimpleNamespace) -> list[str]:
    """Masked attention in each mode against stock SDPA with the same causal + padding mask, forward + backward."""
    (query, key, value), mask, token_masks = attention_inputs(
        sizes.batch, sizes.length, sizes.heads, sizes.head_dim, check.device, sizes.dtype, grad=True
    )
    layer = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=True, attention_dropout=0.0)

    def step(mode: str | None):
        token_mask = token_masks["p" if mode == "soft" else "m"]

        def run():
            if mode is None:
                output, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=sizes.head_dim**-0.5)
            else:
                output, _ = attention.masked_sdpa_attention(
                    layer, query, key, value, mask, mode=mode, token_mask=token_mask, scaling=sizes.head_dim**-0.5
                )
            output.float().square().mean().backward()  # FlexAttention runs on CUDA only, where it has a backward

        return run

    stock = check.timed(step(None), sizes.repeats)
    lines = [
        f"batch {sizes.batch} x {sizes.length} tokens, {sizes.heads} heads x {sizes.head_dim}, {sizes.dtype}, "
        f"{check.device}; forward + backward\n",
        "| attention | ms, median (min-max) | vs stock SDPA |",
        "|---|---:|---:|",
        f"| stock sdpa | {spread([t * 1e3 for t in stock], 2)} | 1.00 |",
    ]
    for mode in MASK_MODES:
        times = check.timed(step(mode), sizes.repeats)
        path = "FlexAttention" if mode in attention.FLEX_MODES and check.device == "cuda" else "SDPA"
        lines.append(
            f"| {mode} ({path}) | {spread([t * 1e3 for t in times], 2)} | "
            f"{sorted(times)[len(times) // 2] / sorted(stock)[len(stock) // 2]:.2f} |"
        )
    return lines


def flex_vs_sdpa(check: Check, sizes: SimpleNamespace) -> list[str]:
    """``hard`` through FlexAttention (compiled on CUDA) and through SDPA with the dense boolean mask."""
    backward = check.device == "cuda"
    (query, key, value), mask, token_masks = attention_inputs(
        sizes.batch, sizes.length, sizes.heads, sizes.head_dim, check.device, sizes.dtype, grad=backward
    )
    layer = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    scale = sizes.head_dim**-0.5
    token_mask = token_masks["m"]
    boolean = attention.attention_bias("hard", token_mask, mask, sizes.length, sizes.length, sizes.dtype)

    def outputs(kind: str):
        if kind == "sdpa":
            return sdpa_attention_forward(layer, query, key, value, boolean, scaling=scale)[0]
        return attention.flex_masked_attention(
            layer, query, key, value, mask, mode="hard", token_mask=token_mask, scaling=scale
        )[0]

    def step(kind: str):
        def run():
            output = outputs(kind)
            if backward:
                output.float().square().mean().backward()

        return run

    times = {kind: check.timed(step(kind), sizes.repeats) for kind in ("sdpa", "flex")}
    results = {}
    for kind in ("sdpa", "flex"):
        output = outputs(kind)
        grads = torch.autograd.grad(output.float().square().mean(), (query, key, value)) if backward else ()
        results[kind] = (output.detach().float(), [g.float() for g in grads])
    real = mask[:, 0].any(-1)  # queries of real tokens; outputs are (batch, queries, heads, dim)
    output_diff = (results["flex"][0] - results["sdpa"][0]).abs()[real].max().item()
    grad_diff = max(
        ((a - b).abs().max().item() for a, b in zip(results["flex"][1], results["sdpa"][1])), default=float("nan")
    )
    median = {kind: sorted(values)[len(values) // 2] for kind, values in times.items()}
    kind_of_run = "forward + backward" if backward else "forward only (no FlexAttention backward on CPU)"
    return [
        f"`hard` mask, batch {sizes.batch} x {sizes.length}, {sizes.dtype}, {check.device}, {kind_of_run}\n",
        "| path | ms, median (min-max) | vs SDPA |",
        "|---|---:|---:|",
        f"| SDPA, dense boolean mask | {spread([t * 1e3 for t in times['sdpa']], 2)} | 1.00 |",
        f"| FlexAttention block mask | {spread([t * 1e3 for t in times['flex']], 2)} | "
        f"{median['flex'] / median['sdpa']:.2f} |",
        f"\nlargest |flex - sdpa|: output {output_diff:.2e}, "
        f"{f'gradients {grad_diff:.2e}' if backward else 'gradients not compared (forward only)'} ({sizes.dtype})",
    ]


def training(check: Check, model_path: str, sizes: SimpleNamespace, label: str) -> list[str]:
    if importlib.util.find_spec("trl") is None:
        return ["skipped: TRL is not installed (pip install 'opengrok-dagster[bench]')"]
    parser = argparse.ArgumentParser()
    training_throughput.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            model_path,
            "--examples",
            str(sizes.examples),
            "--validation",
            str(sizes.validation),
            "--batch",
            str(sizes.batch),
            "--length",
            str(sizes.length),
            "--steps",
            str(sizes.steps),
            "--repeats",
            "1",
            "--modes",
            *sizes.modes,
            "--device",
            check.device,
            "--precision",
            sizes.precision,
            "--targets",
            *sizes.targets,
            *(["--packing"] if sizes.packing else []),
        ]
    )
    with contextlib.redirect_stdout(sys.stderr):
        results = training_throughput.compare(model_path, args)
    return [
        f"{label}: batch {sizes.batch} x <= {sizes.length} tokens, {sizes.steps} steps, {sizes.precision}, "
        f"{check.device}; real tweets, loss on responses, LoRA r=8 on {'/'.join(sizes.targets)}\n",
        *training_throughput.table_lines(results),
    ]


def phi3_sized_model(directory: Path, tokenizer, shape: dict, device: str, dtype) -> str:
    """Phi-3-mini's architecture with random weights and the offline tokenizer, saved for both trainers."""
    config = Phi3Config(
        **shape,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Phi3ForCausalLM(config).to(dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    return str(directory)


def evaluation(check: Check, model_path: str, sizes: SimpleNamespace) -> list[str]:
    from opengrok_dagster.evaluation.local import LocalStudent
    from opengrok_dagster.tasks.datasets import read_tweeteval, resolve_data_dir

    texts = read_tweeteval(resolve_data_dir() / "tweeteval" / "sentiment" / "val").texts[: sizes.posts]
    messages = [
        [{"role": "user", "content": f"Sentiment of this post (negative, neutral or positive)?\n{text}"}]
        for text in texts
    ]
    student = LocalStudent(model_path)
    student.label_logprobs(messages[:2], SENTIMENT_LABELS)  # warm-up
    check.sync()
    started = time.perf_counter()
    student.label_logprobs(messages, SENTIMENT_LABELS)
    check.sync()
    seconds = time.perf_counter() - started
    device = getattr(student, "device", "cpu")
    return [
        f"{len(messages)} TweetEval sentiment posts, 3 labels, SmolLM2-135M-Instruct on {device}: "
        f"{len(messages) / seconds:.1f} posts/s ({seconds:.1f} s)"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is (CPU: the test)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip sections that would start after this")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not args.smoke:
        raise SystemExit("bench.gpu_check needs a CUDA GPU; on a CPU run it shrunk with --smoke")
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    dtype, precision = (torch.bfloat16, "bf16") if bf16 else (torch.float32, "fp32")
    if args.smoke:
        op = SimpleNamespace(batch=2, length=64, heads=4, head_dim=16, dtype=dtype, repeats=2)
        small = None  # the SmolLM2 section is skipped
        large = SimpleNamespace(
            examples=12,
            validation=4,
            batch=2,
            length=64,
            steps=3,
            modes=["hard"],
            packing=True,
            precision=precision,
            targets=PHI3_TARGETS,
        )
        shape, posts = SMOKE_PHI3, 4
    else:
        op = SimpleNamespace(batch=8, length=512, heads=32, head_dim=96, dtype=dtype, repeats=10)
        small = SimpleNamespace(
            examples=520,
            validation=8,
            batch=32,
            length=512,
            steps=12,
            modes=["none", "hard", "soft"],
            packing=True,
            precision=precision,
            targets=training_throughput.TARGETS,
        )
        large = SimpleNamespace(
            examples=72,
            validation=8,
            batch=8,
            length=512,
            steps=6,
            modes=["hard"],
            packing=False,
            precision=precision,
            targets=PHI3_TARGETS,
        )
        shape, posts = PHI3_MINI, 400
    check = Check(device, args.budget_s)
    model_path = str(check_offline_model(offline_model_dir()))
    name = (
        torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run: sizes shrunk, figures not meaningful)"
    )
    check.lines.append(f"{name}, torch {torch.__version__}, {'smoke sizes' if args.smoke else 'full sizes'}\n")
    check.section("Masked attention per mode vs stock SDPA", lambda: attention_per_mode(check, op))
    check.section("FlexAttention vs SDPA with a boolean mask", lambda: flex_vs_sdpa(check, op))
    check.section(
        "Training tokens/s: SmolLM2-135M, ours vs TRL SFTTrainer",
        lambda: training(check, model_path, small, "SmolLM2-135M-Instruct")
        if not args.smoke
        else ["skipped in the smoke run: the tiny Phi-3-shaped model below takes the same path"],
    )
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = AutoTokenizer.from_pretrained(model_path)

        def phi3():
            path = phi3_sized_model(Path(scratch) / "phi3-mini-random", tokenizer, shape, device, dtype)
            return training(
                check, path, large, f"Phi-3-mini-sized, random weights ({shape['num_hidden_layers']} layers)"
            )

        check.section("Training tokens/s: Phi-3-mini-sized, ours vs TRL SFTTrainer", phi3)
    check.section("Evaluation posts/s", lambda: evaluation(check, model_path, SimpleNamespace(posts=posts)))
    check.lines.append(f"\ntotal {time.perf_counter() - check.started:.0f} s")
    print("\n".join(check.lines))


if __name__ == "__main__":
    main()
