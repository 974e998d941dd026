"""Tokenizer and model construction, and the character-span → token-label mapping for training.

The tiny model is a standard ``RobertaForQuestionAnswering`` built from a config, with a byte-level
BPE tokenizer trained on the fly: the saved folder loads anywhere with only torch + transformers
(``AutoModelForQuestionAnswering`` / ``AutoTokenizer.from_pretrained(folder)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # roberta's ids 0..4
TINY_MAX_TOKENS = 128
#: roberta positions start after the padding index (1), so 128 tokens need 130 position embeddings.
TINY_MAX_POSITIONS = TINY_MAX_TOKENS + 2
TINY = "tiny"
_PREFIX_SPACE_MODELS = ("roberta", "xlm-roberta", "camembert", "bart", "longformer", "gpt2", "deberta")
_SENTIMENT_WORDS = ["neutral", "positive", "negative"] * 50


def _train_bpe(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + _SENTIMENT_WORDS, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True,
        add_prefix_space=True,
    )
    return tok


def _portable_config(out_dir: Path) -> None:
    """Name the generic fast class: transformers 5.x writes ``TokenizersBackend``, unknown to 4.x."""
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 2000) -> Any:
    """Train a roberta-style byte-level BPE on ``texts``, save it to ``out_dir`` and return it reloaded.

    The result is a transformers fast tokenizer (offsets, ``sequence_ids()``) with the special tokens
    ``<s> <pad> </s> <unk> <mask>`` and the pair template ``<s> A </s></s> B </s>``; it round-trips
    through ``save_pretrained`` / ``AutoTokenizer.from_pretrained(out_dir)``.

    Example:
        >>> tok = build_tokenizer(df["text"].tolist(), "work/tokenizer")  # doctest: +SKIP
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(texts, vocab_size), bos_token="<s>", eos_token="</s>",
        sep_token="</s>", cls_token="<s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_max_length=TINY_MAX_TOKENS, model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(str(out_dir))
    _portable_config(out_dir)
    return AutoTokenizer.from_pretrained(str(out_dir))


def save_tokenizer(tokenizer: Any, out_dir: str | Path) -> None:
    """``save_pretrained`` that keeps tiny tokenizers loadable by transformers 4.x as well."""
    tokenizer.save_pretrained(str(out_dir))
    if type(tokenizer).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        _portable_config(Path(out_dir))


def load_pretrained_tokenizer(name_or_path: str) -> Any:
    """``AutoTokenizer.from_pretrained``, with ``add_prefix_space=True`` for byte-level BPE models."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        model_type = AutoConfig.from_pretrained(name_or_path).model_type
    except (OSError, ValueError):
        model_type = ""
    if model_type in _PREFIX_SPACE_MODELS:
        return AutoTokenizer.from_pretrained(name_or_path, add_prefix_space=True)
    return AutoTokenizer.from_pretrained(name_or_path)


def load_tokenizer(name_or_path: str) -> Any:
    """A tokenizer from a name or folder; a bare byte-level BPE folder (``vocab.json`` + ``merges.txt``, e.g.
    ``../shared/data/roberta-base-tokenizer/``) loads as ``RobertaTokenizerFast(add_prefix_space=True)``."""
    from transformers import RobertaTokenizerFast

    folder = Path(name_or_path)
    bare = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if bare and not (folder / "tokenizer_config.json").is_file() and not (folder / "tokenizer.json").is_file():
        return RobertaTokenizerFast.from_pretrained(str(folder), add_prefix_space=True)
    return load_pretrained_tokenizer(name_or_path)


def build_tiny_model(tokenizer: Any, hidden: int = 128, layers: int = 2, heads: int = 2,
                     intermediate: int = 256, dropout: float = 0.1, seed: int = 42, head: str = "span") -> Any:
    """A small RoBERTa from a config, sized to ``tokenizer``'s vocabulary: ``head="span"`` a
    ``RobertaForQuestionAnswering`` (the span model), ``"score"`` a one-output ``RobertaForSequenceClassification``
    (the reranker)."""
    import torch
    from transformers import RobertaConfig, RobertaForQuestionAnswering, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=TINY_MAX_POSITIONS, type_vocab_size=1,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=2 if head == "span" else 1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return RobertaForQuestionAnswering(config) if head == "span" else RobertaForSequenceClassification(config)


def char_span(text: str, selected: str) -> tuple[int, int]:
    """Character span of ``selected`` in ``text``: exact find, then case-insensitive, else whole text."""
    sel = selected.strip()
    if sel:
        at = text.find(sel)
        if at < 0:
            at = text.lower().find(sel.lower())
        if at >= 0:
            return at, at + len(sel)
    return 0, len(text)


def token_span(offsets: list[tuple[int, int]], tweet: list[int], span: tuple[int, int]) -> tuple[int, int]:
    """First and last tweet token whose (non-empty) character range overlaps ``span``.

    Falls back to the whole tweet when no token overlaps, and to position 0 (``<s>``) for an empty tweet.
    """
    a, b = span
    hits = [j for j in tweet if offsets[j][1] > offsets[j][0] and offsets[j][0] < b and offsets[j][1] > a]
    if hits:
        return hits[0], hits[-1]
    return (tweet[0], tweet[-1]) if tweet else (0, 0)
