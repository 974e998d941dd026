"""The error task code raises: kops' one DataError (kaggleops.errors, standard library only), re-exported."""

from __future__ import annotations

from kaggleops.errors import DataError

__all__ = ["DataError"]
