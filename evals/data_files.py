"""The user's local evaluation files (GLUE / SCROLLS / LongBench layouts, concept-analysis text), read row by row
so that a bad file is one EvalError naming the file, the line (or row) and what was expected, never a parser's
traceback.

Rows travel as `Record = (where, fields)`: `where` locates the row for messages ("path:LINE" in JSON lines,
"path row N" in a JSON array or a table, "hub/name [split] row N" for hub rows).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from .common import EvalError, json_kind, one_line

Record = tuple[str, dict[str, Any]]
_BOM = "\ufeff"  # editors on Windows start UTF-8 files with it; json.loads refuses it


def text_lines(path: Path) -> Iterator[tuple[str, str]]:
    """("path:LINE", text) of every non-blank line, decoded line by line so an encoding error names its line."""
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                where = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8").rstrip("\n")
                except UnicodeDecodeError as exc:
                    raise EvalError(f"{where} is not UTF-8 text (byte {exc.start + 1} of the line); save the file "
                                    f"as UTF-8") from None
                line = line.removeprefix(_BOM) if number == 1 else line
                if line.strip():
                    yield where, line
    except OSError as exc:
        raise EvalError(f"{path} cannot be read ({exc.strerror or one_line(exc)})") from None


def _object(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EvalError(f"{where} is {json_kind(value)}, expected a JSON object of fields")
    return value


def _parse(where: str, text: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError; RecursionError is not expected from data files
        raise EvalError(f"{where} is not valid JSON ({one_line(exc)}); expected {expected}") from None


def _json_array(path: Path) -> Iterator[Record]:
    try:
        text = path.read_bytes().decode("utf-8").removeprefix(_BOM)
    except OSError as exc:
        raise EvalError(f"{path} cannot be read ({exc.strerror or one_line(exc)})") from None
    except UnicodeDecodeError as exc:
        raise EvalError(f"{path} is not UTF-8 text (byte {exc.start + 1}); save the file as UTF-8") from None
    rows = _parse(str(path), text, "a JSON array of row objects (or one JSON object per line)")
    if not isinstance(rows, list):
        raise EvalError(f"{path} holds {json_kind(rows)}, expected a JSON array of row objects")
    for index, row in enumerate(rows, 1):
        yield f"{path} row {index}", _object(f"{path} row {index}", row)


def _starts_array(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("utf-8", errors="replace").removeprefix(_BOM).lstrip()
    except OSError as exc:
        raise EvalError(f"{path} cannot be read ({exc.strerror or one_line(exc)})") from None
    return head.startswith("[")


def json_records(path: Path) -> Iterator[Record]:
    """Rows of a .jsonl file (one JSON object per line; blank lines skipped) or a .json file (a JSON array of
    objects, or JSON lines as the datasets library also accepts), read lazily where the format allows."""
    if path.suffix == ".json" and _starts_array(path):
        yield from _json_array(path)
        return
    for where, line in text_lines(path):
        yield where, _object(where, _parse(where, line, "one JSON object per line"))


def table_records(path: Path, builder: str, **kwargs: Any) -> Iterator[Record]:
    """Rows of a parquet / csv / tsv file through the datasets library (`builder`, its loader's kwargs)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # pyarrow, pandas and datasets raise unrelated types; all mean "not this format"
        raise EvalError(f"{path} cannot be read as {builder} ({one_line(exc)})") from None
    for index, row in enumerate(dataset, 1):
        yield f"{path} row {index}", row


def numbered(source: str, rows: Iterable[dict[str, Any]]) -> Iterator[Record]:
    """Rows that come without a file (the hub, stand-ins) located as "source row N"."""
    for index, row in enumerate(rows, 1):
        yield f"{source} row {index}", row
