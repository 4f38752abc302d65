"""Seconds per post of the evaluation's label scoring against the compute floor of that post, in one run.

The floor of a post is one forward over its whole prompt (system prompt, question, label list and the post,
chat-templated) in a left-padded batch of similar-length posts, logits of the last position only: what any
scorer must spend just to read the post once. The scorer (``LocalStudent.label_logprobs``) must also score
every label word, and may save work by running the prompt prefix shared by all posts once. Both run on the
same real TweetEval validation posts, interleaved round by round so load drift hits both alike; each round
gives a ratio, reported as median (min-max). On a CPU shared with other jobs, ``--threads 1 --clock cpu``
times the process's own CPU work. Target: scorer / floor <= 1.5 on the 2-core CPU.

    .venv/bin/python -m bench.evaluation_floor
    .venv/bin/python -m bench.evaluation_floor --posts 64 --rounds 5 --device cuda --batch-tokens 16384
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from bench.measure import spread
from opengrok_dagster.evaluation.local import DEFAULT_BATCH_TOKENS, LocalStudent, _length_batches
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.tasks.datasets import resolve_data_dir
from opengrok_dagster.tasks.formats import classification_messages
from opengrok_dagster.tasks.specs import label_words, read_split, task_spec


TASKS = ("tweeteval_sentiment", "tweet_topic")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def task_prompts(name: str, posts: int) -> tuple[list, list[str]]:
    spec = task_spec(name)
    data_dir = resolve_data_dir()
    if data_dir is None:
        raise SystemExit("no data directory: set OPENGROK_DATA_DIR to a folder laid out like shared/data")
    data = read_split(spec, data_dir, spec.eval_path)
    words = label_words(spec, data.label_names)
    multi_label = spec.kind == "multilabel"
    return [classification_messages(spec.question, text, words, multi_label) for text in data.texts[:posts]], words


def floor_forward(student: LocalStudent, prompts: list[list[int]]) -> None:
    """One forward over every prompt in full, left-padded batches of the scorer's size, last logits only."""
    pad = student.tokenizer.pad_token_id
    with torch.inference_mode():
        for rows in _length_batches([len(p) for p in prompts], 0, student.batch_tokens):
            width = max(len(prompts[r]) for r in rows)
            ids = student._tensor([[pad] * (width - len(prompts[r])) + prompts[r] for r in rows])
            mask = student._tensor([[0] * (width - len(prompts[r])) + [1] * len(prompts[r]) for r in rows])
            student.model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        if student.device == "cuda":
            torch.cuda.synchronize()


def timed(step, clock) -> float:
    started = clock()
    step()
    return clock() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=48, help="validation posts per task")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved scorer/floor rounds; median (min-max) reported"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: this process's CPU time; wall: elapsed"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16 or fp32")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="tokens per forward pass")
    parser.add_argument("--model", default=None, help="student checkpoint (default: the offline SmolLM2)")
    args = parser.parse_args()
    model_path = args.model or str(check_offline_model(offline_model_dir()))
    student = LocalStudent(
        model_path, threads=args.threads, device=args.device, precision=args.precision, batch_tokens=args.batch_tokens
    )
    clock = CLOCKS[args.clock]
    print(
        f"{platform.machine()}, student {model_path} on {student.device} ({student.dtype}), torch threads "
        f"{args.threads or 'default'}, batch {args.batch_tokens} tokens, {args.clock} clock, {args.rounds} rounds, "
        f"{args.posts} TweetEval validation posts per task"
    )
    print(
        "\n| task | labels | prompt tokens per post | scorer s/post | floor s/post | floor ms/token "
        "| scorer / floor | posts/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in TASKS:
        messages, words = task_prompts(name, args.posts)
        prompts = [student._prompt_ids(m) for m in messages]
        tokens = sum(map(len, prompts))
        student.label_logprobs(messages[:4], words)  # warm-up: allocator, continuations cache
        floor_forward(student, prompts[:4])
        scorer, floor, ratios = [], [], []
        for _ in range(args.rounds):
            scorer.append(timed(lambda: student.label_logprobs(messages, words), clock) / len(messages))  # noqa: B023 (called at once)
            floor.append(timed(lambda: floor_forward(student, prompts), clock) / len(messages))  # noqa: B023
            ratios.append(scorer[-1] / floor[-1])
        per_token_ms = [f * len(messages) / tokens * 1000 for f in floor]
        print(
            f"| {name} | {len(words)} | {tokens / len(prompts):.0f} | {spread(scorer, 4)} | {spread(floor, 4)} | "
            f"{spread(per_token_ms, 2)} | {spread(ratios, 2)} | {1 / statistics.median(scorer):.1f} |"
        )


if __name__ == "__main__":
    main()
