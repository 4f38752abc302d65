"""Wall time of the default evaluation: base student + 4 LoRA adapters + the embedded teacher + baselines.

Target: <= 5 minutes on the 2-core development CPU. Uses the adapters under $OPENGROK_HOME/checkpoints when
all four exist, else four LoRA adapters (r=8 on the attention projections, random non-zero weights: the same
compute as trained ones) on the student; held-out rows from filtered_responses when materialised, else six
prompt/response pairs made from real tweets. The teacher server is started before the clock, as in
`opengrok run`. Prints the per-step log, then median/min/max of the wall time and of this process's CPU time
(the local models; the teacher server is another process) over the repeats, and the load average, since a
busy shared machine inflates wall time.

    .venv/bin/python -m bench.evaluation_time
    .venv/bin/python -m bench.evaluation_time --no-teacher
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from opengrok_dagster.evaluation.api import ApiModel
from opengrok_dagster.evaluation.compared_models import TEACHER
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import LocalStudent, find_checkpoints, read_checkpoint
from opengrok_dagster.evaluation.report import build_report
from opengrok_dagster.evaluation.report.frame import results_frame
from opengrok_dagster.evaluation.report.render import publish_report
from opengrok_dagster.evaluation.runner import Evaluation
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.settings import home_layout
from opengrok_dagster.tasks.datasets import read_tweeteval, resolve_data_dir
from opengrok_dagster.training import MASK_MODES
from resources import TeacherResource


def stand_in_adapters(model_path: str, root: Path) -> list:
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    checkpoints = []
    for seed, mode in enumerate(MASK_MODES):
        torch.manual_seed(seed)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(model_path),
            LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False),
        )
        model.save_pretrained(root / mode)
        (root / mode / "opengrok_checkpoint.json").write_text(
            json.dumps({"mask_mode": mode, "base_model": model_path})
        )
        checkpoints.append(read_checkpoint(root / mode, mode))
    return checkpoints


def stand_in_heldout(n: int = 6) -> pd.DataFrame:
    data_dir = resolve_data_dir()
    tweets = (
        read_tweeteval(data_dir / "tweeteval" / "emotion" / "val").texts[:n]
        if data_dir
        else ["What a match tonight!"] * n
    )
    return pd.DataFrame(
        {
            "example_id": [f"bench-{i}" for i in range(n)],
            "system_prompt": ["You write short social-media posts."] * n,
            "prompt": [f"Write a short post in the style of this one: {t}" for t in tweets],
            "response": tweets,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-teacher", action="store_true", help="leave out the embedded teacher")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads for the local models (0 = torch's default)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="whole evaluations timed; median (min-max) is reported")
    args = parser.parse_args()
    model_path = str(check_offline_model(offline_model_dir()))
    layout = home_layout()
    found, missing = find_checkpoints({mode: layout.checkpoint_dir(mode) for mode in MASK_MODES}, MASK_MODES)
    filtered = layout.filtered_responses_path
    print(
        f"{platform.machine()}, Python {platform.python_version()}, student {model_path}, torch threads {args.threads or 'default'}"
    )
    teacher = TeacherResource(mode="embedded", max_concurrency=16, max_tokens=128)
    api = [] if args.no_teacher else [ApiModel(TEACHER, teacher.endpoint, "embedded offline teacher")]
    config = EvaluationConfig(torch_threads=args.threads)
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = (
            found if not missing else stand_in_adapters(model_path, HomeLayout(Path(scratch)).checkpoints_dir)
        )
        print(
            f"adapters: {'trained, from ' + str(layout.checkpoints_dir) if not missing else 'four stand-ins (r=8, q/k/v/o)'}"
        )
        if filtered.exists():
            frame = pd.read_parquet(filtered)
            heldout = frame[(frame["split"] == "heldout") & frame["response"].notna()]
        else:
            heldout = stand_in_heldout()
        try:
            if api:
                teacher.endpoint()  # started before timing, as in `opengrok run`, where collection started it
            for repeat in range(1, args.repeats + 1):
                started, cpu_started = time.monotonic(), time.process_time()
                student = LocalStudent(model_path, checkpoints, threads=config.torch_threads)

                def log(message, repeat=repeat, started=started):
                    print(f"[run {repeat}, {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

                results = Evaluation(config, student, api, log=log).run(heldout)
                publish_report(HomeLayout(Path(scratch)).reports_dir, build_report(results), results_frame(results))
                walls.append(time.monotonic() - started)
                cpus.append(time.process_time() - cpu_started)
        finally:
            teacher.teardown_after_execution(None)
    sizes = ", ".join(f"{t.name} n={t.n}" for t in results.tasks)
    print(
        f"{len(student.variants)} local variants + {len(api)} API model(s); {sizes}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("\n| | median | min | max |\n|---|---:|---:|---:|")
    print(f"| wall seconds (target <= 300) | {statistics.median(walls):.0f} | {min(walls):.0f} | {max(walls):.0f} |")
    print(
        f"| CPU seconds in this process (local models; the teacher server is another process) | {statistics.median(cpus):.0f} | {min(cpus):.0f} | {max(cpus):.0f} |"
    )
    for note in results.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
