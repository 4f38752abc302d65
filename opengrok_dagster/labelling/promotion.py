"""Which LoRA adapter is promoted to label the user's posts: the rule, the manual choice, and the refusals.

An adapter earns promotion when the evaluation's paired bootstrap difference over the base student on the
configured task and metric has its lower bound above a margin: a significant gain, not a point estimate that
noise could give (``lora:none`` +0.031 [-0.005, 0.072] is not promoted). Each adapter's difference is the one
under the scoring its labels would come from: the label scoring the evaluation chose for it on tuning posts
(``evaluation.scoring_choice``: calibrated or raw likelihood), since those labels are what promotion hands out; the
base is scored the same way in that difference. Of the adapters that earn it, the one with the highest lower bound
wins, and its scoring goes with it to ``post_labels``.
``opengrok promote MODE`` overrides the rule; the choice is recorded as manual.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, Field

from opengrok_dagster.evaluation.local import Checkpoint, CheckpointError, require_base_model
from opengrok_dagster.evaluation.scoring import CALIBRATED, SCORINGS
from opengrok_dagster.evaluation.scoring_choice import scoring_choices
from opengrok_dagster.labelling.agreement import POSTS_AGREEMENT
from opengrok_dagster.labelling.labeller import LabellingConfig
from opengrok_dagster.publish import publishing
from opengrok_dagster.tasks.specs import task_spec


PER_ADAPTER = "per adapter"  # Promotion.scoring when nothing is promoted and each adapter was read in its own


class PromotionError(ValueError):
    """A promotion that cannot stand: a manual choice without an adapter, an adapter of another student."""


class PromotionConfig(BaseModel):
    task: str = Field(
        default="tweeteval_sentiment", description="The evaluation task whose difference over base decides promotion."
    )
    metric: str | None = Field(
        default=None, description="The metric of that task compared (unset = the task's primary metric)."
    )
    margin: float = Field(
        default=0.0,
        description="Promote only an adapter whose difference over base has a lower bound above this margin.",
    )
    scoring: str | None = Field(
        default=None,
        description="The evaluation scoring whose difference decides, for every adapter (unset = per adapter, the "
        "label scoring the evaluation chose for it on tuning posts; where the report has no choice, post_labels' "
        "default: calibrated label likelihood, generation for NER); 'raw' goes with post_labels calibrate: false.",
    )

    def model_post_init(self, context) -> None:
        task_spec(self.task)  # an unknown task names the known ones
        if self.scoring is not None and self.scoring not in SCORINGS:
            raise ValueError(f"promotion scoring {self.scoring!r}: choose one of {', '.join(SCORINGS)}")

    def scorings(self, report: pd.DataFrame) -> dict[str, str]:
        """Adapter (``lora:<mode>``) -> the scoring its difference over base is read in: the configured one, else
        the one chosen for its labels on the report's tuning posts; ``""`` maps the default for any other."""
        default = self.scoring or LabellingConfig().scoring(task_spec(self.task).kind)
        if self.scoring is not None:
            return {"": default}
        return scoring_choices(report, self.task) | {"": default}


@dataclass(frozen=True)
class Promotion:
    """The decision: ``mask_mode`` None when nothing is promoted, ``reason`` one line saying why either way."""

    mask_mode: str | None
    how: str  # "rule" | "manual" | "none"
    reason: str
    task: str
    metric: str | None
    margin: float
    scoring: str  # the promoted adapter's: the one its labels come from (PER_ADAPTER when nothing is promoted)
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def variant(self) -> str | None:
        return None if self.mask_mode is None else f"lora:{self.mask_mode}"


