"""The candidate reranker (`kops train --stage rerank`): real MLflow SQLite store, real tiny models, real CLI.

The base runs here are made the way `kops train` makes them (a `kops.kind=kfold` parent, fold children with
`kops.fold` and `mlflow.parentRunId`, each logging `oof/oof.csv`), with synthetic candidates so that the
test does not depend on the base model's training.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config
from kaggleops.schema import TAG_PARENT
from kaggleops.tasks import get_task
from kaggleops.tasks.tse import rerank, rerank_infer
from kaggleops.tasks.tse.data import load_train, make_folds
from kaggleops.tasks.tse.metric import jaccard
from kaggleops.tasks.tse.modeling import char_span

from harness import kops

TSE = get_task("tweet-sentiment-extraction")
N_ROWS, N_FOLDS = 150, 3
RERANK_YAML = """\
competition: tweet-sentiment-extraction
owner: alice
tracking_uri: sqlite:///mlflow.db
rerank:
  top_n: 4
  n_grid: [2, 4]
  epochs: 1
  batch_size: 16
  max_steps: 5
  max_len: 96
  device: cpu
"""


def _synthetic_candidates(text: str, truth: str, rng: random.Random) -> list[dict[str, Any]]:
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)] or [(0, len(text))]
    spans = {char_span(text, truth)}
    for _ in range(8):
        i = rng.randrange(len(words))
        j = min(len(words) - 1, i + rng.randrange(3))
        spans.add((words[i][0], words[j][1]))
    scores = [rng.random() for _ in spans]
    total = sum(scores)
    cands = [{"start": a, "end": b, "text": text[a:b], "score": s / total}
             for (a, b), s in zip(spans, scores, strict=True)]
    return sorted(cands, key=lambda c: -c["score"])


def synthetic_oof(n_rows: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    """Sample rows with base folds and random candidate lists (the truth always among them, not always first)."""
    rng = random.Random(seed)
    df = make_folds(load_train(TSE.sample_dir() / "train.csv").head(n_rows), N_FOLDS, 42)
    df["candidates"] = [_synthetic_candidates(t, s, rng) for t, s in zip(df["text"], df["selected_text"], strict=True)]
    df["pred"] = [c[0]["text"] for c in df["candidates"]]
    df["jaccard"] = [jaccard(t, p) for t, p in zip(df["selected_text"], df["pred"], strict=True)]
    df["candidates"] = [json.dumps(c) for c in df["candidates"]]
    return df


def log_base_kfold(tracker: Tracker, oof: pd.DataFrame, tmp: Path) -> tuple[str, dict[int, str]]:
    """A base k-fold parent with one fold run per fold, each logging `oof/oof.csv` (no fold column)."""
    parent = tracker.start_run("kfold-tiny", {"folds": list(range(N_FOLDS))},
                               {"kops.kind": "kfold", "kops.task": TSE.name})
    folds = {}
    for fold in range(N_FOLDS):
        run_id = tracker.start_run(f"fold-{fold}", {"fold": fold}, {"kops.fold": str(fold), "kops.kind": "fold"},
                                   parent_run_id=parent)
        path = tmp / f"f{fold}" / "oof.csv"
        path.parent.mkdir(parents=True)
        oof[oof["fold"] == fold].drop(columns=["fold"]).to_csv(path, index=False)
        tracker.log_artifact(run_id, path, "oof")
        tracker.end_run(run_id)
        folds[fold] = run_id
    tracker.end_run(parent)
    return parent, folds


@pytest.fixture(scope="module")
def reranked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Base runs in a real SQLite store, then one real `kops train --stage rerank --from PARENT --json`."""
    root = tmp_path_factory.mktemp("rerank")
    (root / "kops.yaml").write_text(RERANK_YAML)
    cfg = load_config(root / "kops.yaml")
    tracker = Tracker(cfg)
    oof = synthetic_oof()
    parent, base_folds = log_base_kfold(tracker, oof, root / "oof")
    out = kops("train", "--stage", "rerank", "--from", parent, "--json", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"root": root, "cfg": cfg, "tracker": tracker, "oof": oof, "base_parent": parent,
            "base_folds": base_folds, "result": json.loads(out.stdout)}


def _download(tracker: Tracker, run_id: str, path: str, dst: Path) -> Path:
    return tracker.download(run_id, path, dst / run_id)


