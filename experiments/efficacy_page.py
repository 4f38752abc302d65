"""docs/efficacy.md and docs/efficacy.json: one section per run of the efficacy experiment, and the files written
after every cell (the hand-written notes between ``<!-- kept -->`` markers kept). A run in the record format 2 (every
scoring per model, seed-hierarchical intervals, Holm families, tuning and reporting splits) renders through
``format_2_body``; runs recorded before it keep their own rendering (``format_1_body``), so a rewritten page shows
every earlier figure unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path


def ci(entry: dict | None, digits: int = 3) -> str:
    """``value [low, high]``; ``-`` where a figure was not measured (a run from before it existed, no pair)."""
    if not entry:
        return "-"
    return f"{entry['value']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def _scored(entry: dict | None, scoring: str, digits: int = 3) -> str:
    return ci((entry or {}).get(scoring), digits)


def _recalls(per_class: dict, scoring: str) -> str:
    recall = per_class.get(scoring, {}).get("recall") or {}
    return " / ".join("-" if value != value else f"{value:.2f}" for value in recall.values()) or "-"


def _counts(per_class: dict, scoring: str) -> str:
    return str(per_class.get(scoring, {}).get("predicted_counts", "-"))


def splits_line(result: dict) -> str:
    splits = result["splits"]
    return (
        f"Splits: tuning {splits['tuning']['posts']} posts, reporting {splits['reporting']['posts']} posts "
        f"({splits['tuning']['rule']}); this run scored {splits['scored_posts']} posts of the **{splits['scored']}** "
        "split. Recipes are chosen on the tuning split only."
    )


def format_2_body(result: dict, counted: str) -> list[str]:
    """The run's tables below its header lines (task, grid, recipe)."""
    headline, scorings = result["headline_scoring"], result["scorings"]
    lines = [
        splits_line(result),
        "",
        f"Scorings: {', '.join(scorings)} for the base and every student; the teacher by generation only. "
        f"**Headline scoring: {headline}**, the one every compared model has. Intervals of seed-pooled figures are "
        "hierarchical (seeds resampled, then posts); comparisons are Holm-corrected within each family below.",
        "",
        "Base student: "
        + "; ".join(
            f"{name} {_scored(result['base']['scores'], name)} (recall {counted} "
            f"{_recalls(result['base']['per_class'], name)}, predicted {_counts(result['base']['per_class'], name)})"
            for name in scorings
        )
        + ".",
        "",
        f"| teacher | teacher on val (generated) | recall {counted} | predicted {counted} | unparseable | "
        f"annotated posts usable | teacher label counts {counted} | self-distillation | KD arm |",
        "|---|---|---|---|---:|---:|---|---|---|",
    ]
    for teacher in result["teachers"].values():
        kd = teacher.get("kd_arm") or (
            f"top_logprobs {teacher['top_logprobs']}" if teacher.get("top_logprobs") else "-"
        )
        same = "yes: no student-versus-teacher claim" if teacher["self_distillation"] else "no"
        lines.append(
            f"| {teacher['name']} | {_scored(teacher['scores'], 'generated')} | "
            f"{_recalls(teacher['per_class'], 'generated')} | {_counts(teacher['per_class'], 'generated')} | "
            f"{teacher['val_unparseable']:.3f} | {teacher['usable']} of {teacher['annotated']} | "
            f"{teacher['label_counts']} | {same} | {kd} |"
        )
    lines += _summary(result, headline, scorings) + _families(result) + _cells(result, headline, scorings, counted)
    return lines


