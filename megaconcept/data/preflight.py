"""Checks of a shard directory that refuse a run before anything is written: the tokenizer beside the shards
is the one they were made with, and the manifest's ids fit its vocabulary. (Every shard's ids are checked
against the vocabulary as it is read: megaconcept.data.shards.read_shard.)"""
from __future__ import annotations

from pathlib import Path

from .shards import RERUN_HINT, Manifest, ShardError
from .tokenizer import tokenizer_fingerprint


def check_shards(manifest: Manifest) -> None:
    """Raise ShardError (one line naming the file and the fix) when the directory contradicts itself."""
    where = Path(manifest.directory)
    tokenizer_dir = Path(manifest.tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise ShardError(f"{tokenizer_dir} is missing: the shards cannot be read without the tokenizer they were "
                         f"made with; {RERUN_HINT}")
    recorded = manifest.tokenizer.get("sha256")
    if recorded and tokenizer_fingerprint(str(tokenizer_dir)) != recorded:
        raise ShardError(f"{tokenizer_dir} is not the tokenizer {where / 'manifest.json'} records (sha256 "
                         f"{recorded[:12]}...): it was replaced or edited; put the original back or {RERUN_HINT}")
    _check_ids(manifest, where / "manifest.json")
    _check_tokenizer_size(manifest, tokenizer_dir)


def _check_ids(manifest: Manifest, path: Path) -> None:
    vocab = manifest.vocab_size
    if vocab < 2:
        raise ShardError(f"{path}: vocab_size={vocab} cannot hold a text id and the mask id; {RERUN_HINT}")
    named = {"mask_token_id": manifest.mask_token_id, "eos_token_id": manifest.eos_token_id,
             "separator_token_id": manifest.separator_token_id}
    named = {key: value for key, value in named.items() if value is not None}  # BERT has no eos; old: no separator
    named.update({f"special_token_ids[{i}]": v for i, v in enumerate(manifest.special_token_ids or [])})
    bad = [f"{key}={value}" for key, value in named.items() if not 0 <= value < vocab]
    if bad:
        raise ShardError(f"{path}: {', '.join(bad)} outside the vocabulary [0, {vocab}) it records; the manifest "
                         f"is damaged or edited; {RERUN_HINT}")


def _check_tokenizer_size(manifest: Manifest, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    try:
        size = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{tokenizer_dir} does not load as a tokenizer ({str(exc).splitlines()[0]}); "
                         f"{RERUN_HINT}") from None
    if size != manifest.vocab_size:
        raise ShardError(f"{Path(manifest.directory) / 'manifest.json'} says vocab_size={manifest.vocab_size} but "
                         f"its tokenizer has {size} ids; the manifest is damaged or edited; {RERUN_HINT}")
