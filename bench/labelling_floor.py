"""post_labels' throughput against the evaluation's compute floor for the same posts, in one run.

The floor (``bench.evaluation_floor.floor_forward``) is one forward over each post's whole prompt, last logits
only: what any scorer must spend to read the post once. The labeller is what ``post_labels`` runs per shard:
``labelling.labeller.label_posts`` with a fresh ``PostLabeller`` (the content-free calibration prior included)
and a fresh work directory (every chunk labelled and published, none reused). Both run the same model, the
offline student with a LoRA adapter active as a promoted one would be, on the same real TweetEval validation
posts, interleaved round by round; each round gives a ratio. Target: labeller posts/s >= 0.9x the floor's.

    .venv/bin/python -m bench.labelling_floor
    .venv/bin/python -m bench.labelling_floor --posts 256 --rounds 5 --device cuda --batch-tokens 16384
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import pandas as pd

from bench.evaluation_floor import CLOCKS, floor_forward, task_prompts, timed
from bench.measure import spread
from opengrok_dagster.evaluation.local import DEFAULT_BATCH_TOKENS, LocalStudent, find_checkpoints
from opengrok_dagster.labelling.labeller import LabellingConfig, PostLabeller, label_posts
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.tasks.formats import task_format


TASK = "tweeteval_sentiment"


def random_adapter(model_path: str, directory: Path) -> Path:
    """A LoRA adapter of the cpu-demo's rank on ``model_path`` (non-zero weights: the cost of a trained one)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_path), LoraConfig(r=16, lora_alpha=32, init_lora_weights=False)
    )
    model.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=128, help="TweetEval validation posts labelled per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved labeller/floor rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: this process's CPU time")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16 or fp32")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="tokens per forward pass")
    parser.add_argument("--chunk-posts", type=int, default=256, help="posts per published chunk")
    parser.add_argument("--model", default=None, help="student checkpoint (default: the offline SmolLM2)")
    args = parser.parse_args()
    model_path = args.model or str(check_offline_model(offline_model_dir()))
    clock = CLOCKS[args.clock]
    with tempfile.TemporaryDirectory() as scratch:
        adapter = random_adapter(model_path, Path(scratch) / "none")
        checkpoints, _ = find_checkpoints({"none": adapter}, ("none",))
        student = LocalStudent(
            model_path,
            checkpoints,
            threads=args.threads,
            device=args.device,
            precision=args.precision,
            batch_tokens=args.batch_tokens,
        )
        messages, _ = task_prompts(TASK, args.posts)
        texts = [m[1]["content"].rsplit("\nPost: ", 1)[-1] for m in messages]
        posts = pd.DataFrame({"post_id": [f"bench:{i}" for i in range(len(texts))], "text": texts})
        prompts = [student._prompt_ids(task_format(TASK).messages(t)) for t in texts]
        config = LabellingConfig(tasks=(TASK,), chunk_posts=args.chunk_posts, batch_tokens=args.batch_tokens)
        print(
            f"{platform.machine()}, student {model_path} + LoRA r=16 on {student.device} ({student.dtype}), torch "
            f"threads {args.threads or 'default'}, batch {args.batch_tokens} tokens, chunks of {args.chunk_posts}, "
            f"{args.clock} clock, {args.rounds} rounds, {len(texts)} TweetEval validation posts"
        )
        print("\n| task | labeller posts/s | floor posts/s | labeller / floor (throughput) |")
        print("|---|---:|---:|---:|")
        with student.using("lora:none"):
            floor_forward(student, prompts[:4])  # warm-up
            labeller, floor, ratios = [], [], []
            for index in range(args.rounds):
                work = Path(scratch) / f"work-{index}"
                run = PostLabeller(student, config, checkpoints[0].version)
                seconds = timed(lambda: label_posts(posts, run, work), clock)  # noqa: B023 (called at once)
                labeller.append(len(posts) / seconds)
                floor.append(len(posts) / timed(lambda: floor_forward(student, prompts), clock))
                ratios.append(labeller[-1] / floor[-1])
        print(f"| {TASK} | {spread(labeller, 1)} | {spread(floor, 1)} | {spread(ratios, 2)} |")


if __name__ == "__main__":
    main()
