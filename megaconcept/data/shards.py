"""The shard format written by `python -m data_prep.shard` and read by training.

A shard directory holds::

    shard-000000.tar ...   WebDataset tars; sample key "{shard:06d}-{index:06d}", one member "ids.npy"
                           (a (seq_len,) uint16/uint32 numpy array of packed token ids)
    tokenizer/             the tokenizer that produced the ids (mask token included)
    manifest.json          counts, dtype, special ids (the document separator's among them), tokenizer
                           fingerprint, per-shard sha256;
                           written last, so its presence means the directory is complete

Errors are one line, name the file, and say how to fix it (re-run the sharder).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import webdataset as wds

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = ".progress.json"
TOKENIZER_DIRNAME = "tokenizer"
SAMPLE_MEMBER = "ids.npy"
RERUN_HINT = "re-run `python -m data_prep.shard ... --out DIR` (add --overwrite to rebuild)"
# Fixed tar metadata: identical input and settings must give byte-identical shards.
_TAR_MTIME = 0.0
_TAR_OWNER = "megaconcept"


class ShardError(RuntimeError):
    """A shard directory or shard file is missing, malformed or does not match its manifest."""


@dataclass
class ShardInfo:
    name: str
    """File name inside the shard directory (``shard-000000.tar``)."""
    samples: int
    """Samples (rows of seq_len ids) in this shard."""
    sha256: str
    """sha256 of the tar's bytes."""


