"""Generate the bundled synthetic Tweet Sentiment Extraction sample (the project's own data).

Deterministic: the same seed always writes byte-identical files. Run it with::

    python datasets/tweet-sentiment-extraction/make_sample.py            # rewrites the files beside it
    python datasets/tweet-sentiment-extraction/make_sample.py --out DIR  # somewhere else

The texts imitate the competition's quirks (leading spaces, double spaces, mixed case, URLs,
@usernames, trailing punctuation); sentiment proportions follow the real data (~40/31/29 %).
Neutral rows select the whole tweet; positive/negative rows select a short phrase inside it.
"""

from __future__ import annotations

import argparse
import csv
import random
from dataclasses import dataclass
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
N_TRAIN = 800
N_TEST = 200
SEED = 20200317
SENTIMENT_WEIGHTS = {"neutral": 0.40, "positive": 0.31, "negative": 0.29}

POSITIVE = [
    "so happy", "love this", "love you", "great day", "awesome", "thanks so much", "best day ever",
    "can't wait", "so excited", "lovely", "good morning", "had fun", "so much fun", "amazing",
    "beautiful", "yay", "happy birthday", "nice", "feeling good", "proud of you", "cool",
    "glad", "enjoy", "wonderful", "sweet", "the best", "good luck", "thank you", "so cute", "perfect",
]
NEGATIVE = [
    "hate this", "so sad", "miss you", "sucks", "so tired", "feel sick", "bored", "not good",
    "worst day", "ugh", "hurts", "sorry", "can't sleep", "so stressed", "annoying", "headache",
    "i'm broke", "lonely", "failed", "terrible", "awful", "i hate mondays", "so upset", "crying",
    "missed it", "lost my phone", "boring", "stupid", "poor thing", "not fun",
]
OPENERS = [
    "just got home from work", "going to the store later", "watching tv with my sister",
    "finally friday", "at the airport", "on my way to school", "cleaning my room", "back from the gym",
    "waiting for the bus", "studying for finals", "listening to the radio", "at my moms house",
    "having lunch", "up early today", "working on my project", "about to go to bed",
    "just woke up", "in the car", "making dinner", "at the mall with friends",
]
CLOSERS = [
    "see you tomorrow", "what are you doing tonight", "going to bed now", "lol", "haha",
    "anyway", "back to work", "talk later", "i guess", "again", "today", "right now",
    "this weekend", "at all", "for real", "tbh", "omg", "oh well", "brb", "how about you",
]
NEUTRAL_EXTRA = [
    "anyone know what time the game starts?", "did you see the new episode", "heading to the beach tomorrow",
    "check it out", "new blog post up", "what time is it there", "reading a book",
    "need to buy milk", "the meeting is at 3", "it's raining here", "who's going to the show",
    "my phone is charging", "ok", "where are you", "downloading the update",
]
USERS = ["@jenny_b", "@mike22", "@sarahlovesyou", "@tommyk", "@the_real_dan", "@lizzy", "@bobby99"]
URLS = ["http://bit.ly/3xQz", "http://twitpic.com/4ab1c", "http://tinyurl.com/pq9k", "www.myblog.com"]
PUNCT = ["", "", "", "!", "!!", ".", "...", " :)", "?", " :("]


@dataclass(frozen=True)
class Row:
    """One generated tweet: its text, the selected span and the sentiment."""

    text: str
    selected_text: str
    sentiment: str


def _decorate(rng: random.Random, phrase: str, sentiment: str) -> str:
    """Vary case and attach punctuation the way tweets do."""
    r = rng.random()
    if r < 0.1:
        phrase = phrase.upper()
    elif r < 0.3:
        phrase = phrase[:1].upper() + phrase[1:]
    if sentiment == "positive" and rng.random() < 0.3:
        return phrase + rng.choice(["!", "!!", " :)", "!!!"])
    if sentiment == "negative" and rng.random() < 0.3:
        return phrase + rng.choice(["!", " :(", "...", " :'("])
    return phrase


def _context(rng: random.Random, words: list[str]) -> str:
    """A filler clause, sometimes with an @username or URL."""
    clause = rng.choice(words)
    if rng.random() < 0.15:
        clause = f"{rng.choice(USERS)} {clause}"
    if rng.random() < 0.08:
        clause = f"{clause} {rng.choice(URLS)}"
    return clause


