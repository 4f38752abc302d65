"""The evaluation's one config object: what is evaluated, how much of it, and how it is scored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from opengrok_dagster.evaluation.api import EndpointSpec
from opengrok_dagster.evaluation.local import DEFAULT_BATCH_TOKENS
from opengrok_dagster.evaluation.scoring import SCORINGS
from opengrok_dagster.tasks.specs import DEFAULT_TASKS, TASKS, task_spec


class EvaluationConfig(BaseModel):
    """Sizes are items sampled per task (0 = the whole split); the same config and inputs give the same numbers.

    TweetEval sentiment defaults to 500 val posts, so that the 95% interval of the paired difference student - base
    on macro recall is at most +-0.06 wide: docs/efficacy.md measured +-0.052 on 300 posts for a student that
    disagrees with the base on most posts (the widest case), so about +-0.04 on 500 (width ~ 1/sqrt(n)).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = Field(
        default=DEFAULT_TASKS, description=f"SNS tasks to evaluate; known: {', '.join(TASKS)}."
    )
    data_dir: str | None = Field(
        default=None,
        description="Data directory laid out like shared/data; unset = $OPENGROK_DATA_DIR, else ../shared/data beside "
        "the repository.",
    )
    eval_paths: dict[str, str] = Field(
        default_factory=dict,
        description="Per task, the split to evaluate, relative to data_dir (e.g. wnut17: "
        "wnut17/emerging.test.annotated).",
    )
    train_paths: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Per task, the train file(s) of the TF-IDF baselines, relative to data_dir."
    )
    classification_examples: int = Field(
        default=100, description="Items sampled per classification/topic task (0 = the whole split)."
    )
    task_examples: dict[str, int] = Field(
        default_factory=lambda: {"tweeteval_sentiment": 500},
        description="Per task, items sampled instead of classification_examples/ner_examples (0 = the whole split); "
        "TweetEval sentiment's 500 keep the paired difference's 95% interval within +-0.06 (docs/efficacy.md).",
    )
    ner_examples: int = Field(default=6, description="Sentences sampled per NER task (0 = the whole split).")
    agreement_examples: int = Field(
        default=6, description="Held-out teacher responses sampled for teacher agreement (0 = all)."
    )
    seed: int = Field(default=0, description="Seed of the item sampling and the bootstrap.")
    resamples: int = Field(default=1000, description="Bootstrap resamples per interval.")
    confidence: float = Field(default=0.95, description="Confidence level of the intervals.")
    topic_threshold: float = Field(
        default=0.3, description="Normalised label probability above which a topic is predicted (besides the top one)."
    )
    ner_max_new_tokens: int = Field(default=40, description="Tokens generated per NER answer.")
    agreement_max_new_tokens: int = Field(default=48, description="Tokens the student generates per held-out prompt.")
    api_max_tokens: int = Field(
        default=32, description="Completion tokens per classification answer from an API model."
    )
    baseline_train_examples: int = Field(
        default=4000, description="Train items for the TF-IDF + LR baseline on gold labels (0 = all)."
    )
    teacher_label_examples: int = Field(
        default=16, description="Train texts the teacher labels for the TF-IDF + LR baseline on teacher labels."
    )
    torch_threads: int = Field(
        default=0,
        description="CPU threads for the local models (0 = torch's default; 1 is faster on a machine busy with other "
        "jobs).",
    )
    scorings: tuple[str, ...] = Field(
        default=SCORINGS,
        description="How local models' classification answers are scored, all reported side by side: 'generated' "
        "(greedy answer parsed for a label, as API models are scored), 'calibrated' (label likelihood divided by its "
        "likelihood after the content-free posts 'N/A', '', '[MASK]'), 'raw' (label likelihood).",
    )
    headline_scoring: str = Field(
        default="generated",
        description="The scoring of the summary, the distillation table and the plots: one every compared model has "
        "('generated' is the only one an API teacher without logprobs has); models without it are left out there.",
    )
    scoring_tuning_examples: int = Field(
        default=200,
        description="Per classification task, posts drawn apart from the reported ones on which each local model's "
        "label scoring for post_labels (calibrated or raw, whichever scores the primary metric higher) is chosen; "
        "0 = no choice (post_labels' calibrate setting decides). Needs both calibrated and raw among the scorings.",
    )
    min_items: dict[str, int] = Field(
        default_factory=lambda: {"ner": 100, "multilabel": 100, "single": 100},
        description="Per task kind, the fewest items sampled that can measure anything; a task sampled fewer is not "
        "scored (a note says why and how to score it) rather than reported with an interval as wide as the metric.",
    )
    example_posts: int = Field(
        default=5, description="Example posts per classification task shown in the report with each model's answer."
    )
    device: str = Field(
        default="auto",
        description="Where the local student runs: 'auto' (cuda, then mps, then cpu), 'cuda', 'mps' or 'cpu'.",
    )
    precision: str = Field(
        default="auto",
        description="The local student's weights: 'auto' (bf16 on GPUs that have it, else fp16 on CUDA, fp32 on "
        "mps/cpu), 'bf16', 'fp16' or 'fp32'.",
    )
    batch_tokens: int = Field(
        default=DEFAULT_BATCH_TOKENS,
        description="Tokens per forward pass of the local student, padding and scored labels included (raise it on "
        "a GPU).",
    )
    endpoints: tuple[EndpointSpec, ...] = Field(
        default=(), description="Extra OpenAI-compatible models to compare; a failing one is reported, not fatal."
    )

    def model_post_init(self, context) -> None:
        for name in self.tasks:
            task_spec(name)
        for name in (*self.eval_paths, *self.train_paths):
            if name not in self.tasks:
                raise ValueError(
                    f"a split path is given for task {name!r}, which is not among the tasks evaluated ({', '.join(self.tasks)})"
                )
        for name, size in self.task_examples.items():
            if size < 0:
                raise ValueError(f"task_examples[{name!r}] must be >= 0 (0 = all), got {size}")
        counts = (
            "classification_examples",
            "ner_examples",
            "agreement_examples",
            "baseline_train_examples",
            "teacher_label_examples",
            "torch_threads",
            "example_posts",
            "scoring_tuning_examples",
        )
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = all), got {getattr(self, name)}")
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100 for a usable interval, got {self.resamples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        unknown = [s for s in self.scorings if s not in SCORINGS]
        if unknown or not self.scorings:
            raise ValueError(f"scorings {list(self.scorings)}: choose one or more of {', '.join(SCORINGS)}")
        if self.headline_scoring not in self.scorings:
            raise ValueError(
                f"headline_scoring {self.headline_scoring!r} is not among the scorings {list(self.scorings)}: add it"
            )
        if not 0 < self.topic_threshold <= 1:
            raise ValueError(f"topic_threshold must be in (0, 1], got {self.topic_threshold}")
