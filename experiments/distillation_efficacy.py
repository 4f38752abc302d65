"""Does distillation teach the student? Base vs distilled student on TweetEval sentiment val (or, with ``--task btc``,
BTC entities: ``experiments.efficacy_tasks``), per teacher, number N of teacher-annotated posts, seed, mask mode and mask
strength; written to docs/efficacy.md and docs/efficacy.json.

Each cell runs the pipeline's own stages on real posts: the teacher annotates posts (the texts of the gold train
split, labels never read, every post also in the evaluation split dropped) with the ``tasks.formats`` prompt; usable
annotations become training examples (the same chat messages and answer the evaluation scores); mask tables
come from ``masks.builder``; the trainer class-balances the train split (``TrainingConfig.balance_classes``); the LoRA is
trained by ``training.trainer.train_lora``; base and students are scored every way that applies (greedy
generation parsed for a label, calibrated and raw label log-likelihood: ``evaluation.calibration``), the teacher
by generation, all on the same sampled posts of the val split's reporting part (``--split tuning`` scores the
tuning part, where recipes are chosen), with paired bootstrap intervals on shared resamples
(``evaluation.bootstrap``). The headline (``--scoring``, default generated) is one scoring every compared model
has. Seed-pooled figures have hierarchical intervals (seeds resampled, then posts), and every comparison of one
(teacher, N) is Holm-corrected with the others (the family is printed). The transfer ratio (student - base) /
(teacher - base), on generation, is computed per resample, so its interval is paired too; with the embedded
teacher, the student's own base checkpoint, it is self-distillation and no ratio is claimed.

The KD arm (``--kd-alpha``; 0 = SFT only): where the teacher returns top-k logprobs, its annotations are asked
for with them, ``distill.align.build_kd_targets`` aligns them to the student's tokens of each example, and the
trainer adds ``kd_alpha`` x KL at the aligned positions (``distill.loss``). Every alpha of a seed trains
on the same examples, mask table, class balance, steps and recipe, all unpacked (KD refuses packing), so KD -
SFT is a paired difference on the same val posts. Beside the task score, each student's held-out teacher NLL:
the mean negative log-likelihood of the teacher's answers (label word and end of turn) on teacher-annotated
posts that no student trained or validated on, with a bootstrap interval (its exp is the perplexity per answer).

Two teachers: the embedded SmolLM2 (``transformers serve`` on loopback) and the reference teacher
(TF-IDF+LR on gold train), not an LLM (``opengrok_dagster.offline.reference_teacher``): a teacher of known skill, fitted on
gold train posts other than the ones it annotates, to measure how much of a teacher's skill the pipeline
transfers.

    .venv/bin/python -m experiments.distillation_efficacy   # CPU: the required grid; GPU: the full grid
    .venv/bin/python -m experiments.distillation_efficacy --teachers reference --sizes 250 --seeds 0 --modes none
    .venv/bin/python -m experiments.distillation_efficacy --teachers reference --sizes 250 --modes none --kd-alpha 0 0.5
    .venv/bin/python -m experiments.distillation_efficacy --task btc --teachers reference --val-posts 300 --append
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from experiments.efficacy_grid import GRIDS, RECIPE, STRENGTHS, TASK, Grid
from experiments.efficacy_page import earlier_runs, markdown, write_outputs
from experiments.efficacy_run import ROOT, run
from experiments.efficacy_tasks import EFFICACY_TASKS, SPLITS
from opengrok_dagster.partitions import MASK_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid", choices=sorted(GRIDS), help="preset grid (default: gpu when CUDA is available, else cpu)"
    )
    parser.add_argument(
        "--task",
        choices=sorted(EFFICACY_TASKS),
        default=TASK,
        help=f"the task to distil and score (default {TASK}; btc: named entities of the Broad Twitter Corpus)",
    )
    parser.add_argument("--teachers", nargs="+", choices=("reference", "embedded"))
    parser.add_argument("--sizes", nargs="+", type=int, help="numbers N of teacher-annotated posts")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--modes", nargs="+", choices=MASK_MODES)
    parser.add_argument("--strengths", nargs="+", choices=sorted(STRENGTHS))
    parser.add_argument("--val-posts", type=int, help="val posts (sentences, for NER) scored (0 = the whole split)")
    parser.add_argument(
        "--kd-alpha",
        nargs="+",
        type=float,
        help="KD weights to compare (0 = SFT only; default 0 0.5): every alpha > 0 is paired with alpha 0",
    )
    parser.add_argument("--kd-temperature", type=float, help="temperature of the KD arm's KL (default 1)")
    parser.add_argument(
        "--held-out-posts",
        type=int,
        help="teacher-annotated posts no student sees, for the held-out teacher NLL (0 = none)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help="optimizer steps per training at most (-1 = one whole epoch of the balanced split)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="reporting",
        help="which part of the val split to score: 'tuning' (70%%, to choose recipes on) or 'reporting' (the "
        "other 30%%, to report on; default)",
    )
    parser.add_argument(
        "--scoring",
        choices=("generated", "calibrated", "raw"),
        default="generated",
        help="headline scoring (every scoring is recorded; default generated, the one the teacher has too)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        help=f"the recipe's learning rate (default {RECIPE.learning_rate:g}); choose it per mode on --split tuning",
    )
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads for the local models (0 = torch's default)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "efficacy.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "efficacy.json")
    parser.add_argument("--append", action="store_true", help="keep the runs already in --json and add this one")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuses, in one line naming the option, a value no run can use (before torch is imported)."""
    if args.kd_alpha and min(args.kd_alpha) < 0:
        parser.error(f"--kd-alpha {min(args.kd_alpha):g}: a KD weight is 0 (SFT only) or more")
    if args.kd_temperature is not None and args.kd_temperature <= 0:
        parser.error(f"--kd-temperature {args.kd_temperature:g}: the temperature must be above 0")
    if args.held_out_posts is not None and args.held_out_posts < 0:
        parser.error(f"--held-out-posts {args.held_out_posts}: a number of posts is 0 (no held-out NLL) or more")
    if args.max_steps is not None and (args.max_steps == 0 or args.max_steps < -1):
        parser.error(f"--max-steps {args.max_steps}: a number of optimizer steps, or -1 for one whole epoch")
    if args.learning_rate is not None and args.learning_rate <= 0:
        parser.error(f"--learning-rate {args.learning_rate:g}: a learning rate is above 0")


