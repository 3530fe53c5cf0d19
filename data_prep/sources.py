"""Document readers for the sharder: local .txt / .jsonl / .parquet files and hub datasets (streaming).

Every reader yields one :data:`Record` per raw input record, in a deterministic order: either
``(text, None)`` for a usable document or ``(None, reason)`` for a skipped one. Yielding skipped records
too (instead of dropping them silently) lets the sharder count them and resume by record position.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pyarrow.parquet as pq

Record = tuple[Optional[str], Optional[str]]
"""``(text, None)`` for a kept document, ``(None, reason)`` for a skipped one."""

SKIP_REASONS = ("empty", "bad_utf8", "bad_json", "missing_field", "not_string")
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


def _iter_txt(path: str) -> Iterator[Record]:
    """One document per line; bytes are decoded strictly so an undecodable line is skipped, not mangled."""
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield None, "bad_utf8"
                continue
            yield check_text(line.rstrip("\r\n"))


def _iter_jsonl(path: str, text_field: str) -> Iterator[Record]:
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.strip():
                yield None, "empty"
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield None, "bad_utf8"
                continue
            except json.JSONDecodeError:
                yield None, "bad_json"
                continue
            if not isinstance(row, dict):
                yield None, "bad_json"
                continue
            yield check_text(row.get(text_field), text_field in row)


def _iter_parquet(path: str, text_field: str) -> Iterator[Record]:
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise ValueError(f"{path!r} has no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
                         "pass --text-field")
    # Batches keep memory flat for multi-GB files.
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            yield check_text(value)


def iter_hub_dataset(name: str, config: str | None, split: str, text_field: str,
                     data_files: str | list[str] | None = None) -> Iterator[Record]:
    """Stream a ``datasets`` dataset without downloading it whole.

    ``name`` is a hub id (``HuggingFaceFW/fineweb-edu`` with config ``sample-10BT``, ``allenai/c4`` with
    ``en``) or a builder name (``parquet``, ``json``, ``text``) together with ``data_files``.
    """
    from datasets import load_dataset  # deferred: importing datasets costs ~1 s that local inputs don't need

    try:
        stream = load_dataset(name, config, split=split, streaming=True, data_files=data_files)
    except Exception as err:  # datasets raises many unrelated types for a bad name/config/split
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot stream dataset {name!r} (config {config!r}, split {split!r}): "
                         f"{type(err).__name__}: {first}") from err
    for row in stream:
        yield check_text(row.get(text_field), text_field in row)


def describe_local(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Manifest ``sources`` entries for local files (path as given, format, size)."""
    return [{"path": p, "format": local_format(p), "bytes": os.path.getsize(p)} for p in paths]


def local_fingerprint(paths: Iterable[str]) -> list[list[Any]]:
    """What identifies the inputs for resume: resolved path, size and mtime (hashing TBs of input is too slow)."""
    return [[str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]
