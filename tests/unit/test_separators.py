"""Document separators: shards end documents with the tokenizer's eos, else its sep, else a named
--separator-token; the manifest and the saved tokenizer record which; views, masking tables and the evals' pair
encoding read it. The same corpus is sharded with a byte-level BPE, a WordPiece and a SentencePiece tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data_prep import shard
from megaconcept.config.schema import MaskingSection
from megaconcept.data.shards import ShardError, read_manifest, read_shard
from megaconcept.data.tokenizer import load_tokenizer
from megaconcept.data.vocab import SEPARATOR_KEY, document_separator, special_ids, vocabulary_tables
from megaconcept.objectives.views import DocumentViews
from megaconcept.train.builders import build_collator, vocabulary_for
from tokenizer_families import FAMILIES, SEPARATOR, build_all

SEQ_LEN = 32


@pytest.fixture(scope="module")
def families(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def docs(tiny_corpus: Path) -> list[str]:
    return tiny_corpus.read_text(encoding="utf-8").splitlines()[:60]


@pytest.fixture()
def docs_file(docs: list[str], tmp_path: Path) -> Path:
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


def _shard(corpus: Path, tokenizer: Path, out: Path, *extra: str) -> int:
    return shard.main(["--input", str(corpus), "--tokenizer", str(tokenizer), "--seq-len", str(SEQ_LEN),
                       "--samples-per-shard", "16", "--out", str(out), "--workers", "1", *extra])


def _stream(out: Path) -> list[int]:
    manifest = read_manifest(str(out))
    rows = [read_shard(manifest.shard_path(i), s.sha256, manifest.seq_len, s.samples)
            for i, s in enumerate(manifest.shards)]
    return np.concatenate(rows).reshape(-1).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_documents_end_with_the_family_separator_and_no_cls(family: str, families: dict[str, Path],
                                                            docs: list[str], docs_file: Path, tmp_path: Path) -> None:
    assert _shard(docs_file, families[family], tmp_path / "out") == 0
    tokenizer = load_tokenizer(str(families[family]))
    sep = tokenizer.convert_tokens_to_ids(SEPARATOR[family])
    manifest = read_manifest(str(tmp_path / "out"))
    assert (manifest.separator_token, manifest.separator_token_id, manifest.separator_id) == (SEPARATOR[family], sep, sep)
    assert sep in manifest.special_token_ids and manifest.add_special_tokens is False
    expected = [i for d in docs for i in tokenizer(d, add_special_tokens=False)["input_ids"] + [sep]]
    stream = _stream(tmp_path / "out")
    assert stream == expected[:len(stream)]
    assert tokenizer.cls_token_id is None or tokenizer.cls_token_id not in stream  # no [CLS] unless asked
    # The shards' tokenizer (what checkpoints and exports copy) names the same separator.
    assert document_separator(AutoTokenizer.from_pretrained(manifest.tokenizer_dir)) == (SEPARATOR[family], sep)


@pytest.mark.parametrize("family", FAMILIES)
def test_add_special_tokens_applies_the_template_and_one_separator(family: str, families: dict[str, Path],
                                                                   docs: list[str], docs_file: Path,
                                                                   tmp_path: Path) -> None:
    assert _shard(docs_file, families[family], tmp_path / "out", "--add-special-tokens") == 0
    tokenizer = load_tokenizer(str(families[family]))
    sep = tokenizer.convert_tokens_to_ids(SEPARATOR[family])
    expected = []
    for doc in docs:
        ids = tokenizer(doc)["input_ids"]  # [CLS] x [SEP] / x </s> / x (byte-level has no template)
        expected += ids if ids[-1] == sep else ids + [sep]
    stream = _stream(tmp_path / "out")
    assert stream == expected[:len(stream)] and read_manifest(str(tmp_path / "out")).add_special_tokens
    if family == "wordpiece":  # every document opens with [CLS] and ends with a single [SEP]
        assert stream[0] == tokenizer.cls_token_id and [sep, sep] not in [stream[i:i + 2] for i in range(len(stream))]


def _bare_bpe(tiny_tokenizer_dir: Path, out: Path) -> Path:
    """The tiny BPE with no special-token roles at all: no eos, no sep."""
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
                            ).save_pretrained(str(out))
    return out


def test_a_named_separator_is_added_recorded_and_read_back(tiny_tokenizer_dir: Path, docs: list[str],
                                                           docs_file: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    bare = _bare_bpe(tiny_tokenizer_dir, tmp_path / "bare")
    assert _shard(docs_file, bare, tmp_path / "refused") == 2
    err = capsys.readouterr().err
    assert "neither an eos nor a sep token" in err and "--separator-token" in err and err.count("\n") == 1
    assert _shard(docs_file, bare, tmp_path / "out", "--separator-token", "<doc>") == 0
    manifest = read_manifest(str(tmp_path / "out"))
    # <mask> reuses its vocabulary entry (id 1); <doc> is new, so it takes the next id.
    assert (manifest.separator_token, manifest.separator_token_id, manifest.vocab_size) == ("<doc>", 1000, 1001)
    assert manifest.eos_token_id is None and 1000 in manifest.special_token_ids
    config = json.loads((tmp_path / "out" / "tokenizer" / "tokenizer_config.json").read_text())
    assert config[SEPARATOR_KEY] == "<doc>"
    reloaded = AutoTokenizer.from_pretrained(manifest.tokenizer_dir)
    assert document_separator(reloaded) == ("<doc>", 1000) and reloaded.pad_token == "<doc>"
    tokenizer = load_tokenizer(str(tmp_path / "out" / "tokenizer"))  # idempotent on the saved copy
    expected = [i for d in docs for i in tokenizer(d, add_special_tokens=False)["input_ids"] + [1000]]
    stream = _stream(tmp_path / "out")
    assert stream == expected[:len(stream)] and 0 not in stream


def test_a_named_separator_overrides_eos(tiny_tokenizer_dir: Path, docs_file: Path, tmp_path: Path) -> None:
    assert _shard(docs_file, tiny_tokenizer_dir, tmp_path / "out", "--separator-token", "<sep>") == 0
    manifest = read_manifest(str(tmp_path / "out"))
    assert (manifest.eos_token_id, manifest.separator_id, manifest.separator_token) == (0, 1000, "<sep>")
    stream = _stream(tmp_path / "out")
    assert 1000 in stream and 0 not in stream


def test_naming_the_eos_changes_nothing(tiny_tokenizer_dir: Path, docs_file: Path, tmp_path: Path) -> None:
    assert _shard(docs_file, tiny_tokenizer_dir, tmp_path / "plain") == 0
    assert _shard(docs_file, tiny_tokenizer_dir, tmp_path / "named", "--separator-token", "<|endoftext|>") == 0
    plain, named = read_manifest(str(tmp_path / "plain")), read_manifest(str(tmp_path / "named"))
    assert plain.settings_sha256 == named.settings_sha256 and plain.shards == named.shards


@pytest.mark.parametrize("token, message", [("Ġthe", "is an ordinary token"), ("<mask>", "is the mask token"),
                                            ("  ", "is blank")])
def test_unusable_separator_tokens_are_one_line_errors(token: str, message: str, tiny_tokenizer_dir: Path,
                                                       docs_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert _shard(docs_file, tiny_tokenizer_dir, tmp_path / "out", "--separator-token", token) == 2
    err = capsys.readouterr().err
    assert message in err and "--separator-token" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_old_manifests_read_eos_as_the_separator(tiny_shards: Path, tmp_path: Path) -> None:
    data = json.loads((tiny_shards / "manifest.json").read_text())
    for key in ("separator_token_id", "separator_token", "add_special_tokens"):
        data.pop(key, None)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(str(tmp_path)).separator_id == data["eos_token_id"] == 0
    data["eos_token_id"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ShardError, match="records no document separator"):
        read_manifest(str(tmp_path))


@pytest.mark.parametrize("family", FAMILIES)
def test_word_starts_follow_each_family(family: str, families: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(str(families[family]))
    tables = vocabulary_tables(tokenizer, special_ids(tokenizer))
    assert tables.family == family
    text = "the river flows through the old city and then into the wide sea near the town"
    encoding = tokenizer(text, add_special_tokens=False)
    ids, words = encoding["input_ids"], encoding.word_ids()
    # The first token of a document starts a word by the strategies' own rule (it follows a separator).
    assert [bool(tables.word_start[i]) for i in ids[1:]] == [words[k] != words[k - 1] for k in range(1, len(ids))]
    assert tables.word_start[tokenizer.convert_tokens_to_ids(SEPARATOR[family])]


@pytest.mark.parametrize("family", FAMILIES)
def test_random_replacements_and_views_never_touch_special_ids(family: str, families: dict[str, Path],
                                                               docs_file: Path, tmp_path: Path) -> None:
    assert _shard(docs_file, families[family], tmp_path / "out") == 0
    manifest = read_manifest(str(tmp_path / "out"))
    tokenizer = AutoTokenizer.from_pretrained(manifest.tokenizer_dir)
    specials = set(tokenizer.all_special_ids) | {manifest.separator_id, manifest.mask_token_id}
    tables = vocabulary_for(manifest)
    assert specials <= set(np.flatnonzero(tables.special).tolist())
    rows = torch.tensor(_stream(tmp_path / "out")).reshape(-1, SEQ_LEN)
    section = MaskingSection(rate=0.5, mask_prob=0.0, random_prob=1.0)  # every target becomes a random token
    for strategy in ("bert", "whole_word", "span"):
        section.strategy = strategy
        collate = build_collator(section, manifest.mask_token_id, tables)
        batch = collate(rows, torch.Generator().manual_seed(0))
        replaced = batch["input_ids"].gather(1, batch["positions"])
        assert not set(replaced.flatten().tolist()) & specials, strategy
    views = DocumentViews(manifest.separator_id, SEQ_LEN // 2, 4)(rows)
    assert views["view_valid"].any()
    for key in ("view_a_ids", "view_b_ids"):
        kept = views[key][views[key.replace("ids", "mask")].bool()]
        assert manifest.separator_id not in kept.tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_pairs_end_each_segment_with_the_separator(family: str, families: dict[str, Path]) -> None:
    from evals.common import encode, load_tokenizer as eval_tokenizer

    tokenizer = eval_tokenizer(families[family], False)
    sep = tokenizer.convert_tokens_to_ids(SEPARATOR[family])
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("the river", "the city"))
    assert encode(tokenizer, "the river", "the city", 64)["input_ids"] == a + [sep] + b + [sep]
    assert encode(tokenizer, "the river", None, 64)["input_ids"] == a + [sep]


def test_eval_pairs_use_a_recorded_separator(tiny_tokenizer_dir: Path, docs_file: Path, tmp_path: Path) -> None:
    from evals.common import encode, load_tokenizer as eval_tokenizer

    assert _shard(docs_file, _bare_bpe(tiny_tokenizer_dir, tmp_path / "bare"), tmp_path / "out",
                  "--separator-token", "<doc>") == 0
    tokenizer = eval_tokenizer(tmp_path / "out" / "tokenizer", False)
    assert encode(tokenizer, "a", "b", 64)["input_ids"][-1] == 1000