@pytest.mark.slow
def test_no_oof_candidate_scored_by_a_fold_that_trained_on_its_row(reranked: dict[str, Any], tmp_path: Path) -> None:
    """From what MLflow recorded: each scored candidate's scorer fold never trained on that row."""
    tracker, result = reranked["tracker"], reranked["result"]
    scored = pd.read_csv(_download(tracker, result["run_id"], "rerank/oof_scored.csv", tmp_path), dtype={"textID": str})
    trained_on: dict[int, set[str]] = {}
    for fold_run in result["runs"]:
        run = tracker.get_run(fold_run["run_id"])
        recorded = json.loads(_download(tracker, run.id, "rerank/train_ids.json", tmp_path).read_text())
        trained_on[int(run.tags["kops.fold"])] = set(recorded["train_ids"])
    base_fold_of = {}
    for fold, run_id in reranked["base_folds"].items():
        ids = pd.read_csv(_download(tracker, run_id, "oof/oof.csv", tmp_path), dtype={"textID": str})["textID"]
        base_fold_of.update(dict.fromkeys(ids, fold))
    assert len(scored) > 0 and set(trained_on) == set(range(N_FOLDS))
    leaks = [(t, f) for t, f in zip(scored["textID"], scored["scored_by"], strict=True) if t in trained_on[int(f)]]
    assert leaks == []
    assert all(base_fold_of[t] == f for t, f in zip(scored["textID"], scored["scored_by"], strict=True))
    for fold, ids in trained_on.items():  # trained only on rows that other base folds validated
        assert ids and all(base_fold_of[t] != fold for t in ids)
    non_neutral = reranked["oof"][reranked["oof"]["sentiment"] != "neutral"]
    assert set(scored["textID"]) == set(non_neutral["textID"])  # every reranked row scored...
    assert not scored.duplicated(["textID", "rank"]).any()  # ...each candidate exactly once
    assert scored.groupby("textID")["rank"].max().max() == 3  # top_n = 4


@pytest.mark.slow
def test_reranker_runs_are_linked_and_carry_metrics(reranked: dict[str, Any]) -> None:
    tracker, result = reranked["tracker"], reranked["result"]
    parent = tracker.get_run(result["run_id"])
    tags, metrics = parent.tags, parent.metrics
    assert tags["kops.kind"] == "rerank" and tags["kops.rerank.from"] == reranked["base_parent"]
    assert set(tags["kops.rerank.base_runs"].split(",")) == set(reranked["base_folds"].values())
    for key in ("oof_jaccard_base", "oof_jaccard_reranked", "oof_jaccard_lift", "oof_jaccard_reranked_nested",
                "best_w", "best_n", "oof_jaccard_base_positive", "oof_jaccard_reranked_negative"):
        assert key in metrics, key
    assert metrics["oof_jaccard_reranked"] >= metrics["oof_jaccard_base"] - 1e-12  # w grid holds the base choice
    assert metrics["best_n"] in (2, 4) and result["options"]["n"] == metrics["best_n"]
    assert json.loads(tags["kops.rerank.options"]) == result["options"]  # the task's choices, as it returned them
    expected = reranked["oof"]["jaccard"].where(reranked["oof"]["sentiment"] != "neutral", 1.0)
    assert metrics["oof_jaccard_base"] == pytest.approx(float(expected.mean()), abs=0.02)  # neutral rows: whole text
    assert parent.status == "FINISHED"
    for fold_run in result["runs"]:
        run = tracker.get_run(fold_run["run_id"])
        assert run.tags[TAG_PARENT] == result["run_id"] and run.status == "FINISHED"
        assert run.tags["kops.rerank.base_runs"] == reranked["base_folds"][int(run.tags["kops.fold"])]
        assert "fold_jaccard_reranked" in run.metrics and "train_loss" in run.metrics
        assert json.loads(run.tags["kops.rerank.options"]) == result["options"]
        assert {"model/config.json", "model/kops_rerank.json"} <= set(tracker.list_artifacts(run.id, "model"))


@pytest.mark.slow
def test_kernel_function_agrees_with_recorded_oof_scores(reranked: dict[str, Any], tmp_path: Path) -> None:
    """`rerank_candidates` (the kernel's entry) on fold 0's model picks what the recorded OOF predictions pick."""
    tracker, result = reranked["tracker"], reranked["result"]
    fold0 = next(r for r in result["runs"] if r["fold"] == 0)
    model_dir = _download(tracker, fold0["run_id"], "model", tmp_path)  # the folder `kops publish` uploads
    cfg = rerank_infer.read_rerank_config(model_dir)
    assert (cfg["w"], cfg["n"]) == (result["options"]["w"], result["options"]["n"])
    scored = pd.read_csv(_download(tracker, result["run_id"], "rerank/oof_scored.csv", tmp_path), dtype={"textID": str})
    oof = reranked["oof"][reranked["oof"]["fold"] == 0]
    rows = oof[["text", "sentiment"]].to_dict("records")
    cands = [json.loads(c)[:4] for c in oof["candidates"]]
    answers = rerank_infer.rerank_candidates([model_dir], rows, cands, device="cpu")
    for row, tid, cand, answer in zip(rows, oof["textID"], cands, answers, strict=True):
        if row["sentiment"] == "neutral":
            assert answer == row["text"]
            continue
        mine = scored[scored["textID"] == tid].sort_values("rank")
        pick = rerank_infer.choose(cand, mine["rerank_pred"].tolist(), cfg["w"], cfg["n"])
        assert answer == cand[pick]["text"]


