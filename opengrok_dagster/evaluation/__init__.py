"""Evaluation of the student (base and each LoRA mask mode), the teacher and cheap baselines on SNS tasks.

Never imports dagster: ``assets/evaluation.py`` is the thin layer that feeds it checkpoints, held-out teacher
responses and endpoints, and publishes the report this package renders.
"""
