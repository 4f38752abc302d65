"""Mask tables: per-token attention masks from TF-IDF, POS, dependency and random scores, aligned to the student tokenizer."""
