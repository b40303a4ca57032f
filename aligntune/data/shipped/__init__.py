"""Datasets written and shipped by the project (see aligntune/data/shipped_make.py)."""
