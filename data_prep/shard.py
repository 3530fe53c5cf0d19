"""`python -m data_prep.shard`: tokenize documents, pack them into fixed-length samples, write shards.

Each document is tokenized without special tokens and followed by exactly one separator id: the
``--separator-token`` when one is named, else the tokenizer's eos, else its sep (BERT's ``[SEP]``); see
megaconcept.data.vocab.document_separator, and the manifest's ``separator_token_id``. With
``--add-special-tokens`` each document gets the tokenizer's own template instead (``[CLS] text [SEP]``), plus
the separator where the template does not already end with it. The resulting token stream is cut into
samples of exactly ``--seq-len`` ids (documents run across sample boundaries, standard packing) and written
as WebDataset tars of ``--samples-per-shard`` samples (see :mod:`megaconcept.data.shards` for the format).
The tail that does not fill a sample is dropped and counted.

Interrupted runs resume: after every finished shard ``DIR/.progress.json`` records how many input
records were consumed, the not-yet-written tokens and all counters, so a re-run re-reads the input,
skips the consumed records without tokenizing them, and produces byte-identical output. A run that fails
any other way (bad input, tokenizer, disk) removes what it added to DIR and restores the progress record it
found; ``tokenizer/`` appears only together with ``manifest.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from data_prep.sources import Record, describe_local, iter_hub_dataset, iter_local_files, local_fingerprint
from megaconcept.data.shards import (FORMAT_VERSION, MANIFEST_NAME, PROGRESS_NAME, TOKENIZER_DIRNAME,
                                     Manifest, ShardError, ShardInfo, encode_shard, ids_dtype,
                                     read_manifest, shard_name, write_atomically)
from megaconcept.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from megaconcept.data.vocab import document_separator, special_ids


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.shard",
        description="Tokenize and pack documents into WebDataset shards + manifest.json for training.",
        epilog="examples:\n"
               "  python -m data_prep.shard --hub HuggingFaceFW/fineweb-edu --hub-config sample-10BT "
               "--max-documents 100000 --tokenizer smollm2 --seq-len 2048 --out data/shards/fwe\n"
               "  python -m data_prep.shard --input data/corpus/hotpotqa_paragraphs.txt "
               "--tokenizer smollm2 --seq-len 512 --out data/shards/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="local .txt (one document per line), .jsonl or .parquet files, read in order")
    source.add_argument("--hub", metavar="NAME",
                        help="datasets name streamed from the hub (e.g. allenai/c4), or a builder "
                             "(json, parquet, text) together with --data-files")
    parser.add_argument("--hub-config", metavar="CFG", default=None, help="dataset config (e.g. sample-10BT, en)")
    parser.add_argument("--split", default="train", help="dataset split (default: train)")
    parser.add_argument("--data-files", metavar="FILE", nargs="+", default=None, help="data_files for a --hub builder")
    parser.add_argument("--max-documents", metavar="N", type=int, default=None, help="stop after N kept documents")
    parser.add_argument("--tokenizer", metavar="SPEC", required=True,
                        help="'smollm2' (embedded), a local tokenizer folder, or a hub id")
    parser.add_argument("--separator-token", metavar="TOKEN", default=None,
                        help="token that ends each document, for a tokenizer with neither eos nor sep, or to "
                             "override them; added as a special token when missing, and then matched verbatim in "
                             "text, so pick one text never holds (e.g. '<doc>'); default: eos, else sep")
    parser.add_argument("--add-special-tokens", action="store_true",
                        help="apply the tokenizer's template to each document ([CLS] ... [SEP] for BERT); "
                             "default: none, only the separator between documents")
    parser.add_argument("--seq-len", metavar="N", type=int, required=True, help="ids per sample")
    parser.add_argument("--out", metavar="DIR", required=True, help="output directory")
    parser.add_argument("--samples-per-shard", metavar="N", type=int, default=1000,
                        help="samples per tar (default 1000)")
    parser.add_argument("--text-field", metavar="FIELD", default="text",
                        help="jsonl/parquet/hub text field (default text)")
    parser.add_argument("--workers", metavar="K", type=int, default=min(8, os.cpu_count() or 1),
                        help="tokenizer threads (output does not depend on it)")
    parser.add_argument("--batch-docs", metavar="N", type=int, default=1000, help="documents tokenized per batch")
    parser.add_argument("--overwrite", action="store_true", help="discard existing output in --out first")
    args = parser.parse_args(argv)
    for name in ("seq_len", "samples_per_shard", "workers", "batch_docs", "max_documents"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def write_shard(out_dir: Path, index: int, samples: np.ndarray) -> ShardInfo:
    """Write ``samples`` (S, seq_len) as ``out_dir/shard-{index}.tar`` atomically; return its manifest entry."""
    data = encode_shard(index, samples)
    write_atomically(out_dir / shard_name(index), data)
    return ShardInfo(name=shard_name(index), samples=len(samples), sha256=hashlib.sha256(data).hexdigest())


class Packer:
    """Packs documents into samples and full shards; owns every counter the manifest and resume need."""

    def __init__(self, out_dir: Path, seq_len: int, samples_per_shard: int, separator_id: int, dtype: np.dtype,
                 settings_sha256: str, progress: Optional[dict[str, Any]] = None, templated: bool = False) -> None:
        self.out_dir, self.seq_len, self.samples_per_shard = out_dir, seq_len, samples_per_shard
        self.separator_id, self.dtype, self.settings_sha256 = separator_id, dtype, settings_sha256
        # Documents carry the tokenizer's template (--add-special-tokens): one already ending with the
        # separator ([CLS] x [SEP]) gets no second one.
        self.templated = templated
        progress = progress or {}
        self.records_consumed: int = progress.get("records_consumed", 0)
        self.documents: int = progress.get("documents", 0)
        self.skipped: Counter[str] = Counter(progress.get("skipped", {}))
        self.tokens: int = progress.get("tokens", 0)
        # Tokens not yet in a written shard; a Python list because per-document extends are amortized O(1).
        self.pending: list[int] = list(progress.get("pending", []))
        self.shards: list[ShardInfo] = [ShardInfo(**s) for s in progress.get("shards", [])]

    def skip(self, reason: str) -> None:
        self.records_consumed += 1
        self.skipped[reason] += 1

    def add_document(self, ids: list[int]) -> None:
        """Append one document + separator; flush every full shard (progress is saved at document boundaries)."""
        self.records_consumed += 1
        self.documents += 1
        ended = self.templated and bool(ids) and ids[-1] == self.separator_id
        self.tokens += len(ids) + (not ended)
        self.pending.extend(ids)
        if not ended:
            self.pending.append(self.separator_id)
        shard_tokens = self.samples_per_shard * self.seq_len
        while len(self.pending) >= shard_tokens:
            self._flush(shard_tokens)
            self._save_progress()

    def finish(self) -> int:
        """Write the last (shorter) shard; return the dropped tail length."""
        full = len(self.pending) // self.seq_len * self.seq_len
        if full:
            self._flush(full)
        dropped = len(self.pending)
        self.pending = []
        return dropped

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def _flush(self, count: int) -> None:
        block = np.asarray(self.pending[:count], dtype=self.dtype).reshape(-1, self.seq_len)
        del self.pending[:count]
        self.shards.append(write_shard(self.out_dir, len(self.shards), block))

    def _save_progress(self) -> None:
        state = {"settings_sha256": self.settings_sha256, "records_consumed": self.records_consumed,
                 "documents": self.documents, "skipped": dict(sorted(self.skipped.items())),
                 "tokens": self.tokens, "pending": self.pending, "shards": [vars(s) for s in self.shards]}
        write_atomically(self.out_dir / PROGRESS_NAME, json.dumps(state).encode())


def open_records(args: argparse.Namespace) -> Iterator[Record]:
    if args.input:
        return iter_local_files(args.input, args.text_field)
    return iter_hub_dataset(args.hub, args.hub_config, args.split, args.text_field, args.data_files)


def record_batches(records: Iterator[Record], skip: int, kept: int, max_documents: Optional[int],
                   batch_docs: int) -> Iterator[list[Record]]:
    """Batches of records after the first ``skip`` ones, stopping once ``max_documents`` are kept in total."""
    batch: list[Record] = []
    for record in islice(records, skip, None):
        if max_documents is not None and kept >= max_documents:
            break
        batch.append(record)
        kept += record[0] is not None
        if len(batch) == batch_docs:
            yield batch
            batch = []
    if batch:
        yield batch


def settings_of(args: argparse.Namespace, tokenizer_sha256: str) -> dict[str, Any]:
    """What determines the output bytes (not --workers/--batch-docs, which never change them)."""
    inputs: Any = (local_fingerprint(args.input) if args.input else
                   {"hub": args.hub, "config": args.hub_config, "split": args.split,
                    "data_files": args.data_files})
    settings = {"format_version": FORMAT_VERSION, "inputs": inputs, "text_field": args.text_field,
                "max_documents": args.max_documents, "tokenizer_sha256": tokenizer_sha256,
                "seq_len": args.seq_len, "samples_per_shard": args.samples_per_shard}
    # A named separator changes the saved tokenizer (so its sha256 above) whenever it changes the bytes.
    # Recorded only when set, so directories made before the option existed keep their fingerprint.
    if args.add_special_tokens:
        settings["add_special_tokens"] = True
    return settings


def clear_outputs(out: Path) -> None:
    """Remove only what this tool writes, so --overwrite never deletes unrelated files."""
    for path in list(out.glob("shard-*.tar")) + list(out.glob("shard-*.tar.tmp")):
        path.unlink()
    for name in (MANIFEST_NAME, PROGRESS_NAME):
        (out / name).unlink(missing_ok=True)
    for name in (TOKENIZER_DIRNAME, TOKENIZER_DIRNAME + ".tmp"):
        shutil.rmtree(out / name, ignore_errors=True)


def _configure_threads(workers: int) -> None:
    # The Rust tokenizer parallelizes encode_batch over rayon threads; RAYON_NUM_THREADS applies when
    # its pool first starts in this process. Packing happens in input order, so output is unaffected.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(workers)


def _load_tokenizer(spec: str, separator: Optional[str]) -> PreTrainedTokenizerBase:
    """load_tokenizer, with whatever a damaged tokenizer folder makes transformers raise as one line."""
    try:
        return load_tokenizer(spec, separator)
    except ValueError:
        raise
    except Exception as err:  # e.g. KeyError or tokenizers' bare Exception for a malformed tokenizer.json
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"--tokenizer {spec!r} cannot be loaded ({type(err).__name__}: {reason}); pass "
                         "'smollm2', a folder written by save_pretrained, or a hub id") from err


def _stage_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> str:
    """Save the tokenizer to ``out/tokenizer.tmp`` (moved into place with the manifest); return its fingerprint."""
    staged = out / (TOKENIZER_DIRNAME + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    tokenizer.save_pretrained(str(staged))
    return tokenizer_fingerprint(str(staged))


def _check_settings(out: Path, settings_sha: str) -> tuple[Optional[Manifest], Optional[dict[str, Any]]]:
    """Return (finished manifest, progress) when they match these settings; refuse mismatches."""
    mismatch = (f"{out} holds shards made with different settings or inputs; use a new --out or pass "
                "--overwrite to rebuild")
    manifest = None
    if (out / MANIFEST_NAME).is_file():
        manifest = read_manifest(str(out))
        if manifest.settings_sha256 != settings_sha:
            raise ValueError(mismatch)
    progress = None
    if (out / PROGRESS_NAME).is_file():
        try:
            progress = json.loads((out / PROGRESS_NAME).read_bytes())
        except (ValueError, RecursionError) as err:
            raise ValueError(f"{out / PROGRESS_NAME} is unreadable ({err}); pass --overwrite to start over") from err
        if not isinstance(progress, dict):
            raise ValueError(f"{out / PROGRESS_NAME} is not a progress record; pass --overwrite to start over")
        if progress.get("settings_sha256") != settings_sha:
            raise ValueError(mismatch)
    return manifest, progress


def _tokenize_all(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, packer: Packer) -> None:
    backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    # Packing needs every token: a tokenizer.json may ship truncation/padding settings for inference.
    backend.no_truncation()
    backend.no_padding()
    batches = record_batches(open_records(args), packer.records_consumed, packer.documents,
                             args.max_documents, args.batch_docs)
    with tqdm(desc="sharding", unit="doc", initial=packer.documents, total=args.max_documents,
              mininterval=1.0, dynamic_ncols=True) as bar:
        for batch in batches:
            encodings = iter(backend.encode_batch([t for t, _ in batch if t is not None],
                                                  add_special_tokens=args.add_special_tokens))
            for text, reason in batch:
                if reason is not None:
                    packer.skip(reason)
                else:
                    packer.add_document(next(encodings).ids)
            bar.update(sum(t is not None for t, _ in batch))
            bar.set_postfix(tokens=f"{packer.tokens:,}", shards=len(packer.shards), refresh=False)


def describe_sources(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Manifest ``sources``; for local inputs this also checks they exist and have a known suffix."""
    if args.input:
        return describe_local(args.input)
    return [{"hub": args.hub, "config": args.hub_config, "split": args.split,
             "data_files": args.data_files, "text_field": args.text_field}]


