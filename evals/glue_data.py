"""GLUE task definitions and data sources: the hub (`nyu-mll/glue`), local files (--data-dir) in the layouts
people have on disk, or offline stand-ins derived at run time from real data (see evals/standins.py).

Local layouts, per task folder DIR/<task>, named as the task or as the GLUE download names it, in any case
(qnli, QNLI, SST-2, sts-b); DIR may be a hub-cache folder of nyu-mll/glue or its snapshot:
  GLUE download    train.tsv, dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv) in the download's columns
                   (CoLA header-less: source, label, marker, sentence; MRPC Quality, #1 String, #2 String; STS-B
                   score; QQP is_duplicate; MNLI sentence1, sentence2, gold_label), labels by name or number;
  per-split files  <split>.{parquet,jsonl,json,csv,tsv}, hub shards <split>-00000-of-0000N.parquet (the layout
                   of the hub repository and of its cache snapshot) or <split>/*.parquet, in the hub's columns;
  save_to_disk     dataset_dict.json + one folder per split (`load_dataset("nyu-mll/glue", task).save_to_disk`).
Every layout feeds the same row check (`_row`): the same rows, in file order, with nyu-mll/glue's label indices.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .common import EvalError, json_kind, one_line
from .data_files import (Record, delimited_rows, find_child, header_records, hub_snapshot, json_records, numbered,
                         saved_split, split_files, table_records)

HUB_DATASET = "nyu-mll/glue"
TYPED_SUFFIXES = (".parquet", ".jsonl", ".json")
TABLE_SUFFIXES = (".tsv", ".csv")  # text: a label may be its name
DEV_FILES = {"validation": "dev", "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"}
SMALL_TASK_SEEDS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    columns: tuple[str, Optional[str]]
    """The text column(s) in the hub's schema; a second one makes it a sentence-pair task."""
    num_labels: int
    """1 = regression (STS-B)."""
    dev_splits: tuple[str, ...] = ("validation",)
    label_names: tuple[str, ...] = ()
    """nyu-mll/glue's label names in its order: a name in a text table reads as its index, so results compare."""
    default_seeds: tuple[int, ...] = (1,)
    metric_task: str = ""
    """Which GLUE metric set scores it (the task itself unless a stand-in borrows one)."""
    stand_in: bool = False

    def __post_init__(self) -> None:
        if not self.metric_task:
            object.__setattr__(self, "metric_task", self.name)

    @property
    def label(self) -> str:
        return self.name + (" (stand-in)" if self.stand_in else "")

    def split_suffix(self, split: str) -> str:
        return {"validation_matched": "_m", "validation_mismatched": "_mm"}.get(split, "")


NLI_2 = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("cola", ("sentence", None), 2, default_seeds=SMALL_TASK_SEEDS, label_names=("unacceptable", "acceptable")),
    TaskSpec("sst2", ("sentence", None), 2, label_names=("negative", "positive")),
    TaskSpec("mrpc", ("sentence1", "sentence2"), 2, default_seeds=SMALL_TASK_SEEDS,
             label_names=("not_equivalent", "equivalent")),
    TaskSpec("stsb", ("sentence1", "sentence2"), 1, default_seeds=SMALL_TASK_SEEDS),
    TaskSpec("qqp", ("question1", "question2"), 2, label_names=("not_duplicate", "duplicate")),
    TaskSpec("mnli", ("premise", "hypothesis"), 3, dev_splits=("validation_matched", "validation_mismatched"),
             label_names=("entailment", "neutral", "contradiction")),
    TaskSpec("qnli", ("question", "sentence"), 2, label_names=NLI_2),
    TaskSpec("rte", ("sentence1", "sentence2"), 2, default_seeds=SMALL_TASK_SEEDS, label_names=NLI_2),
)}


@dataclass(frozen=True)
class GlueDownload:
    """How the GLUE download (gluebenchmark.com's zips, download_glue_data.py) lays out one task's TSVs."""
    folder: str
    """Its folder name, for messages (any spelling that data_files.name_key equates is found)."""
    aliases: tuple[tuple[str, str], ...] = ()
    """(hub column, the download's column) where they differ; the hub's name wins when a header has both."""
    headerless: tuple[str, ...] = ()
    """CoLA's train.tsv and dev.tsv have no header: their columns, in order."""


DOWNLOADS = {
    "cola": GlueDownload("CoLA", headerless=("source", "label", "original_label", "sentence")),
    "sst2": GlueDownload("SST-2"),
    "mrpc": GlueDownload("MRPC", (("sentence1", "#1 String"), ("sentence2", "#2 String"), ("label", "Quality"))),
    "stsb": GlueDownload("STS-B", (("label", "score"),)),
    "qqp": GlueDownload("QQP", (("label", "is_duplicate"),)),
    "mnli": GlueDownload("MNLI", (("premise", "sentence1"), ("hypothesis", "sentence2"), ("label", "gold_label"))),
    "qnli": GlueDownload("QNLI"),
    "rte": GlueDownload("RTE"),
}