def _whitespace(rng: random.Random, parts: list[str]) -> str:
    """Join parts with the competition's odd whitespace: leading and double spaces."""
    glue = [("  " if rng.random() < 0.1 else " ") for _ in parts[1:]]
    text = parts[0] + "".join(g + p for g, p in zip(glue, parts[1:], strict=True))
    if rng.random() < 0.4:
        text = " " + text
    return text


def _neutral(rng: random.Random) -> Row:
    parts = [_context(rng, OPENERS + NEUTRAL_EXTRA)]
    if rng.random() < 0.6:
        parts.append(_context(rng, CLOSERS + NEUTRAL_EXTRA) + rng.choice(PUNCT))
    if rng.random() < 0.2:
        parts[0] = parts[0][:1].upper() + parts[0][1:]
    text = _whitespace(rng, parts)
    return Row(text, text.strip(), "neutral")


def _polar(rng: random.Random, sentiment: str) -> Row:
    phrases = POSITIVE if sentiment == "positive" else NEGATIVE
    selected = _decorate(rng, rng.choice(phrases), sentiment)
    if rng.random() < 0.25:
        selected = rng.choice(["so ", "really ", "sooo ", "just "]) + selected
    parts: list[str] = []
    if rng.random() < 0.85:
        parts.append(_context(rng, OPENERS) + rng.choice(["", ",", "...", " -"]))
    parts.append(selected)
    if rng.random() < 0.7:
        parts.append(_context(rng, CLOSERS) + rng.choice(PUNCT))
    if rng.random() < 0.2:
        parts.append(_context(rng, NEUTRAL_EXTRA))
    text = _whitespace(rng, parts)
    if len(parts) == 1 or rng.random() < 0.05:
        selected = text.strip()
    return Row(text, selected, sentiment)


def generate(n: int, rng: random.Random) -> list[Row]:
    """Generate ``n`` rows with sentiments drawn by the real data's proportions."""
    names, weights = list(SENTIMENT_WEIGHTS), list(SENTIMENT_WEIGHTS.values())
    rows = []
    for _ in range(n):
        sentiment = rng.choices(names, weights)[0]
        rows.append(_neutral(rng) if sentiment == "neutral" else _polar(rng, sentiment))
    return rows


def _text_ids(n: int, rng: random.Random) -> list[str]:
    ids: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        tid = f"{rng.getrandbits(40):010x}"
        if tid not in ids:
            ids.add(tid)
            out.append(tid)
    return out


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")  # same quoting as pandas' to_csv default
        writer.writerow(header)
        writer.writerows(rows)


def write_sample(out_dir: Path = SAMPLE_DIR, seed: int = SEED) -> None:
    """Write train.csv, test.csv, sample_submission.csv and solution.csv into ``out_dir``.

    Example:
        >>> write_sample(Path("/tmp/tse-sample"))  # doctest: +SKIP
    """
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = generate(N_TRAIN + N_TEST, rng)
    ids = _text_ids(len(rows), rng)
    train, test = rows[:N_TRAIN], rows[N_TRAIN:]
    train_ids, test_ids = ids[:N_TRAIN], ids[N_TRAIN:]
    _write(out_dir / "train.csv", ["textID", "text", "selected_text", "sentiment"],
           [[i, r.text, r.selected_text, r.sentiment] for i, r in zip(train_ids, train, strict=True)])
    _write(out_dir / "test.csv", ["textID", "text", "sentiment"],
           [[i, r.text, r.sentiment] for i, r in zip(test_ids, test, strict=True)])
    _write(out_dir / "sample_submission.csv", ["textID", "selected_text"], [[i, ""] for i in test_ids])
    _write(out_dir / "solution.csv", ["textID", "selected_text"],
           [[i, r.selected_text] for i, r in zip(test_ids, test, strict=True)])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python datasets/tweet-sentiment-extraction/make_sample.py [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    write_sample(args.out, args.seed)
    print(f"wrote {N_TRAIN} train / {N_TEST} test rows to {args.out}")


if __name__ == "__main__":
    main()
