"""The built-in Tweet Sentiment Extraction task (Kaggle 2020): extract the span carrying the sentiment.

Implements :class:`kaggleops.task.Task` (on :class:`~kaggleops.task.TaskBase`) plus the optional
:class:`~kaggleops.task.SecondStage` (a candidate reranker) and :class:`~kaggleops.task.PostProcessing`
(a neutral tweet's answer is the whole tweet).
Importing this package imports no torch/transformers/pandas; the methods import what they need.

Example:
    >>> from kaggleops.tasks import get_task
    >>> tse = get_task("tweet-sentiment-extraction")
    >>> df = tse.load_train(tse.sample_dir() / "train.csv")  # doctest: +SKIP
    >>> res = tse.train_fold(df, tse.settings({"epochs": 1}), FoldContext(0, Path("out/f0")))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops.task import (
    DataError,
    FoldContext,
    FoldResult,
    Metric,
    PredictContext,
    SettingsError,
    Submission,
    TaskBase,
    dataclass_settings,
)
from kaggleops.tasks.tse.metric import jaccard, mean_jaccard

if TYPE_CHECKING:
    import pandas as pd

    from kaggleops.tasks.tse.train import TrainSettings

__all__ = ["DataError", "TweetSentimentExtraction", "jaccard", "mean_jaccard"]

INFER_SOURCE = Path(__file__).parent / "infer.py"
ID, TARGET = "textID", "selected_text"


def table_jaccard(truth: Any, prediction: Any) -> float:
    """Mean word-level Jaccard of ``prediction`` against ``truth``, rows matched by ``textID``."""
    preds = dict(zip(prediction[ID].astype(str), prediction[TARGET].astype(str), strict=True))
    ids = truth[ID].astype(str).tolist()
    missing = [i for i in ids if i not in preds]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} id(s), e.g. {missing[:3]}")
    return mean_jaccard(truth[TARGET].astype(str).tolist(), [preds[i] for i in ids])


def _settings_of(cls: type, mapping: Mapping[str, Any], what: str) -> Any:
    try:
        return dataclass_settings(cls, mapping, what)
    except TypeError as e:
        raise SettingsError(f"bad {what} settings: {e}") from None


class TweetSentimentExtraction(TaskBase):
    """The Tweet Sentiment Extraction task: data, metric, training, inference and the reranker."""

    name = "tweet-sentiment-extraction"
    submission = Submission(ID, (TARGET,))
    metric = Metric("jaccard", higher_is_better=True, fn=table_jaccard)
    id_column = ID
    target_column = TARGET
    train_columns: tuple[str, ...] = ("textID", "text", "selected_text", "sentiment")
    test_columns: tuple[str, ...] = ("textID", "text", "sentiment")
    complete_columns: tuple[str, ...] = ("selected_text", "sentiment")  # empty cells are warned about, with the count
    kernel_requires: tuple[str, ...] = ("torch", "transformers", "tokenizers", "pandas")
    scored_columns: tuple[str, ...] = ("textID", "fold", "scored_by", "sentiment", "rank", "start", "end", "score",
                                       "rerank_pred", "target", "cand")

    def sample_dir(self) -> Path:
        """The bundled synthetic sample in the competition's format."""
        from kaggleops.resources import bundled_competition

        return bundled_competition(self.name)

    def load_train(self, path: str | Path) -> pd.DataFrame:
        """Read a train.csv; see :func:`kaggleops.tasks.tse.data.load_train`."""
        from kaggleops.tasks.tse.data import load_train

        return load_train(path)

    def load_test(self, path: str | Path) -> pd.DataFrame:
        """Read a test.csv; see :func:`kaggleops.tasks.tse.data.load_test`."""
        from kaggleops.tasks.tse.data import load_test

        return load_test(path)

    def make_folds(self, df: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
        """Add a ``fold`` column stratified by sentiment."""
        from kaggleops.tasks.tse.data import make_folds

        return make_folds(df, n_folds, seed)

    def settings(self, mapping: Mapping[str, Any] | None = None, **overrides: Any) -> TrainSettings:
        """``TrainSettings`` from the ``train:`` mapping (and/or keyword overrides); an unknown key raises
        SettingsError (a ValueError) naming the known ones.

        Example:
            >>> TweetSentimentExtraction().settings({"epochs": 1}).epochs  # doctest: +SKIP
            1
        """
        from kaggleops.tasks.tse.train import TrainSettings

        values = {**(mapping or {}), **overrides}
        if values.get("tiny") is None:
            values.pop("tiny", None)
        return _settings_of(TrainSettings, values, "task")

    def train_fold(self, train_df: pd.DataFrame, settings: TrainSettings, fold: int | FoldContext,
                   out_dir: Path | None = None, log: Callable[[dict[str, float], int], None] | None = None,
                   progress: bool | None = None, on_checkpoint: Callable[[Path, int], None] | None = None,
                   resume_from: Path | None = None) -> Any:
        """Train one fold; see :func:`kaggleops.tasks.tse.train.train_fold`.

        With a :class:`FoldContext` (the task interface) returns :class:`kaggleops.task.FoldResult`; the
        positional form (fold, out_dir, …) returns the TSE ``FoldResult`` (val_jaccard, oof_path, …).
        """
        from kaggleops.tasks.tse.train import train_fold

        if isinstance(fold, FoldContext):
            ctx = fold
            settings = dataclasses.replace(settings, seed=ctx.seed, progress=ctx.progress or False)
            res = train_fold(train_df, settings, ctx.fold, ctx.out_dir, ctx.log, on_checkpoint=ctx.checkpoint,
                             resume_from=ctx.resume_from, should_stop=ctx.should_stop)
            return FoldResult(res.model_dir, res.oof_path, res.val_jaccard, steps=res.steps,
                              best_step=res.best_step)
        if progress is not None:
            settings = dataclasses.replace(settings, progress=progress)
        assert out_dir is not None
        return train_fold(train_df, settings, fold, out_dir, log, on_checkpoint=on_checkpoint,
                          resume_from=resume_from)

    def predict(self, model_dirs: Sequence[Path] | Path, test: Any, ctx: PredictContext | None = None,
                batch_size: int = 64, device: str | None = None) -> Any:
        """The ensemble's spans for ``test`` (a table with textID, text, sentiment): a table textID, selected_text.

        Per-character start/end probabilities averaged with ``ctx.weights`` (see
        :mod:`kaggleops.tasks.tse.ensemble`); post-processing is :meth:`post_process`. With one model
        folder and a list of row dicts (no ctx), the spans of that model as a list, as ``infer.predict_spans``.
        """
        if isinstance(model_dirs, (str, Path)):
            from kaggleops.tasks.tse.infer import load_model, predict_spans

            model, tokenizer = load_model(model_dirs, device)
            return predict_spans(model, tokenizer, test, batch_size=batch_size)
        import pandas as pd

        from kaggleops.tasks.tse import ensemble

        assert ctx is not None
        rows = ensemble.rows_of(test)
        totals = ensemble.char_totals(model_dirs, rows, ctx)
        with ctx.stage("decode") if ctx.stage else _null():
            preds = ensemble.decode(rows, totals, model_dirs)
        return pd.DataFrame({ID: [r[ID] for r in rows], TARGET: preds})

    blend_columns: tuple[str, ...] = ()
    """Nothing averages: a fold run's OOF keeps its chosen span (``pred``), not the per-character probabilities
    (about a hundred numbers per tweet per run), so a blend of runs is :meth:`combine`'s weighted span choice."""

    def combine(self, tables: Sequence[Any], weights: Sequence[float]) -> Any:
        """Per tweet, the run's span with the highest weighted Jaccard to all the runs' spans (a weighted medoid: the
        span the weighted runs agree on most; with one run, its span). The kernel's ``predict`` instead averages the
        runs' per-character probabilities with ``ctx.weights``, so the blend's CV on the OOF approximates what the
        kernel submits rather than equalling it."""
        import pandas as pd

        spans = [t["pred"].fillna("").astype(str).tolist() for t in tables]
        chosen = [max(row, key=lambda s: sum(w * jaccard(s, o) for w, o in zip(weights, row, strict=True)))
                  for row in zip(*spans, strict=True)]
        return pd.DataFrame({ID: tables[0][ID].to_numpy(), TARGET: chosen})

    def post_process(self, test: Any, predictions: Any, neutral_full_text: bool = True) -> Any:
        """A neutral tweet's answer (and any empty answer) becomes the whole tweet."""
        from kaggleops.tasks.tse import ensemble

        rows = ensemble.rows_of(test)
        by_id = dict(zip(predictions[ID].astype(str), predictions[TARGET].astype(str), strict=True))
        out = predictions.copy()
        out[TARGET] = ensemble.post_process(rows, [by_id[r[ID]] for r in rows], neutral_full_text)
        return out

    def is_checkpoint(self, folder: Path) -> bool:
        """Whether ``folder`` holds a complete training checkpoint (kops resumes only from those)."""
        from kaggleops.tasks.tse.checkpoint import is_checkpoint

        return is_checkpoint(folder)

    def kernel_runtime_source(self) -> str:
        """Source text of ``infer.py`` (stdlib + torch + transformers only), for embedding in kernels."""
        return INFER_SOURCE.read_text(encoding="utf-8")

    # -- SecondStage: the candidate reranker (kops train --stage rerank) --------------------------------------

    def second_stage_settings(self, mapping: Mapping[str, Any]) -> Any:
        from kaggleops.tasks.tse.rerank import RerankSettings

        return _settings_of(RerankSettings, mapping, "rerank")

    def candidates(self, oofs: Sequence[Any], settings: Any) -> tuple[Any, Any]:
        """(rows, candidates) of the merged OOF of the base models (each a list of per-fold OOF tables)."""
        import pandas as pd

        from kaggleops.tasks.tse import rerank

        frames = [pd.concat(list(folds), ignore_index=True) if isinstance(folds, (list, tuple)) else folds
                  for folds in oofs]
        try:
            oof = rerank.merge_oof(frames)
        except ValueError as e:
            raise DataError(str(e)) from None
        return rerank.build_candidates(oof, settings.top_n, settings.neutral_full_text)

    def read_oof(self, path: Path) -> Any:
        import pandas as pd

        return pd.read_csv(path, dtype={ID: str}, keep_default_na=False)

    def train_second_stage_fold(self, candidates: Any, settings: Any, fold: int, out_dir: Path, log: Any) -> Any:
        from kaggleops.tasks.tse import rerank

        return rerank.train_rerank_fold(candidates, settings, fold, out_dir, log)

    def tune_second_stage(self, rows: Any, scored: Any, settings: Any) -> Any:
        from kaggleops.tasks.tse import rerank

        return rerank.tune(rows, scored, settings)

    def finish_second_stage_fold(self, model_dir: Path, settings: Any, tuned: Any, rows: Any, scored: Any,
                                 fold: int) -> dict[str, float]:
        """Save the tuned w/n in the fold's model folder; its OOF metrics."""
        from kaggleops.tasks.tse import rerank

        w, n = float(tuned.options["w"]), int(tuned.options["n"])
        rerank.write_rerank_config(model_dir, settings, w, n)
        return rerank.fold_metrics(rows, scored, w, n, fold)

    def second_stage_summary(self, metrics: dict[str, float]) -> str:
        m = metrics
        return (f"OOF Jaccard base {m['oof_jaccard_base']:.4f} → reranked {m['oof_jaccard_reranked']:.4f} "
                f"(lift {m['oof_jaccard_lift']:+.4f}; w/n tuned per held-out fold: "
                f"{m['oof_jaccard_reranked_nested']:.4f})")

    def predict_second_stage(self, model_dirs: Sequence[Path], reranker_dirs: Sequence[Path], test: Any,
                             ctx: PredictContext) -> Any:
        """The base ensemble's top-``n`` spans rescored by the reranker folds (w/n from ``ctx.options`` or the
        folds' ``kops_rerank.json``)."""
        import pandas as pd

        from kaggleops.tasks.tse import ensemble

        rows = ensemble.rows_of(test)
        totals = ensemble.char_totals(model_dirs, rows, ctx)
        preds = ensemble.rerank(rows, totals, reranker_dirs, ctx, ensemble.post_processing(model_dirs))
        return pd.DataFrame({ID: [r[ID] for r in rows], TARGET: preds})


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()