def grid_from(args: argparse.Namespace, parser: argparse.ArgumentParser, cuda: bool) -> Grid:
    """The preset grid (``--grid``; by default gpu where CUDA is, else cpu) with every option given replacing its
    field; the KD arm off for tasks without it."""
    preset = GRIDS[args.grid or ("gpu" if cuda else "cpu")]
    if not EFFICACY_TASKS[args.task].kd_arm:
        if args.kd_alpha and max(args.kd_alpha) > 0:
            parser.error(f"--kd-alpha above 0 with --task {args.task}: the KD arm is measured on label tasks only")
        preset = replace(preset, kd_alphas=(0.0,), held_out_posts=0)
    grid = Grid(
        *(
            getattr(args, name) or getattr(preset, name)
            for name in ("teachers", "sizes", "seeds", "modes", "strengths")
        ),
        preset.val_posts if args.val_posts is None else args.val_posts,
        tuple(dict.fromkeys(args.kd_alpha)) if args.kd_alpha else preset.kd_alphas,
        preset.kd_temperature if args.kd_temperature is None else args.kd_temperature,
        preset.held_out_posts if args.held_out_posts is None else args.held_out_posts,
        preset.max_steps if args.max_steps is None else args.max_steps,
        preset.learning_rate if args.learning_rate is None else args.learning_rate,
    )
    if any(alpha > 0 for alpha in grid.kd_alphas) and grid.held_out_posts == 0:
        parser.error("--kd-alpha above 0 needs --held-out-posts above 0: the KD arm is judged on held-out NLL")
    return grid


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check_args(args, parser)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    grid = grid_from(args, parser, torch.cuda.is_available())
    args.earlier = earlier_runs(args.json) if args.append else []
    command = "python -m experiments.distillation_efficacy " + shlex.join(sys.argv[1:])
    result = run(grid, args, command.strip(), args.task)
    write_outputs(result, args, partial=False)
    print(markdown(result, partial=False))


if __name__ == "__main__":
    main()
