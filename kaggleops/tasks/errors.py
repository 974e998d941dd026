"""Errors raised by task code (kept free of heavy imports so the CLI can catch them cheaply)."""

from __future__ import annotations


class DataError(ValueError):
    """A competition file does not have the shape the task expects (e.g. a missing column)."""