def _manifest(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, tokenizer_sha: str, settings_sha: str,
              packer: Packer, dropped: int, sources: list[dict[str, Any]]) -> Manifest:
    separator, separator_id = _separator(tokenizer)
    # The separator is never a random replacement, whatever the tokenizer says about its specials.
    specials = sorted({*special_ids(tokenizer), separator_id})
    return Manifest(
        format_version=FORMAT_VERSION, documents=packer.documents,
        skipped_documents=sum(packer.skipped.values()), skipped_by_reason=dict(sorted(packer.skipped.items())),
        tokens=packer.tokens, samples=packer.samples, seq_len=args.seq_len, dropped_tokens=dropped,
        dtype=packer.dtype.name, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
        mask_token_id=tokenizer.mask_token_id, special_token_ids=specials, separator_token_id=separator_id,
        separator_token=separator, add_special_tokens=args.add_special_tokens,
        tokenizer={"spec": args.tokenizer, "name_or_path": str(tokenizer.name_or_path), "sha256": tokenizer_sha},
        sources=sources, shards=packer.shards, settings_sha256=settings_sha)


def _separator(tokenizer: PreTrainedTokenizerBase) -> tuple[str, int]:
    found = document_separator(tokenizer)
    assert found is not None, "load_tokenizer refuses a tokenizer without a document separator"
    return found


