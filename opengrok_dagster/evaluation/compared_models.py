"""The models an evaluation compares, shared by every task kind: the local student's variants (base and each
adapter) and the API models, with what the run asked of each.

One object for the whole run, so a failed endpoint is left out of every later task, and the request counts, the
API spend and the student's throughput add up over all tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from opengrok_dagster.evaluation.answers import AnswerCache
from opengrok_dagster.evaluation.api import ApiModel, EndpointFailure, Usage
from opengrok_dagster.evaluation.local import LocalStudent, model_identity


TEACHER = "teacher"


@dataclass
class Throughput:
    """Posts the local student handled and the seconds it took, per task (every variant summed)."""

    posts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, task: str, posts: int, seconds: float) -> None:
        self.posts[task] = self.posts.get(task, 0) + posts
        self.seconds[task] = self.seconds.get(task, 0.0) + seconds

    def per_second(self) -> dict[str, float]:
        return {task: round(self.posts[task] / self.seconds[task], 2) for task in self.posts if self.seconds[task] > 0}


class ComparedModels:
    """The student (None when no local model is evaluated) and the API models, asked on behalf of every task."""

    def __init__(
        self,
        student: LocalStudent | None,
        api_models: list[ApiModel],
        log: Callable[[str], None],
        answers: AnswerCache | None = None,
    ) -> None:
        self.student = student
        self.api_models = list(api_models)
        self.answers = answers
        self.log = log
        self.failed_endpoints: dict[str, str] = {}
        self.request_counts: dict[str, list[int]] = {}  # model -> [failed, sent, reused], over the whole run
        self.usage: dict[str, Usage] = {}  # model -> what was sent to it and its cost, over the whole run
        self.throughput = Throughput()

    def api_answers(self, model: ApiModel, messages, max_tokens: int) -> list[str | None] | None:
        """The model's answers (None for a failed request), or None once the endpoint has failed outright."""
        if model.name in self.failed_endpoints:
            return None
        started = time.monotonic()
        try:
            answers, failed, reused, usage = model.complete_all(messages, max_tokens, self.answers)
            self.log(
                f"{model.name} answered {len(messages) - failed} of {len(messages)} prompts in {time.monotonic() - started:.1f}s"
                + (f" ({reused} answers reused from earlier runs)" if reused else "")
            )
        except EndpointFailure as exc:
            self.failed_endpoints[model.name] = str(exc)
            self.log(f"endpoint {model.name} left out of the report: {exc}")
            return None
        counts = self.request_counts.setdefault(model.name, [0, 0, 0])
        counts[0] += failed
        counts[1] += len(messages)
        counts[2] += reused
        self.usage.setdefault(model.name, Usage(usd=None if model.prices is None else 0.0)).add(usage)
        return answers

    def local_variants(self) -> list[str]:
        return self.student.variants if self.student is not None else []

    def each_variant(self, task: str, items: int, did: str = "") -> Iterator[str]:
        """Yields each local variant with the student switched to it; what the caller does with it before asking
        for the next is timed, counted in the task's throughput and logged as ``task: variant did in Ns``."""
        for variant in self.local_variants():
            started = time.monotonic()
            with self.student.using(variant):
                yield variant
            seconds = time.monotonic() - started
            self.throughput.add(task, items, seconds)
            self.log(" ".join(filter(None, (f"{task}: {variant}", did, f"in {seconds:.1f}s"))))

    def teacher(self) -> ApiModel | None:
        return next((m for m in self.api_models if m.name == TEACHER), None)

    def self_distillation(self) -> bool:
        """Whether the teacher serves the student's own base checkpoint."""
        teacher = self.teacher()
        if teacher is None or teacher.weights is None or self.student is None:
            return False
        return model_identity(teacher.weights) == model_identity(self.student.model_path)

    def throughput_summary(self) -> dict:
        if self.student is None or not self.throughput.posts:
            return {}
        student = self.student
        return {"device": student.device, "dtype": student.dtype, "posts_per_second": self.throughput.per_second()}
