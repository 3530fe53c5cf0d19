"""Small tokenizers of the three families encoders pretrain with, trained on the tiny corpus with `tokenizers`
and saved as transformers folders (no network): byte-level BPE is conftest's `tiny_tokenizer_dir`; here are

    wordpiece      BERT-style: lowercasing normalizer, [CLS] x [SEP] template, [PAD] [UNK] [CLS] [SEP] [MASK],
                   no eos (documents are separated by [SEP])
    sentencepiece  T5/XLM-R-style Unigram with Metaspace (`▁` word starts), x </s> template, </s> is eos, no mask
                   token (the loader adds <mask>)

Imported by tests as `tokenizer_families` (tests/ is on sys.path through its rootless conftest.py).
"""
from __future__ import annotations

from pathlib import Path

FAMILIES = ("byte_level", "wordpiece", "sentencepiece")
VOCAB = 1000


def _lines(corpus: Path, limit: int = 1000) -> list[str]:
    return corpus.read_text(encoding="utf-8").splitlines()[:limit]


def build_wordpiece(corpus: Path, out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(_lines(corpus), trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials,
                                                                            show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                      pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    wrapped.save_pretrained(str(out))
    return out


def build_sentencepiece(corpus: Path, out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    # Unigram training is the slow one (~10 s on 1000 paragraphs); 300 short-pieced ones take ~1.5 s.
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False, max_piece_length=8)
    tokenizer.train_from_iterator(_lines(corpus, 300), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>")
    wrapped.save_pretrained(str(out))
    return out


SEPARATOR = {"byte_level": "<|endoftext|>", "wordpiece": "[SEP]", "sentencepiece": "</s>"}
"""The token each family's shards end documents with: eos, else sep."""


def build_all(corpus: Path, byte_level_dir: Path, out: Path) -> dict[str, Path]:
    """family -> saved tokenizer folder (the byte-level one is conftest's tiny BPE)."""
    return {"byte_level": byte_level_dir, "wordpiece": build_wordpiece(corpus, out / "wordpiece"),
            "sentencepiece": build_sentencepiece(corpus, out / "sentencepiece")}