def test_tune_prefers_a_useful_reranker_and_falls_back_to_the_base() -> None:
    oof = rerank.merge_oof([synthetic_oof(90, seed=1)])
    rows, cands = rerank.build_candidates(oof, top_n=5)
    settings = rerank.RerankSettings(top_n=5, n_grid=(2, 5))
    perfect = rerank.tune(rows, cands.assign(rerank_pred=cands["target"]), settings)
    assert perfect.metrics["oof_jaccard_reranked"] > perfect.metrics["oof_jaccard_base"]
    oracle = rows.set_index("textID")["base_jaccard"].copy()
    best_target = cands.groupby("textID")["target"].max()
    oracle.loc[best_target.index] = best_target.values
    assert perfect.options["n"] == 5 and perfect.metrics["oof_jaccard_reranked"] == pytest.approx(oracle.mean())
    useless = rerank.tune(rows, cands.assign(rerank_pred=0.5), settings)
    assert useless.metrics["oof_jaccard_reranked"] == pytest.approx(useless.metrics["oof_jaccard_base"])
    assert useless.metrics["oof_jaccard_lift"] == pytest.approx(0.0)


def test_merge_oof_averages_models_and_rejects_different_folds() -> None:
    a, b = synthetic_oof(30, seed=2), synthetic_oof(30, seed=3)
    merged = rerank.merge_oof([a, b])
    first = merged.iloc[0]
    spans = {(c["start"], c["end"]): c["score"] for c in first["candidates"]}
    for raw, weight in ((a.iloc[0]["candidates"], 0.5), (b.iloc[0]["candidates"], 0.5)):
        for c in json.loads(raw):
            assert spans[(c["start"], c["end"])] >= c["score"] * weight - 1e-12
    assert [c["score"] for c in first["candidates"]] == sorted(spans.values(), reverse=True)
    b2 = b.assign(fold=(b["fold"] + 1) % N_FOLDS)
    with pytest.raises(rerank.DataError, match="disagree on the rows or folds"):
        rerank.merge_oof([a, b2])


def test_top_k_char_spans_are_the_best_token_spans() -> None:
    """The one candidate generator (character level, used for the OOF and in the kernel) lists exactly the best
    token spans of a real tokenization: softmaxed start × end over the tweet's tokens, start <= end."""
    import torch

    from kaggleops.tasks.tse import infer
    from kaggleops.tasks.tse.modeling import build_tokenizer

    texts = load_train(TSE.sample_dir() / "train.csv")["text"].head(200).tolist()
    tok = build_tokenizer(texts, Path(os.environ["TMPDIR"]) / "tok", vocab_size=800)
    rows = [{"text": " so happy  today!! :)", "sentiment": "positive"}, {"text": "I hate mondays", "sentiment": "x"}]
    for row, feat in zip(rows, infer.encode_rows(tok, rows, 64), strict=True):
        torch.manual_seed(len(row["text"]))
        s, e = torch.randn(len(feat)), torch.randn(len(feat))
        tokens = feat.span_tokens()
        sp, ep = torch.softmax(s[tokens], 0), torch.softmax(e[tokens], 0)
        pairs = sorted(((float(sp[i] * ep[j]), feat.offsets[tokens[i]][0], feat.offsets[tokens[j]][1])
                        for i in range(len(tokens)) for j in range(i, len(tokens))), reverse=True)[:6]
        ps, pe = infer.batch_char_probs([feat], s[None, :], e[None, :], len(row["text"]))
        chars = rerank_infer.top_k_char_spans(row["text"], ps[0], pe[0], k=6)
        assert [(c["start"], c["end"], c["text"]) for c in chars] == [(a, b, row["text"][a:b]) for _, a, b in pairs]
        assert [c["score"] for c in chars] == pytest.approx([p for p, _, _ in pairs], rel=1e-5)


@pytest.mark.slow
def test_bad_rerank_input_says_what_to_do(reranked: dict[str, Any]) -> None:
    from kaggleops.errors import ConfigError, MissingArtifact
    from kaggleops.stages.rerank import train_stage

    root, cfg, fold_run = reranked["root"], reranked["cfg"], reranked["result"]["runs"][0]["run_id"]
    out = kops("train", "--stage", "rerank", "--from", reranked["result"]["run_id"], cwd=root)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"kops: error: Run {reranked['result']['run_id']} is neither a k-fold parent nor a "
                                  "fold run of `kops train`. Pass the k-fold parent run id that `kops train` printed.")
    with pytest.raises(ConfigError, match="--from KFOLD_RUN_ID"):
        train_stage(cfg, "rerank", [])
    with pytest.raises(ConfigError, match="Unknown training stage 'third'"):
        train_stage(cfg, "third", [fold_run])
    with pytest.raises(MissingArtifact, match="has no `oof/oof.csv` artifact"):  # a reranker fold run has no OOF
        train_stage(cfg, "rerank", [fold_run])
