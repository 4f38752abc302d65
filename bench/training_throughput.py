"""Training throughput: our fine-tune (per mask mode) against TRL's SFTTrainer on the same model, data and LoRA.

Data: real tweets (TweetEval emotion train split in ../shared/data) as assistant responses to short prompts,
chat-templated by the student's tokenizer; loss on the response tokens in both trainers (TRL's
prompt-completion format with completion-only loss). Same LoRA (r=8, alpha=16, q/k/v/o_proj), batch size,
max length, optimizer steps and learning rate. Tokens/s = non-padding tokens seen / seconds inside optimizer
steps after the first (one callback times both trainers; warm-up, evaluation, saving and model loading excluded).
Target: ours / TRL >= 1.5. ``--packing`` adds rows for our trainer with packed batches. TRL is a bench-only
dependency (``pip install 'opengrok-dagster[bench]'``).

    .venv/bin/python -m bench.training_throughput
    .venv/bin/python -m bench.training_throughput --steps 12 --batch 4 --length 128 --modes none hard
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from peft import LoraConfig
from transformers import AutoTokenizer, TrainerCallback

from bench.measure import spread
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.device import resolve_placement
from opengrok_dagster.training.job import TrainingJob
from opengrok_dagster.training.setup import TRAINING_DTYPES
from opengrok_dagster.training.trainer import train_lora


TWEETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweeteval" / "emotion" / "train_text.txt"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
TOPICS = ("the weather", "a football match", "a new phone", "the election", "a concert", "monday mornings")


class StepClock(TrainerCallback):
    """Seconds inside optimizer steps and the non-padding tokens they consumed; the first (warm-up) step is left out."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.seconds = 0.0
        self.tokens = 0
        self._started = 0.0
        self._tokens_seen = None

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._started = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous: time it done
        if self._tokens_seen is not None:
            self.seconds += self.clock() - self._started
            self.tokens += state.num_input_tokens_seen - self._tokens_seen
        self._tokens_seen = state.num_input_tokens_seen

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def conversations(count: int) -> list[dict]:
    tweets = [line.strip() for line in TWEETS.read_text().splitlines() if line.strip()][:count]
    return [
        {
            "prompt": [
                {"role": "user", "content": f"Write a short social-media post about {TOPICS[i % len(TOPICS)]}."}
            ],
            "completion": [{"role": "assistant", "content": tweet}],
        }
        for i, tweet in enumerate(tweets)
    ]


def mask_table(tokenizer, rows: list[dict], max_length: int, validation: int) -> pd.DataFrame:
    """The mask-table contract for the same conversations (random m and p: throughput does not depend on them)."""
    rng = random.Random(0)
    records = []
    for index, row in enumerate(rows):
        prompt = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False)[
            :max_length
        ]
        records.append(
            {
                "example_id": f"tweet{index:04d}",
                "split": "validation" if index < validation else "train",
                "input_ids": full,
                "response_start": len(prompt),
                "m": [rng.choice([0, 1, 1]) for _ in full],
                "p": [rng.uniform(0.05, 1.0) for _ in full],
                "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            }
        )
    return pd.DataFrame(records)


def ours(model_path: str, table: pd.DataFrame, mode: str, args, packing: bool = False) -> float:
    step_clock = StepClock(CLOCKS[args.clock])
    with tempfile.TemporaryDirectory() as home:
        config = TrainingConfig(
            batch_size=args.batch,
            max_length=args.length,
            max_steps=args.steps,
            eval_steps=args.steps,
            save_steps=args.steps,
            learning_rate=2e-4,
            warmup_steps=0,
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=args.targets,
            packing=packing,
        )
        placement = resolve_placement(args.device, args.precision)
        job = TrainingJob(mode, model_path, HomeLayout(Path(home)).checkpoint_dir(mode), config, placement)
        train_lora(job, table, log=lambda _: None, callbacks=[step_clock])
    return step_clock.tokens_per_second


def trl(model_path: str, rows: list[dict], args) -> float:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    step_clock = StepClock(CLOCKS[args.clock])
    placement = resolve_placement(args.device, args.precision)
    with tempfile.TemporaryDirectory() as output:
        trainer = SFTTrainer(
            model=model_path,
            args=SFTConfig(
                output_dir=output,
                per_device_train_batch_size=args.batch,
                max_length=args.length,
                max_steps=args.steps,
                learning_rate=2e-4,
                warmup_steps=0,
                completion_only_loss=True,
                packing=False,
                use_cpu=placement.device == "cpu",
                bf16=placement.precision == "bf16",
                fp16=placement.precision == "fp16",
                include_num_input_tokens_seen="non_padding",
                eval_strategy="no",
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                logging_steps=args.steps,
                seed=0,
                model_init_kwargs={"dtype": TRAINING_DTYPES[placement.precision]},
            ),
            train_dataset=Dataset.from_list(rows[args.validation :]),
            peft_config=LoraConfig(
                r=8, lora_alpha=16, lora_dropout=0.05, target_modules=args.targets, task_type="CAUSAL_LM"
            ),
            callbacks=[step_clock],
        )
        trainer.train()
    return step_clock.tokens_per_second


def compare(model_path: str, args) -> dict[str, list[float]]:
    """Tokens/s of TRL and of ours per mode (and packed), interleaved over the repeats."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = conversations(args.examples)
    table = mask_table(tokenizer, rows, args.length, args.validation)
    variants = [(mode, packed) for mode in args.modes for packed in ((False, True) if args.packing else (False,))]
    name = {variant: f"ours ({variant[0]}{', packed' if variant[1] else ''})" for variant in variants}
    results: dict[str, list[float]] = {"TRL SFTTrainer": [], **{name[variant]: [] for variant in variants}}
    with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs; stdout carries the figures only
        for _ in range(args.repeats):  # interleaved, so machine load drifts over all alike
            results["TRL SFTTrainer"].append(trl(model_path, rows, args))
            for mode, packed in variants:
                results[name[mode, packed]].append(ours(model_path, table, mode, args, packed))
    return results


def table_lines(results: dict[str, list[float]]) -> list[str]:
    baseline = results["TRL SFTTrainer"]
    lines = ["| trainer | tokens/s, median (min-max) | vs TRL, median (min-max) of repeats |", "|---|---:|---:|"]
    for name, values in results.items():
        lines.append(f"| {name} | {spread(values)} | {spread([v / b for v, b in zip(values, baseline)], 3)} |")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="student path (default: the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--validation", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["none", "hard"])
    parser.add_argument("--packing", action="store_true", help="also time our trainer with packed batches")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 gives steadier figures on a shared CPU)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="'cpu' (process CPU time) with --threads 1 measures the work itself when other jobs share the CPU",
    )
    parser.add_argument("--targets", nargs="+", default=TARGETS, help="LoRA target modules (Phi-3: qkv_proj o_proj)")
    parser.add_argument("--device", default="cpu", help="training device for both trainers (cpu, cuda, auto)")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or auto, for both trainers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = args.model or str(check_offline_model(offline_model_dir()))
    results = compare(model_path, args)
    print(
        f"{args.examples - args.validation} train examples, batch {args.batch} x <= {args.length} tokens, {args.steps} steps, "
        f"{args.repeats} repeats, {args.device} {args.precision}, torch {torch.get_num_threads()} threads, "
        f"{args.clock} clock\n"
    )
    print("\n".join(table_lines(results)))


if __name__ == "__main__":
    main()