@dataclass
class Manifest:
    """Everything training needs to know about a shard directory (mirrors ``manifest.json``)."""

    format_version: int
    documents: int
    """Documents kept (tokenized)."""
    skipped_documents: int
    """Documents skipped, all reasons together."""
    skipped_by_reason: dict[str, int]
    """Skipped documents per reason (empty, bad_utf8, bad_json, missing_field, not_string)."""
    tokens: int
    """All ids produced, one separator per document included."""
    samples: int
    seq_len: int
    dropped_tokens: int
    """The tail of the token stream that did not fill a last sample."""
    dtype: str
    vocab_size: int
    """``len(tokenizer)``, mask token included."""
    eos_token_id: Optional[int]
    """The tokenizer's eos (None for BERT-style tokenizers, which separate with [SEP])."""
    mask_token_id: int
    tokenizer: dict[str, str]
    """``spec``, ``name_or_path`` and ``sha256`` (fingerprint of ``DIR/tokenizer``)."""
    sources: list[dict[str, Any]]
    shards: list[ShardInfo]
    settings_sha256: str
    """Fingerprint of the sharding settings and inputs; a re-run with other settings is refused."""
    special_token_ids: Optional[list[int]] = None
    """Ids the tokenizer treats as special (never a random replacement in masking); None in manifests written
    before it was recorded (then read from DIR/tokenizer)."""
    separator_token_id: Optional[int] = None
    """The id that ends every document (eos, else sep, else a --separator-token); None in manifests written before
    it was recorded, whose documents ended with eos (read it through ``separator_id``)."""
    separator_token: Optional[str] = None
    """The separator's token text (None in older manifests)."""
    add_special_tokens: bool = False
    """Whether each document carries the tokenizer's own template ([CLS] ... [SEP]) (--add-special-tokens)."""
    directory: str = field(default="", compare=False)
    """The shard directory this manifest was read from (not stored in the file)."""

    @property
    def separator_id(self) -> int:
        """The id between documents: what views and pair encodings split on."""
        return self.separator_token_id if self.separator_token_id is not None else self.eos_token_id

    @property
    def tokenizer_dir(self) -> str:
        return os.path.join(self.directory, TOKENIZER_DIRNAME)

    def shard_path(self, index: int) -> str:
        return os.path.join(self.directory, self.shards[index].name)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("directory")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65535), else uint32: halves shard size for common vocabularies."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def encode_shard(shard_index: int, samples: np.ndarray) -> bytes:
    """Serialize ``samples`` (S, seq_len) into the bytes of one WebDataset tar, deterministically."""
    buffer = io.BytesIO()
    writer = wds.TarWriter(buffer, user=_TAR_OWNER, group=_TAR_OWNER, encoder=False, mtime=_TAR_MTIME)
    for index, row in enumerate(samples):
        member = io.BytesIO()
        np.save(member, np.ascontiguousarray(row), allow_pickle=False)
        writer.write({"__key__": f"{shard_index:06d}-{index:06d}", SAMPLE_MEMBER: member.getvalue()})
    writer.close()
    return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp name in the same folder, fsync, then rename: readers never see a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(shard_dir: str) -> Manifest:
    """Read and validate ``shard_dir/manifest.json``.

    Raises:
        ShardError: one line - missing directory/manifest (run the sharder) or a malformed manifest.
    """
    path = Path(shard_dir) / MANIFEST_NAME
    if not Path(shard_dir).is_dir():
        raise ShardError(f"shard directory {shard_dir!r} does not exist; create it with "
                         f"`python -m data_prep.shard --input FILE --tokenizer smollm2 --seq-len N --out {shard_dir}`")
    if not path.is_file():
        raise ShardError(f"{path} is missing (sharding never finished there); {RERUN_HINT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["shards"] = [ShardInfo(**entry) for entry in data["shards"]]
        manifest = Manifest(**data, directory=str(shard_dir))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ShardError(f"{path} is malformed ({type(err).__name__}: {err}); {RERUN_HINT}") from err
    _validate(manifest, path)
    return manifest


def _validate(manifest: Manifest, path: Path) -> None:
    problems = []
    if manifest.format_version != FORMAT_VERSION:
        problems.append(f"format_version {manifest.format_version} != supported {FORMAT_VERSION}")
    if manifest.samples * manifest.seq_len + manifest.dropped_tokens != manifest.tokens:
        problems.append("samples*seq_len + dropped_tokens != tokens")
    if sum(s.samples for s in manifest.shards) != manifest.samples:
        problems.append("shard sample counts do not add up to samples")
    if not manifest.shards:
        problems.append("it lists no shards")
    if manifest.separator_token_id is None and manifest.eos_token_id is None:
        problems.append("it records no document separator (separator_token_id / eos_token_id)")
    if problems:
        raise ShardError(f"{path} is inconsistent ({'; '.join(problems)}); {RERUN_HINT}")


def read_shard(path: str, expected_sha256: str | None, seq_len: int,
               expected_samples: int | None = None, vocab_size: int | None = None) -> np.ndarray:
    """Read one shard into a (S, seq_len) int64 array, in sample order.

    Args:
        expected_sha256: the manifest's checksum, or None to skip verification.
        expected_samples: the manifest's sample count, or None to skip that check.
        vocab_size: the manifest's vocabulary size: every id must be below it (an embedding lookup of a
            larger id fails deep inside training otherwise), or None to skip that check.

    Raises:
        ShardError: one line naming the shard: missing, checksum mismatch, corrupt/truncated tar,
            or a sample of the wrong length.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ShardError(f"shard {path} cannot be read ({err.strerror}); {RERUN_HINT}") from err
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ShardError(f"shard {path} fails its checksum (sha256 {actual[:12]}... != manifest "
                             f"{expected_sha256[:12]}...; corrupt or replaced); {RERUN_HINT}")
    rows = _parse_tar(path, data, seq_len)
    if not rows or (expected_samples is not None and len(rows) != expected_samples):
        raise ShardError(f"shard {path} holds {len(rows)} samples, manifest says {expected_samples} "
                         f"(truncated?); {RERUN_HINT}")
    ids = np.stack(rows).astype(np.int64)
    if vocab_size is not None and int(ids.max()) >= vocab_size:
        raise ShardError(f"shard {path} holds id {int(ids.max())}, outside the vocabulary of {vocab_size} ids its "
                         f"manifest records (the manifest or the shard was replaced); {RERUN_HINT}")
    return ids


def _parse_tar(path: str, data: bytes, seq_len: int) -> list[np.ndarray]:
    rows: list[np.ndarray] = []
    try:
        # Stream mode ("r|") reads members in order and notices a truncated final member.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
            for member in archive:
                if not member.name.endswith("." + SAMPLE_MEMBER):
                    continue
                handle = archive.extractfile(member)
                row = np.load(io.BytesIO(handle.read() if handle else b""), allow_pickle=False)
                if row.shape != (seq_len,):
                    raise ShardError(f"shard {path}: sample {member.name} has shape {row.shape}, "
                                     f"expected ({seq_len},); {RERUN_HINT}")
                rows.append(row)
    except (tarfile.TarError, ValueError, EOFError, OSError) as err:
        raise ShardError(f"shard {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                         f"{RERUN_HINT}") from err
    return rows