def _differences(report: pd.DataFrame, config: PromotionConfig, scorings: dict[str, str]) -> pd.DataFrame:
    """The report's paired differences of each adapter over base on the configured task and metric, each in the
    adapter's scoring (``PromotionConfig.scorings``)."""
    if report.empty or "compared_to" not in report.columns:
        return report.iloc[0:0]
    wanted = report["model"].astype(str).map(lambda model: scorings.get(model, scorings[""]))
    rows = report[
        (report["section"] == "paired_difference")
        & (report["task"] == config.task)
        & (report["compared_to"] == "base")
        & (report["scoring"] == wanted)
        & report["model"].astype(str).str.startswith("lora:")
    ]
    rows = rows[rows["metric"] == config.metric] if config.metric else rows[rows["primary"].astype(bool)]
    return rows


def _interval(row) -> str:
    return f"{row.model} ({row.scoring}) {row.value:+.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"


def choose(report: pd.DataFrame, available: set[str], config: PromotionConfig, manual: str | None = None) -> Promotion:
    """The adapter to promote among the mask modes in ``available`` (those with a materialised adapter)."""
    scorings = config.scorings(report)
    rows = _differences(report, config, scorings)
    metric = config.metric or (str(rows["metric"].iloc[0]) if len(rows) else None)
    common = {"task": config.task, "metric": metric, "margin": config.margin}
    by_mode = {str(row.model).removeprefix("lora:"): row for row in rows.itertuples()}
    if manual is not None:
        if manual not in available:
            raise PromotionError(
                f"`opengrok promote {manual}` chose mask mode {manual!r}, which has no materialised adapter "
                f"(materialised: {', '.join(sorted(available)) or 'none'}); materialise lora_checkpoint[{manual}] "
                "or run `opengrok promote auto`"
            )
        row = by_mode.get(manual)
        scores = f"; evaluated {_interval(row)} over base" if row is not None else "; not in the eval report"
        return Promotion(
            manual,
            "manual",
            f"lora:{manual} chosen by hand (`opengrok promote {manual}`){scores}",
            **common,
            scoring=scorings.get(f"lora:{manual}", scorings[""]),
            **_numbers(row),
        )
    scoring = f" ({config.scoring})" if config.scoring else ", each in its label scoring,"
    what = f"{config.task} {metric or 'primary metric'} difference over base{scoring}"
    undecided = {**common, "scoring": config.scoring or PER_ADAPTER}
    if not by_mode:
        return Promotion(
            None,
            "none",
            f"nothing promoted: the eval report has no {what} of an adapter; evaluate "
            f"{config.task} with the adapters (eval_report)",
            **undecided,
        )
    qualifying = [row for mode, row in by_mode.items() if mode in available and row.ci_low > config.margin]
    if not qualifying:
        scored = "; ".join(_interval(row) for row in by_mode.values())
        return Promotion(
            None,
            "none",
            f"nothing promoted: no adapter's {what} has a lower bound above {config.margin:g} ({scored})",
            **undecided,
        )
    best = max(qualifying, key=lambda row: (row.ci_low, row.value))
    mode = str(best.model).removeprefix("lora:")
    reason = f"{_interval(best)} on {config.task} {metric} over base: lower bound above {config.margin:g}" + (
        f", the highest of {len(qualifying)} that qualify" if len(qualifying) > 1 else ""
    )
    return Promotion(mode, "rule", reason, **common, scoring=str(best.scoring), **_numbers(best))


def _numbers(row) -> dict:
    if row is None:
        return {}
    return {"difference": float(row.value), "ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}


def require_compatible(checkpoint: Checkpoint, student_model: str, student_fingerprint: str | None = None) -> None:
    """Refuse an adapter trained on another base model, or saved with another tokenizer than the student's."""
    try:
        require_base_model(checkpoint, student_model)
    except CheckpointError as exc:
        raise PromotionError(f"cannot promote lora:{checkpoint.mask_mode}: {exc}") from None
    adapter_tokenizer = checkpoint.adapter_dir / "tokenizer_config.json"
    if student_fingerprint is None or not adapter_tokenizer.is_file():
        return
    from transformers import AutoTokenizer

    from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint

    theirs = tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(checkpoint.adapter_dir)))
    if theirs.rsplit("@", 1)[-1] != student_fingerprint.rsplit("@", 1)[-1]:
        raise PromotionError(
            f"cannot promote lora:{checkpoint.mask_mode}: its tokenizer ({theirs}) is not the student's "
            f"({student_fingerprint}); re-train lora_checkpoint[{checkpoint.mask_mode}] on this student"
        )