# Offline: QNLI-style pairs from SQuAD v2 and BoolQ-style yes/no from HotpotQA (both binary, accuracy).
STANDIN_TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("qnli", ("question", "sentence"), 2, stand_in=True),
    TaskSpec("boolq", ("question", "passage"), 2, metric_task="qnli", stand_in=True),
)}


@dataclass
class TaskData:
    train: list[dict[str, Any]]
    dev: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Rows: {"text_a": str, "text_b": str | None, "label": int | float}."""


def _label(spec: TaskSpec, where: str, value: Any) -> Any:
    """The row's label, None for an unlabelled row, or an EvalError saying what the task expects."""
    if value is None or (not isinstance(value, bool) and value == -1):  # GLUE marks hidden test labels -1
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.num_labels == 1:
        if not number or not math.isfinite(value):
            raise EvalError(f"{where}: label {value!r} is not a finite number; {spec.name} is scored by regression")
        return value
    if number and float(value).is_integer() and 0 <= value < spec.num_labels:
        return int(value)
    raise EvalError(f"{where}: label {value!r} is out of range for {spec.name}; expected an integer "
                    f"0..{spec.num_labels - 1} (-1 marks an unlabelled row)")


def _row(spec: TaskSpec, where: str, record: dict[str, Any]) -> Optional[dict[str, Any]]:
    """{"text_a", "text_b", "label"} of one record, None when it is unlabelled; EvalError for a malformed one."""
    needed = [c for c in (*spec.columns, "label") if c]
    missing = [c for c in needed if c not in record or (c != "label" and record[c] is None)]
    if missing:
        raise EvalError(f"{where} lacks {', '.join(missing)}; {spec.name} rows need {', '.join(needed)}")
    for column in filter(None, spec.columns):
        if not isinstance(record[column], str):
            raise EvalError(f"{where}: {column} is {json_kind(record[column])}, expected text")
    label = _label(spec, where, record["label"])
    if label is None:
        return None
    a, b = spec.columns
    return {"text_a": record[a], "text_b": record[b] if b else None, "label": label}


def _rows(spec: TaskSpec, records: Iterable[Record], limit: Optional[int], layout: str = "") -> list[dict[str, Any]]:
    """Checked rows up to `limit`; `layout` (what the source is read as) ends the message of a bad row."""
    rows = []
    for where, record in records:
        try:
            row = _row(spec, where, record)
        except EvalError as exc:
            raise EvalError(f"{exc}{layout}") from None
        if row is not None:
            rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _hub_split(spec: TaskSpec, split: str) -> Iterable[Record]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(HUB_DATASET, spec.name, split=split)
    except Exception as exc:  # network, auth and missing-config errors all end here for the user
        raise EvalError(f"could not load {HUB_DATASET}/{spec.name} [{split}] from the hub ({one_line(exc)}); "
                        f"use --data-dir with local files or --stand-in offline") from None
    return numbered(f"{HUB_DATASET}/{spec.name} [{split}]", dataset)


def _needed(spec: TaskSpec) -> list[str]:
    return [c for c in (*spec.columns, "label") if c]


def _labels_text(spec: TaskSpec, names: bool) -> str:
    if spec.num_labels == 1:
        return "labels are similarity scores (numbers)"
    indices = f"0..{spec.num_labels - 1}"
    if names:
        return f"labels {' / '.join(spec.label_names)} or {indices}"
    return f"labels {indices} = {', '.join(spec.label_names)} (nyu-mll/glue's order; names only in .tsv/.csv)"


def _read_as(spec: TaskSpec, source: str, form: str) -> str:
    """The tail of a bad row's message: what the file was read as, so the user sees which layout to match."""
    if form in TABLE_SUFFIXES:
        aliases = dict(DOWNLOADS[spec.name].aliases)
        columns = ", ".join(c + (f" (or {aliases[c]})" if c in aliases else "") for c in _needed(spec))
        kind = "tab-separated, read literally as GLUE writes it" if form == ".tsv" else "comma-separated"
        bare = (" (CoLA's GLUE download: no header, columns source, label, marker, sentence)"
                if DOWNLOADS[spec.name].headerless else "")
        return f"; {source} is read as a table ({kind}) whose header names {columns}{bare}; {_labels_text(spec, True)}"
    return f"; {source} is read as rows with {', '.join(_needed(spec))}; {_labels_text(spec, False)}"