def _summary(result: dict, headline: str, scorings: list[str]) -> list[str]:
    lines = [
        "",
        f"Seed-pooled students ({headline}; hierarchical intervals):",
        "",
        "| teacher | N | mode | mask strength | KD alpha | seeds | base | student | teacher | student - base | "
        "masked - none | transfer ratio (generated) | held-out teacher NLL |",
        "|---|---:|---|---|---:|---:|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        ratio = "self-distillation" if row["teacher_score"] is None else ci(row["transfer_ratio"], 2)
        lines.append(
            f"| {row['teacher']} | {row['n']} | {row['mode']} | {row['strength']} | {row['kd_alpha']:g} | "
            f"{row['seeds']} | {_scored(row['base'], headline)} | {_scored(row['student'], headline)} | "
            f"{_scored(row['teacher_score'], 'generated')} | {_scored(row['difference'], headline)} | "
            f"{_scored(row['minus_none'], headline)} | {ratio} | {ci(row['teacher_nll'])} |"
        )
    lines += [
        "",
        "Student - base under every scoring, side by side (seed-pooled, hierarchical intervals):",
        "",
        "| teacher | N | mode | mask strength | KD alpha | " + " | ".join(scorings) + " |",
        "|---|---:|---|---|---:|" + "---|" * len(scorings),
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['teacher']} | {row['n']} | {row['mode']} | {row['strength']} | {row['kd_alpha']:g} | "
            + " | ".join(_scored(row["difference"], name) for name in scorings)
            + " |"
        )
    return lines


def _families(result: dict) -> list[str]:
    lines = []
    for family in result["families"]:
        if not family["members"]:
            continue
        lines += [
            "",
            f"Holm family: teacher {family['teacher']}, N {family['n']}, {family['scoring']} {family['metric']}; "
            f"{len(family['members'])} comparisons corrected together: "
            + "; ".join(m["comparison"] for m in family["members"])
            + ".",
            "",
            "| comparison | difference [95%] | p | Holm p | Holm-adjusted interval | level |",
            "|---|---|---:|---:|---|---:|",
        ]
        for m in family["members"]:
            lines.append(
                f"| {m['comparison']} | {ci(m)} | {m['p_value']:.3f} | {m['p_holm']:.3f} | "
                f"[{m['adjusted_low']:.3f}, {m['adjusted_high']:.3f}] | {m['adjusted_level']:.4f} |"
            )
    return lines


def _cells(result: dict, headline: str, scorings: list[str], counted: str) -> list[str]:
    lines = [
        "",
        "Every cell (one seed each):",
        "",
        "| teacher | N | seed | mode | strength | KD alpha | masked share | balanced examples | steps | train s | "
        + " | ".join(scorings)
        + f" | recall {counted} ({headline}) | predicted {counted} ({headline}) | student - base ({headline}) | "
        f"masked - none ({headline}) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|" + "---|" * (len(scorings) + 4),
    ]
    for c in result["cells"]:
        lines.append(
            f"| {c['teacher']} | {c['n']} | {c['seed']} | {c['mode']} | {c['strength']} | {c['kd_alpha']:g} | "
            f"{c['masked_share']:.2f} | {c['train_examples_balanced']} | {c['steps']} | {c['train_seconds']} | "
            + " | ".join(_scored(c["student"], name) for name in scorings)
            + f" | {_recalls(c['per_class'], headline)} | {_counts(c['per_class'], headline)} | "
            f"{_scored(c['difference'], headline)} | {_scored(c['minus_none'], headline)} |"
        )
    return lines


def _grid_line(grid: dict, partial: bool) -> str:
    kd = (
        f"; KD alphas {', '.join(f'{a:g}' for a in grid['kd_alphas'])} (0 = SFT only), temperature "
        f"{grid['kd_temperature']:g}; {grid['held_out_posts']} held-out annotated posts"
        if "kd_alphas" in grid
        else ""
    )
    return (
        f"Grid: teachers {', '.join(grid['teachers'])}; N {', '.join(map(str, grid['sizes']))}; seeds "
        f"{', '.join(map(str, grid['seeds']))}; modes {', '.join(grid['modes'])}; "
        f"mask strengths {', '.join(grid['strengths'])}{kd}."
        + (
            " **Partial: the run was still going (or stopped) when this was written; only the cells below were"
            " measured.**"
            if partial
            else ""
        )
    )


