"""The errors task code raises and task loading reports: kops' one DataError (kaggleops.errors, standard library
only), re-exported, and TaskLoadError."""

from __future__ import annotations

from kaggleops.errors import DataError, TaskLoadError

__all__ = ["DataError", "TaskLoadError"]