def _table_label(spec: TaskSpec, where: str, text: str) -> Any:
    """A text table's label as the typed layouts hold it (`_label` then checks every layout alike): a label name
    is its index in nyu-mll/glue's order, a number is that number, an empty field is an unlabelled row."""
    text = text.strip()
    if text in spec.label_names:
        return spec.label_names.index(text)
    for parse in (float,) if spec.num_labels == 1 else (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if not text:
        return None
    if spec.num_labels == 1:
        return text  # `_label` says a regression label must be a number
    raise EvalError(f"{where}: label {text!r} is not a {spec.name} label")


def _table_records(spec: TaskSpec, path: Path) -> Iterable[Record]:
    """Rows of a .tsv (the GLUE download; read literally) or .csv (standard quoting) under the hub's columns."""
    rows = delimited_rows(path, "\t" if path.suffix == ".tsv" else ",", literal=path.suffix == ".tsv")
    first = next(rows, None)
    if first is None:
        return
    where, header = first
    layout, download = _read_as(spec, path.name, path.suffix), DOWNLOADS[spec.name]
    if download.headerless and len(header) == len(download.headerless) and not set(_needed(spec)) & set(header):
        header, rows = list(download.headerless), itertools.chain([first], rows)
    aliases = dict(download.aliases)
    columns = {c: c if c in header else aliases.get(c) for c in _needed(spec)}
    missing = [c for c, name in columns.items() if name not in header]
    if missing:
        raise EvalError(f"{where}: the header ({', '.join(header)}) has no {', '.join(missing)} column{layout}")
    for where, record in header_records(path, rows, header):
        fields = {c: record[name] for c, name in columns.items()}
        try:
            fields["label"] = _table_label(spec, where, fields["label"])
        except EvalError as exc:
            raise EvalError(f"{exc}{layout}") from None
        yield where, fields


def _file_records(spec: TaskSpec, path: Path) -> Iterable[Record]:
    if path.suffix in TABLE_SUFFIXES:
        return _table_records(spec, path)
    return table_records(path, "parquet") if path.suffix == ".parquet" else json_records(path)


def _layouts(split: str) -> str:
    download = "train.tsv" if split == "train" else f"{DEV_FILES[split]}.tsv"
    return (f"the GLUE download ({download}), per-split files ({split}.{{parquet,jsonl,json,csv,tsv}} or hub shards "
            f"{split}-00000-of-00001.parquet) or a datasets.save_to_disk folder (dataset_dict.json)")


def _task_folder(spec: TaskSpec, data_dir: str) -> Path:
    root = hub_snapshot(Path(data_dir))
    folder = find_child(root, spec.name, directory=True)
    if folder is None:
        raise EvalError(f"no train file for {spec.name} under {root}: it has no {spec.name} (or "
                        f"{DOWNLOADS[spec.name].folder}) folder; expected {root}/{spec.name}/ holding "
                        f"{_layouts('train')}")
    return folder


def _local_split(spec: TaskSpec, folder: Path, split: str) -> tuple[Iterable[Record], str]:
    """One split's records from whichever layout `folder` holds, and what they are read as (for row errors)."""
    if (folder / "dataset_dict.json").is_file():
        return saved_split(folder, split), _read_as(spec, f"{folder} (save_to_disk)", "saved")
    files = split_files(folder, [n for n in (split, DEV_FILES.get(split)) if n], TYPED_SUFFIXES + TABLE_SUFFIXES)
    if not files:
        held = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise EvalError(f"no {split} file for {spec.name} under {folder} (it holds {held}); expected "
                        f"{_layouts(split)}")
    records = itertools.chain.from_iterable(_file_records(spec, f) for f in files)
    return records, _read_as(spec, files[0].name if len(files) == 1 else f"{folder.name}/{split}*", files[0].suffix)


def _standin(spec: TaskSpec, limit: Optional[int]) -> TaskData:
    from .standins import STANDINS

    # Built whole, then capped: the builders shuffle each split with their seed, so a capped prefix is neither
    # one article nor one label, and --limit keeps the by-article split intact.
    splits = {name: numbered(f"{spec.name} stand-in [{name}]", rows) for name, rows in STANDINS[spec.name]().items()}
    return TaskData(_rows(spec, splits["train"], limit), {"validation": _rows(spec, splits["validation"], limit)})


def load_task(spec: TaskSpec, source: str, data_dir: Optional[str], limit: Optional[int]) -> TaskData:
    """Train rows and every dev split of one task, from the chosen source; `limit` caps each split."""
    if source == "stand-in":
        return _standin(spec, limit)
    folder = _task_folder(spec, data_dir) if source == "local" else None

    def rows(split: str) -> list[dict[str, Any]]:
        records, layout = _local_split(spec, folder, split) if folder else (_hub_split(spec, split), "")
        return _rows(spec, records, limit, layout)

    data = TaskData(rows("train"), {split: rows(split) for split in spec.dev_splits})
    empty = [split for split, checked in {"train": data.train, **data.dev}.items() if not checked]
    if empty:
        raise EvalError(f"{spec.name}: {', '.join(empty)} has no labelled rows; check the data")
    return data
