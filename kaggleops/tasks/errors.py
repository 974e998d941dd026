"""Errors raised by task code and task loading (kept free of heavy imports so the CLI can catch them cheaply)."""

from __future__ import annotations


class DataError(ValueError):
    """A competition file does not have the shape the task expects (e.g. a missing column)."""


class TaskLoadError(ValueError):
    """A task named in kops.yaml (or by competition slug) cannot be found or imported; one line says why."""
