"""The embedded offline default: SmolLM2-135M-Instruct as student and, behind `transformers serve`, as teacher.

Nothing in this package imports Dagster.
"""