def kd_lines(result: dict) -> list[str]:
    """The KD arm against SFT only, seed-averaged, on the task score and the held-out teacher NLL (paired)."""
    rows = [row for row in result["summary"] if row.get("kd_alpha")]
    if not rows:
        return []
    lines = [
        "",
        "SFT only vs SFT + KD (seed-averaged, same examples, steps, seeds and recipe, unpacked; paired on the same "
        "val posts and on the same held-out annotated posts; NLL in nats per teacher answer, lower is better):",
        "",
        "| teacher | N | mode | mask strength | seeds | KD alpha | SFT only | SFT + KD | KD - SFT | "
        "teacher NLL, SFT only | teacher NLL, SFT + KD | NLL KD - SFT |",
        "|---|---:|---|---|---:|---:|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['teacher']} | {row['n']} | {row['mode']} | {row['strength']} | {row['seeds']} | "
            f"{row['kd_alpha']:g} | {ci(row['sft_student'])} | {ci(row['student'])} | {ci(row['kd_minus_sft'])} | "
            f"{ci(row['sft_teacher_nll'])} | {ci(row['teacher_nll'])} | {ci(row['nll_kd_minus_sft'])} |"
        )
    return lines


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def base_line(result: dict, counted: str) -> str:
    base = result["base"]
    if base["raw"] is None:  # no calibration (NER)
        return f"Base student: {ci(base['calibrated'])} ({counted} predicted: {base['predicted_counts']})."
    return (
        f"Base student: {ci(base['calibrated'])} calibrated ({ci(base['raw'])} uncalibrated; calibrated predictions "
        f"per class {counted} {base['predicted_counts']})."
    )


def markdown(result: dict, partial: bool) -> str:
    """One run's section: what ran and how, then its tables in the run's record format."""
    # runs from before the NER task counted sentiment labels only
    counted = "/".join(word[:3] for word in result.get("count_names", ["negative", "neutral", "positive"]))
    if result.get("format") == 2:
        return "\n".join(run_lines(result, partial) + format_2_body(result, counted)) + "\n"
    return "\n".join(run_lines(result, partial) + format_1_body(result, counted)) + "\n"


def run_lines(result: dict, partial: bool) -> list[str]:
    """The task, command, commit, machine, grid and recipe of one run."""
    grid, recipe = result["grid"], result["recipe"]
    after = f", {result['load_average_after']:.1f} after" if "load_average_after" in result else ""
    return [
        f"Task {result['task']} ({result['val_source']}), {result['val_posts']} val posts, metric {result['metric']}; "
        f"95% paired percentile bootstrap intervals on shared resamples. Command `{result['command']}`, commit "
        f"{result['commit']}, started {result['started']} on {result['device']}, load average "
        f"{result['load_average_before']:.1f} before{after}.",
        "",
        _grid_line(grid, partial),
        "",
        "Recipe: "
        + (
            "class-balanced train split (oversampled to the largest class)"
            if result.get("class_balance", True)
            else "the train split as annotated (no classes to balance)"
        )
        + f", LoRA r={result['recipe']['lora_r']}, "
        f"alpha={recipe['lora_alpha']}, lr {recipe['learning_rate']}, {recipe['num_epochs']} epochs"
        + (f" or {grid['max_steps']} steps if fewer" if grid.get("max_steps", -1) > 0 else "")
        + ", "
        f"batch {recipe['batch_size']}, max_length {recipe['max_length']}; scoring: {result['scoring']}.",
        "",
    ]


