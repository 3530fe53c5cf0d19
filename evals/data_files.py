"""The user's local evaluation files (GLUE / SCROLLS / LongBench layouts, concept-analysis text), read row by row
so that a bad file is one EvalError naming the file, the line (or row) and what was expected, never a parser's
traceback; and the folder conventions the layouts share (task folders named in any case, hub-cache snapshots,
per-split files and shards, `datasets.save_to_disk` folders, members of a download's zip read in place).

Rows travel as `Record = (where, fields)`: `where` locates the row for messages ("path:LINE" in JSON lines and
text tables, "path row N" in a JSON array or a parquet file, "folder [split] row N" in a save_to_disk folder,
"hub/name [split] row N" for hub rows). A zip member's path is "archive.zip/member".
"""
from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from .common import EvalError, json_kind, one_line

Record = tuple[str, dict[str, Any]]
FilePath = Union[Path, zipfile.Path]
"""A file on disk or a member of a zip archive: both open("rb"), read_bytes() and have a suffix."""
_BOM = "\ufeff"  # editors on Windows start UTF-8 files with it; json.loads refuses it
_READ_ERRORS = (OSError, zipfile.BadZipFile)  # a damaged archive fails on read, not only on open


def _cannot_read(path: Any, exc: BaseException) -> EvalError:
    return EvalError(f"{path} cannot be read ({getattr(exc, 'strerror', None) or one_line(exc)})")


def _decoded_lines(path: FilePath) -> Iterator[tuple[int, str]]:
    """(number, text with its line end) of every line, decoded line by line so an encoding error names its line."""
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise EvalError(f"{path}:{number} is not UTF-8 text (byte {exc.start + 1} of the line); save the "
                                    f"file as UTF-8") from None
                yield number, line.removeprefix(_BOM) if number == 1 else line
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None


def text_lines(path: FilePath) -> Iterator[tuple[str, str]]:
    """("path:LINE", text) of every non-blank line."""
    for number, line in _decoded_lines(path):
        line = line.rstrip("\n")
        if line.strip():
            yield f"{path}:{number}", line


