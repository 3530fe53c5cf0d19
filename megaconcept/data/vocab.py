"""Vocabulary-level tables the masking strategies read: which ids are special, which tokens start a word;
and which token ends each document in packed shards (:func:`document_separator`).

Computed once per run from the shards' tokenizer (a table over the vocabulary, never a [B, N, N] tensor):

* special   ids the tokenizer marks special (eos, pad, mask, cls/sep, added special tokens). They are never
            a random replacement (BERT's 10% random tokens are drawn from the ordinary ids only).
* word start  by the tokenizer's family, detected from its vocabulary:
    WordPiece (BERT)           a token starts a word unless it begins with `##`
    SentencePiece (T5, XLM-R)  a token starts a word when it begins with `▁`
    byte-level BPE (GPT-2, SmolLM2)  when it begins with `Ġ` (space), `Ċ` (newline) or `ĉ` (tab)
  Special tokens are words of their own (they start one, and the token after them starts another; the
  strategies apply the second rule per row). Punctuation and digits without a leading space continue the
  word before them, as the tokenizer's own offsets would ("e.g." and "2024" are one word each).

The document separator is read from the tokenizer itself (the shards' copy, a checkpoint's, an export's), so
sharding, training and the evals agree on it without other bookkeeping: the token recorded under
``SEPARATOR_KEY`` in tokenizer_config.json (a ``--separator-token`` the user named), else eos (GPT-2, SmolLM2,
RoBERTa's ``</s>``, T5), else sep (BERT's ``[SEP]``, ModernBERT).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from transformers import PreTrainedTokenizerBase

BYTE_LEVEL_STARTS = ("Ġ", "Ċ", "ĉ")
SENTENCEPIECE_START = "▁"
WORDPIECE_CONTINUATION = "##"
SEPARATOR_KEY = "document_separator"
"""tokenizer_config.json key naming the separator when it is not the tokenizer's eos / sep (kept by save_pretrained,
so it travels with the tokenizer into checkpoints and exports)."""


@dataclass(frozen=True)
class VocabularyTables:
    special: np.ndarray
    """(V,) bool: the id is a special token."""
    word_start: np.ndarray
    """(V,) bool: a token with this id starts a new word."""
    family: str
    """wordpiece | sentencepiece | byte_level: how word starts were read."""

    @property
    def ordinary_ids(self) -> np.ndarray:
        """Ids a random replacement may take: every non-special id."""
        return np.flatnonzero(~self.special)


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id the tokenizer treats as special: its named specials and its added special tokens."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special)
    return sorted(i for i in ids if i is not None and 0 <= i < len(tokenizer))


def document_separator(tokenizer: PreTrainedTokenizerBase) -> Optional[tuple[str, int]]:
    """(token, id) that ends every document in packed shards; None when the tokenizer has none (see the module
    docstring for the order). A recorded token that is no longer in the vocabulary counts as none."""
    recorded = getattr(tokenizer, "init_kwargs", {}).get(SEPARATOR_KEY)
    for token in (recorded, tokenizer.eos_token, tokenizer.sep_token):
        if token:
            index = tokenizer.convert_tokens_to_ids(str(token))
            # convert_tokens_to_ids answers unk's id (or None) for a token outside the vocabulary.
            if index is not None and tokenizer.convert_ids_to_tokens(index) == str(token):
                return str(token), int(index)
            if token == recorded:
                return None
    return None


def tokenizer_family(tokens: list[str]) -> str:
    """wordpiece / sentencepiece / byte_level, by which word-boundary marker the vocabulary uses most."""
    counts = {"wordpiece": sum(t.startswith(WORDPIECE_CONTINUATION) for t in tokens),
              "sentencepiece": sum(t.startswith(SENTENCEPIECE_START) for t in tokens),
              "byte_level": sum(t.startswith(BYTE_LEVEL_STARTS) for t in tokens)}
    return max(counts, key=lambda k: counts[k])


def vocabulary_tables(tokenizer: PreTrainedTokenizerBase, specials: list[int]) -> VocabularyTables:
    """The tables for `tokenizer`; `specials` are the special ids (the manifest's record)."""
    size = len(tokenizer)
    tokens = [t or "" for t in tokenizer.convert_ids_to_tokens(list(range(size)))]
    family = tokenizer_family(tokens)
    if family == "wordpiece":
        starts = [not t.startswith(WORDPIECE_CONTINUATION) for t in tokens]
    elif family == "sentencepiece":
        starts = [t.startswith(SENTENCEPIECE_START) for t in tokens]
    else:
        starts = [t.startswith(BYTE_LEVEL_STARTS) for t in tokens]
    special = np.zeros(size, dtype=bool)
    special[specials] = True
    return VocabularyTables(special, np.asarray(starts, dtype=bool) | special, family)