def _prepare_out(out: Path, overwrite: bool) -> bool:
    """Create ``out`` (and clear this tool's old outputs with --overwrite); True when this run created it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file; pass a directory (created when missing)")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {str(out)!r} cannot be created ({err.strerror or err}); pass a writable "
                         "directory") from None
    if overwrite:
        clear_outputs(out)
    return created


@contextmanager
def _undo_on_failure(out: Path, created: bool) -> Iterator[None]:
    """On any failure remove what this run added to ``out`` and restore the progress record it found, so a
    failed run never leaves a half-made shard directory; files that were there before are never touched.

    An interrupted run (Ctrl-C) whose progress record exists keeps its shards and progress: re-running the
    same command resumes from them (see the module docstring). Only its temporary files are removed.
    """
    before = set(os.listdir(out))
    progress = out / PROGRESS_NAME
    old_progress = progress.read_bytes() if progress.is_file() else None
    try:
        yield
    except BaseException as err:
        resumable = isinstance(err, KeyboardInterrupt) and progress.is_file()
        for name in set(os.listdir(out)) - before:
            if resumable and not name.endswith(".tmp"):
                continue
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        if old_progress is not None and not resumable:
            write_atomically(progress, old_progress)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def run(args: argparse.Namespace) -> Manifest:
    """Shard according to ``args``; resume or skip a finished directory. Returns the manifest."""
    sources = describe_sources(args)  # bad input paths fail before anything is written
    _configure_threads(args.workers)
    tokenizer = _load_tokenizer(args.tokenizer, args.separator_token)  # before anything is written, too
    out = Path(args.out)
    created = _prepare_out(out, args.overwrite)
    with _undo_on_failure(out, created):
        return _shard_into(out, args, tokenizer, sources)


def _shard_into(out: Path, args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase,
                sources: list[dict[str, Any]]) -> Manifest:
    tokenizer_sha = _stage_tokenizer(tokenizer, out)
    settings_sha = hashlib.sha256(json.dumps(settings_of(args, tokenizer_sha), sort_keys=True).encode()).hexdigest()
    finished, progress = _check_settings(out, settings_sha)
    if finished is not None:
        shutil.rmtree(out / (TOKENIZER_DIRNAME + ".tmp"))
        print(f"{out}: already complete ({finished.samples} samples in {len(finished.shards)} shards)")
        return finished
    dtype = ids_dtype(len(tokenizer))
    separator, separator_id = _separator(tokenizer)
    print(f"documents end with {separator!r} (id {separator_id})")
    packer = Packer(out, args.seq_len, args.samples_per_shard, separator_id, dtype, settings_sha, progress,
                    templated=args.add_special_tokens)
    _tokenize_all(args, tokenizer, packer)
    dropped = packer.finish()
    if not packer.shards:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(packer.skipped.items())) or "none"
        raise ValueError(f"the input gave {packer.tokens} tokens from {packer.documents} documents (skipped: "
                         f"{skipped}), not enough for one sample of --seq-len {args.seq_len}")
    manifest = _manifest(args, tokenizer, tokenizer_sha, settings_sha, packer, dropped, sources)
    # The tokenizer goes into place only now, so a failed run never leaves a folder that looks prepared.
    shutil.rmtree(out / TOKENIZER_DIRNAME, ignore_errors=True)
    os.replace(out / (TOKENIZER_DIRNAME + ".tmp"), out / TOKENIZER_DIRNAME)
    write_atomically(out / MANIFEST_NAME, manifest.to_json().encode())
    (out / PROGRESS_NAME).unlink(missing_ok=True)
    print(f"{out}: {manifest.documents} documents ({manifest.skipped_documents} skipped) -> "
          f"{manifest.tokens:,} tokens -> {manifest.samples} samples in {len(manifest.shards)} shards")
    return manifest


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, parse_args(argv))


def run_cli(job: Any, args: Any) -> int:
    """Run a data_prep job's `job(args)`; bad input and OS errors (disk full, permissions) become one line, exit 2.
    Shared by the data_prep CLIs."""
    try:
        job(args)
    except (ValueError, ShardError) as err:
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permissions: name the file it happened on
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}; check --out", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