def _object(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EvalError(f"{where} is {json_kind(value)}, expected a JSON object of fields")
    return value


def _parse(where: str, text: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError; RecursionError is not expected from data files
        raise EvalError(f"{where} is not valid JSON ({one_line(exc)}); expected {expected}") from None


def _json_array(path: FilePath) -> Iterator[Record]:
    try:
        text = path.read_bytes().decode("utf-8").removeprefix(_BOM)
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None
    except UnicodeDecodeError as exc:
        raise EvalError(f"{path} is not UTF-8 text (byte {exc.start + 1}); save the file as UTF-8") from None
    rows = _parse(str(path), text, "a JSON array of row objects (or one JSON object per line)")
    if not isinstance(rows, list):
        raise EvalError(f"{path} holds {json_kind(rows)}, expected a JSON array of row objects")
    for index, row in enumerate(rows, 1):
        yield f"{path} row {index}", _object(f"{path} row {index}", row)


def _starts_array(path: FilePath) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("utf-8", errors="replace").removeprefix(_BOM).lstrip()
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None
    return head.startswith("[")


def json_records(path: FilePath) -> Iterator[Record]:
    """Rows of a .jsonl file (one JSON object per line; blank lines skipped) or a .json file (a JSON array of
    objects, or JSON lines as the datasets library also accepts), read lazily where the format allows."""
    if path.suffix == ".json" and _starts_array(path):
        yield from _json_array(path)
        return
    for where, line in text_lines(path):
        yield where, _object(where, _parse(where, line, "one JSON object per line"))


def delimited_rows(path: FilePath, delimiter: str, literal: bool) -> Iterator[tuple[str, list[str]]]:
    """("path:LINE", fields) of every non-blank row of a delimited text table.

    `literal` reads every character as text (csv.QUOTE_NONE): GLUE's TSVs hold unbalanced quotes and its own
    loaders read them so. Otherwise standard CSV quoting, where a quoted field may span lines (LINE is the last).
    """
    reader = csv.reader((line for _, line in _decoded_lines(path)), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if literal else csv.QUOTE_MINIMAL)
    kind = "tab" if delimiter == "\t" else "comma"
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                yield f"{path}:{reader.line_num}", fields
    except csv.Error as exc:  # an unclosed quote, a field over csv's size limit
        raise EvalError(f"{path}:{reader.line_num} is not a valid {kind}-separated row ({one_line(exc)})") from None


def header_records(path: FilePath, rows: Iterable[tuple[str, list[str]]], header: Sequence[str]) -> Iterator[Record]:
    """Rows of a text table as {column: text} under `header`.

    A row with another number of fields is skipped and counted (the count printed once the file is read): cut
    rows are known in GLUE's QQP TSV, and the transformers and HF glue readers skip short rows too. A file where
    no row fits its header is an error naming the first row.
    """
    skipped, first_bad, kept = 0, "", 0
    for where, fields in rows:
        if len(fields) != len(header):
            skipped, first_bad = skipped + 1, first_bad or f"{where} has {len(fields)} fields"
            continue
        kept += 1
        yield where, dict(zip(header, fields))
    if skipped and not kept:
        raise EvalError(f"{first_bad} but the header names {len(header)} ({', '.join(header)}); no row of {path} "
                        f"fits its header")
    if skipped:
        print(f"{path}: skipped {skipped} rows whose field count is not the header's {len(header)}")


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


def saved_split(folder: Path, split: str) -> Iterator[Record]:
    """Rows of one split of a `datasets.save_to_disk` folder (dataset_dict.json, one sub-folder per split)."""
    from datasets import load_from_disk

    try:
        saved = load_from_disk(str(folder))  # memory-mapped: loading every split to read one costs nothing
    except Exception as exc:  # datasets, pyarrow and json raise unrelated types for a damaged folder
        raise EvalError(f"{folder} cannot be read as a datasets.save_to_disk folder ({one_line(exc)})") from None
    if not hasattr(saved, "keys") or split not in saved:
        held = ", ".join(saved.keys()) if hasattr(saved, "keys") else "one unnamed split"
        raise EvalError(f"{folder} (a datasets.save_to_disk folder) has no {split} split; it holds {held}")
    return numbered(f"{folder} [{split}]", saved[split])


# ------------------------------------------------------------------------------------- folder conventions


def name_key(name: str) -> str:
    """How local names are compared: case, - and _ ignored, so QNLI, qnli, SST-2 and sst2 name one task."""
    return re.sub(r"[-_]", "", name).lower()


def find_child(folder: Path, name: str, directory: bool) -> Optional[Path]:
    """The folder (or file) in `folder` whose name equals `name` up to name_key; None when there is none."""
    try:
        matches = sorted(p for p in folder.iterdir()
                         if name_key(p.name) == name_key(name) and (p.is_dir() if directory else p.is_file()))
    except OSError as exc:
        raise _cannot_read(folder, exc) from None
    if len(matches) > 1:
        raise EvalError(f"{folder} holds {' and '.join(p.name for p in matches)}, all read as {name}; keep one")
    return matches[0] if matches else None


def hub_snapshot(root: Path) -> Path:
    """`root`, or its snapshot when it is a hub-cache repository folder (.../datasets--owner--name keeps the
    files under snapshots/<commit>/), so that pointing at the repository folder or at its snapshot both work."""
    snapshots = root / "snapshots"
    if not root.name.startswith("datasets--") or not snapshots.is_dir():
        return root
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise EvalError(f"{root} is a hub cache folder with {len(found)} snapshots; pass one: {snapshots}/<commit>")
    return found[0]


def zip_member(archive: Path, names: Sequence[str]) -> Optional[zipfile.Path]:
    """The first of `names` (compared by name_key) inside a download's zip, read in place; None when absent."""
    try:
        with zipfile.ZipFile(archive) as handle:
            members = {name_key(m): m for m in handle.namelist()}
    except _READ_ERRORS as exc:
        raise EvalError(f"{archive} cannot be read as a zip archive ({one_line(exc)})") from None
    found = next((members[name_key(n)] for n in names if name_key(n) in members), None)
    return zipfile.Path(archive, at=found) if found else None


def split_files(folder: Path, names: Sequence[str], suffixes: Sequence[str]) -> list[Path]:
    """The files of one split in `folder`: `<name><suffix>`, hub shards `<name>-00000-of-00002<suffix>`, or the
    parquet files of a `<name>/` folder (the hub's parquet conversion). `names` spell the split (validation, dev).

    One spelling in one form only, so that no row is read twice; an empty list when there is none.
    """
    forms: dict[str, list[Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise _cannot_read(folder, exc) from None
    for entry in entries:
        lower = entry.name.lower()
        for name in names:
            if entry.is_dir() and lower == name and any(entry.glob("*.parquet")):
                forms[f"{name}/*.parquet"] = sorted(entry.glob("*.parquet"))
            elif entry.is_file() and entry.suffix in suffixes:
                shard = lower.startswith(name + "-")
                if shard or lower == name + entry.suffix:
                    forms.setdefault(f"{name}{'-*' if shard else ''}{entry.suffix}", []).append(entry)
    if len(forms) > 1:
        raise EvalError(f"{folder} holds {names[0]} as {' and '.join(forms)}; keep one so that no row is read twice")
    return next(iter(forms.values()), [])
