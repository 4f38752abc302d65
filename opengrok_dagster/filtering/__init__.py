"""Filtering and manual review: teacher responses -> the filtered training set, and prompt feedback from it.

No dagster imports here; `assets/filtering.py` is the thin Dagster layer.
"""