def teacher_agreement(report: pd.DataFrame, variant: str | None, scoring: str = CALIBRATED) -> dict[str, dict]:
    """The report's agreement of ``variant`` with the teacher on held-out annotations of the user's posts, in
    ``scoring`` where a task was measured in several (its labels' scoring):
    ``{task: {metric: value, metric_low, metric_high, n, confusion: {"teacher -> student": posts}}}``
    (``labelling.agreement``), empty when not measured."""
    if variant is None or report.empty or "section" not in report.columns:
        return {}
    ours = (report["model"] == variant) & report["task"].astype(str).str.startswith(f"{POSTS_AGREEMENT}:")
    report = report[ours]
    rows = report[report["section"] == "score"]
    scoring = LabellingConfig().following(scoring).scoring("classification")  # an NER promotion: calibrated classes
    in_scoring = rows.groupby("task")["scoring"].transform(lambda scorings: (scorings == scoring).any())
    rows = rows[~in_scoring.astype(bool) | (rows["scoring"] == scoring)]
    found: dict[str, dict] = {}
    for row in rows.itertuples():
        figures = found.setdefault(str(row.task).split(":", 1)[1], {"n": int(row.n), "confusion": {}})
        figures |= {row.metric: row.value, f"{row.metric}_low": row.ci_low, f"{row.metric}_high": row.ci_high}
    cells = report[report["section"] == "confusion"]
    for row in cells.itertuples():
        task = str(row.task).split(":", 1)[1]
        if task in found:  # "teacher label -> student label": posts
            found[task]["confusion"][row.metric] = int(row.value)
    return found


def promotion_record(
    promotion: Promotion, checkpoint: Checkpoint | None, agreement: dict | None = None
) -> pd.DataFrame:
    """The ``promoted_student`` asset value: one row, the decision and (when promoted) the adapter it names."""
    row = asdict(promotion) | {
        "teacher_agreement": json.dumps(agreement or {}),
        "promoted": promotion.mask_mode is not None,
        "adapter_dir": str(checkpoint.adapter_dir) if checkpoint else None,
        "adapter_version": checkpoint.version if checkpoint else None,
        "base_model": checkpoint.base_model if checkpoint else None,
        "card": _card(checkpoint),
    }
    return pd.DataFrame([row], columns=list(PROMOTION_COLUMNS))


PROMOTION_COLUMNS = (
    "promoted",
    "mask_mode",
    "how",
    "reason",
    "task",
    "metric",
    "margin",
    "scoring",
    "difference",
    "ci_low",
    "ci_high",
    "adapter_dir",
    "adapter_version",
    "base_model",
    "card",
    "teacher_agreement",  # JSON: {task: {kappa, kappa_low, kappa_high, agreement, ..., n}} from the eval report
)


def _card(checkpoint: Checkpoint | None) -> str | None:
    readme = checkpoint.adapter_dir / "README.md" if checkpoint else None
    return readme.read_text() if readme is not None and readme.is_file() else None


# -- the manual choice, a file under $OPENGROK_HOME (HomeLayout.promotion_choice_path) -------------------------
def read_manual_choice(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["mask_mode"])
    except (ValueError, KeyError):
        raise PromotionError(f"{path} is not a promotion choice; run `opengrok promote MODE` or `auto`") from None


def write_manual_choice(path: Path, mask_mode: str | None) -> None:
    """Record ``mask_mode`` as chosen by hand; None returns promotion to the rule."""
    if mask_mode is None:
        path.unlink(missing_ok=True)
        return
    choice = {"mask_mode": mask_mode, "set_at": datetime.now(UTC).isoformat(), "by": getpass.getuser()}
    with publishing(path) as [partial]:
        partial.write_text(json.dumps(choice))
