"""Bulk actions in the background: the worker every replica runs (worker.py)."""
