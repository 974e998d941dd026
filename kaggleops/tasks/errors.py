"""The errors task code raises and task loading reports: kops' one DataError (kaggleops.errors, standard library
only), re-exported, and TaskLoadError."""

from __future__ import annotations

from kaggleops.errors import DataError

__all__ = ["DataError", "TaskLoadError"]


class TaskLoadError(ValueError):
    """A task named in kops.yaml (or by competition slug) cannot be found or imported; one line says why."""
