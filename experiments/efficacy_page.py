"""docs/efficacy.md's section for one run of the efficacy bench in the record format 2 (every scoring per model,
seed-hierarchical intervals, Holm families, tuning and reporting splits). Runs recorded before it keep their own
rendering (``bench.distillation_efficacy.markdown``), so a rewritten page shows every earlier figure unchanged."""

from __future__ import annotations


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


def body(result: dict, counted: str) -> list[str]:
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
