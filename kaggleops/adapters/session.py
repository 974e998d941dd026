"""One command's working set: its config, its tracking store and its Kaggle client, each opened once.

The CLI builds a :class:`Session` per command and hands it to the stages; a command that runs several stages
(``kops push-kernel --submit``: publish → push → submit) reuses the same tracker and the same authenticated
Kaggle client throughout. Lookups every stage needs ("which runs are this parent's folds") are methods here.

Example:
    >>> session = Session(load_config())               # doctest: +SKIP
    >>> session.fold_runs(session.resolve("3f2a9c"))    # doctest: +SKIP
    [RunRecord(id='…', name='fold-0', …), RunRecord(id='…', name='fold-1', …)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.adapters.tracking import RunRecord, Tracker, fold_runs, open_tracker

if TYPE_CHECKING:
    from kaggleops.config import KopsConfig


class Session:
    """``cfg`` plus the tracker and Kaggle client built from it on first use (or the ones given)."""

    def __init__(self, cfg: KopsConfig, tracker: Tracker | None = None, kaggle: Kaggle | None = None) -> None:
        self.cfg = cfg
        self._tracker = tracker
        self._kaggle = kaggle

    @property
    def tracker(self) -> Tracker:
        """The tracking store of ``cfg`` (opened once)."""
        if self._tracker is None:
            self._tracker = open_tracker(self.cfg)
        return self._tracker

    @property
    def kaggle(self) -> Kaggle:
        """The Kaggle client aimed where ``cfg`` says (built once; it authenticates on its first call)."""
        if self._kaggle is None:
            self._kaggle = Kaggle.from_config(self.cfg)
        return self._kaggle

    def resolve(self, run_id: str) -> str:
        """The local id of a run id, id prefix or pulled run's origin id (see :meth:`Tracker.resolve`)."""
        return self.tracker.resolve(run_id)

    def run(self, run_id: str) -> RunRecord:
        return self.tracker.get_run(run_id)

    def fold_runs(self, parent_run_id: str, kind: str | None = None) -> list[RunRecord]:
        """The child runs of a parent, in fold order (of ``kind`` when given)."""
        return fold_runs(self.tracker, parent_run_id, kind)