def format_1_body(result: dict, counted: str) -> list[str]:
    """The tables of a run recorded before format 2 (one scoring, post-only intervals), rendered as then."""
    lines = [
        base_line(result, counted),
        "",
        f"| teacher | teacher on val | unparseable | annotated posts usable | teacher label counts {counted} | "
        "held-out posts usable | base's held-out teacher NLL | KD arm |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for teacher in result["teachers"].values():
        held = f"{teacher['held_out_usable']} of {teacher['held_out_posts']}" if teacher.get("held_out_posts") else "-"
        kd = teacher.get("kd_arm") or (
            f"top_logprobs {teacher['top_logprobs']}" if teacher.get("top_logprobs") else "-"
        )
        lines.append(
            f"| {teacher['name']} | {ci(teacher['val'])} | {teacher['val_unparseable']:.3f} | "
            f"{teacher['usable']} of {teacher['annotated']} | {teacher['label_counts']} | {held} | "
            f"{ci(teacher.get('base_nll'))} | {kd} |"
        )
    lines += [
        "",
        "Mean over seeds (the seed-averaged student on the same resamples):",
        "",
        "| teacher | N | mode | mask strength | KD alpha | seeds | base | student | teacher | student - base | "
        "transfer ratio | held-out teacher NLL |",
        "|---|---:|---|---|---:|---:|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['teacher']} | {row['n']} | {row['mode']} | {row['strength']} | {row.get('kd_alpha', 0):g} | "
            f"{row['seeds']} | {ci(row['base'])} | {ci(row['student'])} | {ci(row['teacher_score'])} | "
            f"{ci(row['difference'])} | {ci(row['transfer_ratio'], 2)} | {ci(row.get('teacher_nll'))} |"
        )
    lines += kd_lines(result)
    lines += [
        "",
        "Every cell:",
        "",
        "| teacher | N | seed | mode | strength | KD alpha | KD aligned share | masked share | balanced examples | "
        f"steps | train s | student | uncalibrated | predicted {counted} | student - base | transfer ratio | "
        "masked - none (same seed) | KD - SFT (same seed) | held-out teacher NLL |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        aligned = f"{c['kd_aligned_share']:.2f}" if c.get("kd_aligned_share") is not None else "-"
        lines.append(
            f"| {c['teacher']} | {c['n']} | {c['seed']} | {c['mode']} | {c['strength']} | {c.get('kd_alpha', 0):g} | "
            f"{aligned} | {c['masked_share']:.2f} | {c['train_examples_balanced']} | {c['steps']} | "
            f"{c['train_seconds']} | {ci(c['student'])} | {_value(c['student_raw'])} | {c['predicted_counts']} | "
            f"{ci(c['difference'])} | {ci(c['transfer_ratio'], 2)} | {ci(c.get('minus_none'))} | "
            f"{ci(c.get('kd_minus_sft'))} | {ci(c.get('teacher_nll'))} |"
        )
    return lines


PAGE_HEADER = """# Distillation efficacy

Written by `experiments/distillation_efficacy.py` (`make bench` sections `efficacy` and `efficacy_ner`: `python -m
bench --only efficacy efficacy_ner`). It measures whether distillation teaches the student the SNS task it is scored on
(TweetEval sentiment; named entities of the Broad Twitter Corpus with `--task btc`), and how much of a teacher's
skill it transfers: the transfer ratio is (student - base) / (teacher - base) on the same val posts. The
"reference" teacher is the reference teacher (TF-IDF+LR on gold train), not an LLM: a classifier (for entities a
token tagger) of known skill served over the OpenAI API (`opengrok_dagster/offline/reference_teacher.py`), fitted on gold train
posts other than those it annotates.
The "embedded" teacher is SmolLM2-135M-Instruct, the offline default. SFT + KD adds the KL to the teacher's top-k
logprobs (token-level distillation) to the same training; SFT only is KD alpha 0. The held-out teacher NLL is the
mean negative log-likelihood (nats) of the teacher's answers on annotated posts no student saw. The figures below
are what the run measured, whatever they show; the JSON beside this page (docs/efficacy.json) holds them all.

"""


KEPT = re.compile(r"<!-- kept -->.*?<!-- /kept -->\n", re.S)


def kept_notes(path: Path) -> str:
    """The hand-written part of the page (the settings search), between ``<!-- kept -->`` markers, kept on rewrite."""
    match = KEPT.search(path.read_text()) if path.is_file() else None
    return match.group(0) + "\n" if match else ""


def earlier_runs(path: Path) -> list[dict]:
    """The runs already in the JSON file (``--append`` adds one: a cell a shared CPU fits only in another run)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return data["runs"] if "runs" in data else [data]


def write_outputs(result: dict, args, partial: bool) -> None:
    runs = [*args.earlier, result | {"partial": partial}]
    sections = [
        f"## Measured{f' (run {i} of {len(runs)})' if len(runs) > 1 else ''}\n\n{markdown(run, run['partial'])}"
        for i, run in enumerate(runs, 1)
    ]
    page = PAGE_HEADER + kept_notes(args.output) + "\n".join(sections)
    for path, text in ((args.output, page), (args.json, json.dumps({"runs": runs}, indent=2, default=float) + "\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(path.suffix + ".partial")
        staging.write_text(text)
        staging.replace(path)
