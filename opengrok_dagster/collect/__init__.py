"""Data acquisition: topic catalogue, prompt grid, teacher client and the durable response store.

Nothing in this package imports Dagster.
"""
