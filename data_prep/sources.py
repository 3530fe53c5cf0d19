"""Document readers for the sharder: local .txt / .jsonl / .parquet files and hub datasets (streaming).

Every reader yields one :data:`Record` per raw input record, in a deterministic order: either
``(text, None)`` for a usable document or ``(None, reason)`` for a skipped one. Yielding skipped records
too (instead of dropping them silently) lets the sharder count them and resume by record position.

Skip policy: a record (a .txt/.jsonl line, a parquet row, a hub row) that is empty, not UTF-8, not JSON,
lacks the text field, holds a non-string or contains a NUL character is skipped and counted by reason. A
file that cannot be read as its format at all (unreadable, UTF-16/32, not parquet) is a one-line
ValueError naming the file; nothing is guessed.
"""
from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

Record = tuple[Optional[str], Optional[str]]
"""``(text, None)`` for a kept document, ``(None, reason)`` for a skipped one."""

SKIP_REASONS = ("empty", "bad_utf8", "bad_json", "missing_field", "not_string", "nul_byte")
LOCAL_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_PARQUET_BATCH_ROWS = 4096


def check_text(value: Any, present: bool = True) -> Record:
    """Classify one raw field value as a document or a skip reason."""
    if not present:
        return None, "missing_field"
    if not isinstance(value, str):
        return None, "not_string"
    if not value.strip():
        return None, "empty"
    if "\x00" in value:
        # Real text has no NUL; it marks binary data or UTF-16 read as bytes, which would pack as garbage.
        return None, "nul_byte"
    return value, None


def local_format(path: str) -> str:
    """The reader for ``path`` by suffix; a one-line ValueError names the accepted suffixes."""
    fmt = LOCAL_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"input {path!r} has an unsupported suffix; accepted: {', '.join(LOCAL_FORMATS)}")
    if not os.path.isfile(path):
        raise ValueError(f"input file {path!r} does not exist")
    return fmt


def iter_local_files(paths: Iterable[str], text_field: str) -> Iterator[Record]:
    """Records of each local file in turn (files in the order given)."""
    for path in paths:
        fmt = local_format(path)
        if fmt == "txt":
            yield from _iter_txt(path)
        elif fmt == "jsonl":
            yield from _iter_jsonl(path, text_field)
        else:
            yield from _iter_parquet(path, text_field)


_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _lines(path: str) -> Iterator[bytes]:
    """Raw lines of ``path`` without a UTF-8 byte-order mark; unreadable or UTF-16/32 files are ValueErrors."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline()
            if first.startswith(_WIDE_BOMS):
                raise ValueError(f"input {path!r} is UTF-16/32 text (byte-order mark on line 1); convert it to "
                                 f"UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8")
            if first:
                yield first.removeprefix(codecs.BOM_UTF8)
            yield from handle
    except OSError as err:
        raise ValueError(f"input {path!r} cannot be read ({err.strerror or err}); check the file") from None


def _iter_txt(path: str) -> Iterator[Record]:
    """One document per line; bytes are decoded strictly so an undecodable line is skipped, not mangled."""
    for raw in _lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield None, "bad_utf8"
            continue
        yield check_text(line.rstrip("\r\n"))


def _iter_jsonl(path: str, text_field: str) -> Iterator[Record]:
    for raw in _lines(path):
        if not raw.strip():
            yield None, "empty"
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            yield None, "bad_utf8"
            continue
        except (ValueError, RecursionError):
            # JSONDecodeError, an integer past Python's digit limit, or nesting deeper than the stack.
            yield None, "bad_json"
            continue
        if not isinstance(row, dict):
            yield None, "bad_json"
            continue
        yield check_text(row.get(text_field), text_field in row)


_ARROW_ERRORS = (pa.ArrowException, OSError, ValueError)
"""What pyarrow raises for a file that is not (or no longer) parquet: ArrowInvalid, ArrowIOError, ..."""


def _iter_parquet(path: str, text_field: str) -> Iterator[Record]:
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except _ARROW_ERRORS as err:
        raise ValueError(f"input {path!r} is not a readable parquet file ({_first_line(err)}); "
                         "re-export or re-download it") from None
    if text_field not in names:
        raise ValueError(f"{path!r} has no column {text_field!r} (columns: {', '.join(names)}); pass --text-field")
    rows = 0
    try:
        # Batches keep memory flat for multi-GB files.
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
            values = batch.column(0).to_pylist()
            rows += len(values)
            yield from (check_text(value) for value in values)
    except _ARROW_ERRORS as err:
        raise ValueError(f"input {path!r} is damaged after row {rows} ({_first_line(err)}); "
                         "re-export or re-download it") from None


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).strip().split("\n")[0].split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def iter_hub_dataset(name: str, config: str | None, split: str, text_field: str,
                     data_files: str | list[str] | None = None) -> Iterator[Record]:
    """Stream a ``datasets`` dataset without downloading it whole.

    ``name`` is a hub id (``HuggingFaceFW/fineweb-edu`` with config ``sample-10BT``, ``allenai/c4`` with
    ``en``) or a builder name (``parquet``, ``json``, ``text``) together with ``data_files``.
    """
    from datasets import load_dataset  # deferred: importing datasets costs ~1 s that local inputs don't need

    from megaconcept.hub_env import enable_fast_downloads

    enable_fast_downloads()  # hub files through hf_transfer when it is installed (huggingface_hub < 1.0)

    try:
        stream = load_dataset(name, config, split=split, streaming=True, data_files=data_files)
    except Exception as err:  # datasets raises many unrelated types for a bad name/config/split
        raise ValueError(f"cannot stream dataset {name!r} (config {config!r}, split {split!r}): "
                         f"{_first_line(err)}") from err
    rows = 0
    try:
        for row in stream:
            rows += 1
            yield check_text(row.get(text_field), text_field in row)
    except Exception as err:  # a damaged data file surfaces mid-stream, as whatever its builder raises
        raise ValueError(f"dataset {name!r} (config {config!r}, split {split!r}, data_files {data_files!r}) "
                         f"failed after row {rows}: {_first_line(err)}") from err


def describe_local(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Manifest ``sources`` entries for local files (path as given, format, size)."""
    return [{"path": p, "format": local_format(p), "bytes": os.path.getsize(p)} for p in paths]


def local_fingerprint(paths: Iterable[str]) -> list[list[Any]]:
    """What identifies the inputs for resume: resolved path, size and mtime (hashing TBs of input is too slow)."""
    return [[str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]
