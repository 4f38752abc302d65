"""Runs the evaluation: every task x every model on the same sampled items, bootstrap intervals, paired ablations.

The orchestration only: each task kind is scored by its own module (``classification``, ``ner``,
``heldout_agreement``) over the run's shared :class:`ComparedModels`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from opengrok_dagster.evaluation.answers import AnswerCache
from opengrok_dagster.evaluation.api import ApiModel
from opengrok_dagster.evaluation.classification import GOLD_BASELINE, TEACHER_BASELINE, Classification
from opengrok_dagster.evaluation.compared_models import TEACHER, ComparedModels
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.heldout_agreement import score_heldout_agreement
from opengrok_dagster.evaluation.local import LocalStudent, model_identity
from opengrok_dagster.evaluation.ner import NerTagging
from opengrok_dagster.evaluation.results import EvaluationResults, TaskResult, sample_items
from opengrok_dagster.posts.leaks import EvalPosts, load_eval_posts
from opengrok_dagster.tasks.datasets import resolve_data_dir
from opengrok_dagster.tasks.hub import is_hub_split
from opengrok_dagster.tasks.specs import TaskSpec, read_split, task_spec


class Evaluation:
    """One evaluation run: samples each task's items, has its task kind score them, and gathers the notes."""

    def __init__(
        self,
        config: EvaluationConfig,
        student: LocalStudent | None,
        api_models: list[ApiModel],
        log: Callable[[str], None] = print,
        answers: AnswerCache | None = None,
    ) -> None:
        self.config = config
        self.models = ComparedModels(student, api_models, log, answers)
        self.eval_posts: EvalPosts | None = None  # every evaluated task's eval posts
        self.log = log

    @property
    def failed_endpoints(self) -> dict[str, str]:
        """Endpoint name -> why it failed outright and was left out."""
        return self.models.failed_endpoints

    def _too_few(self, spec: TaskSpec, sampled: int, total: int, source: str) -> str | None:
        """Why a task sampled this small cannot measure anything, and how to score it; None when it can."""
        kind = spec.kind if spec.kind in ("ner", "multilabel") else "single"
        least = self.config.min_items.get(kind, 0)
        if sampled >= least:
            return None
        items = "sentences" if spec.kind == "ner" else "posts"
        why = (
            f"{spec.name} not scored: {sampled} {items} sampled cannot measure {spec.primary_metric} (fewer than "
            f"min_items[{kind}] = {least}: the interval would span most of the metric's range)"
        )
        if total < least:  # the whole split is too small: only another split can score it
            return f"{why}; {source} has only {total}: set eval_paths[{spec.name}] to a larger split to score it"
        setting = "ner_examples" if spec.kind == "ner" else "classification_examples"
        return (
            f"{why}; set task_examples[{spec.name}] or {setting} to {least} or more (0 = the whole split, "
            f"{total} items) to score it"
        )

    def run_task(self, spec: TaskSpec, data_dir: Path | None) -> TaskResult:
        """One SNS task on its sampled items, scored by its kind (NER, or single- or multi-label classification)."""
        cfg = self.config
        relative = cfg.eval_paths.get(spec.name) or spec.eval_path
        data = read_split(spec, data_dir, relative)
        wanted = cfg.task_examples.get(
            spec.name, cfg.ner_examples if spec.kind == "ner" else cfg.classification_examples
        )
        total = len(data.tokens) if spec.kind == "ner" else len(data.texts)
        chosen = sample_items(total, wanted, cfg.seed)
        result = TaskResult(spec, spec.name, spec.primary_metric, data.source, data.version, total, len(chosen))
        result.skipped = self._too_few(spec, len(chosen), total, data.source)
        if result.skipped:
            self.log(result.skipped)
            return result
        self.log(f"{spec.name}: {len(chosen)} of {total} items from {data.source} (seed {cfg.seed})")
        if spec.kind == "ner":
            return NerTagging(cfg, self.models).score(result, data, chosen)
        return Classification(cfg, self.models, self.eval_posts).score(result, data, chosen, data_dir)

    def compared_models(self) -> list[dict]:
        """What each model name in the report stands for, with the version of what was loaded."""
        models = []
        if self.models.student is not None:
            models.append(
                {
                    "model": LocalStudent.BASE,
                    "what": "student without adapter (no distillation)",
                    "source": self.models.student.model_path,
                    "version": "",
                }
            )
            for c in self.models.student.checkpoints:
                facts = ", ".join(
                    f"{k}={c.record[k]}" for k in ("global_step", "best_val_loss", "examples") if k in c.record
                )
                models.append(
                    {
                        "model": c.variant,
                        "what": f"student + LoRA, mask mode {c.mask_mode}",
                        "source": f"{c.adapter_dir} ({facts})",
                        "version": c.version,
                    }
                )
        models += [
            {
                "model": m.name,
                "what": "OpenAI-compatible endpoint, greedy"
                + (" (failed: see notes)" if m.name in self.failed_endpoints else ""),
                "source": m.description,
                "version": "",
            }
            for m in self.models.api_models
        ]
        models.append(
            {
                "model": GOLD_BASELINE,
                "what": "TF-IDF + logistic regression on the task's train split",
                "source": "train split",
                "version": "",
            }
        )
        models.append(
            {
                "model": TEACHER_BASELINE,
                "what": "TF-IDF + logistic regression on teacher labels of train texts",
                "source": TEACHER,
                "version": "",
            }
        )
        return models

    def run(self, heldout: pd.DataFrame | None, notes: list[str] | None = None) -> EvaluationResults:
        started = time.monotonic()
        cfg = self.config
        notes = list(notes or [])
        data_dir = resolve_data_dir(cfg.data_dir)
        runnable = [name for name in cfg.tasks if data_dir is not None or is_hub_split(cfg.eval_paths.get(name, ""))]
        if len(runnable) < len(cfg.tasks):
            notes.append(
                f"SNS tasks {', '.join(n for n in cfg.tasks if n not in runnable)} were not evaluated: no data directory "
                "was found. Set OPENGROK_DATA_DIR (or the data_dir setting) to a folder laid out like shared/data "
                "(tweeteval/, wnut17/, ...), or name hub splits (hf:<dataset>:<config>:<split>) in eval_paths."
            )
        self.eval_posts = load_eval_posts(runnable, data_dir, cfg.eval_paths)
        tasks: list[TaskResult] = []
        for result in (self.run_task(task_spec(name), data_dir) for name in runnable):
            if result.skipped:
                notes.append(result.skipped)  # left out of the report's tables, not shown as a score of 0
            else:
                tasks.append(result)
        if self.models.student is None:
            notes.append("no local student was evaluated")
        elif heldout is None or heldout.empty:
            notes.append("teacher agreement was not measured: filtered_responses has no held-out rows")
        else:
            tasks.append(score_heldout_agreement(heldout, cfg, self.models))
        notes += self._run_notes()
        return EvaluationResults(
            cfg,
            data_dir,
            tasks,
            self.compared_models(),
            notes,
            time.monotonic() - started,
            self.models.throughput_summary(),
            dict(self.models.usage),
            self_distillation=self.models.self_distillation(),
        )

    def _run_notes(self) -> list[str]:
        """What the report's notes say about the models over the whole run: failed endpoints and requests, reused
        answers, self-distillation, and the local student's throughput."""
        models = self.models
        notes = [
            f"endpoint {name} failed and is left out: {reason}" for name, reason in models.failed_endpoints.items()
        ]
        for name, (failed, sent, reused) in models.request_counts.items():
            if failed:
                notes.append(
                    f"{name}: {failed} of {sent} requests failed after retries; they count as unparseable answers"
                )
            if reused:
                notes.append(
                    f"{name}: {reused} of {sent} answers reused from earlier runs (same model, prompt and token "
                    "budget, greedy decoding); set reuse_api_answers to false to ask again"
                )
        if models.self_distillation():
            notes.append(
                f"self-distillation: the teacher serves the student's own base checkpoint "
                f"({model_identity(models.student.model_path)}), so the teacher row is that checkpoint answering by "
                "generation, not a stronger model: no student-versus-teacher comparison is made"
            )
        throughput = models.throughput_summary()
        if throughput:
            rates = ", ".join(f"{task} {rate:g}" for task, rate in throughput["posts_per_second"].items())
            notes.append(
                f"local student on {throughput['device']} ({throughput['dtype']}), "
                f"posts per second per variant: {rates}"
            )
        return notes
