"""GLUE task definitions and data sources: the hub (`nyu-mll/glue`), a local folder in the hub's layout,
or offline stand-ins derived at run time from real data (see evals/standins.py)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .common import EvalError, json_kind, one_line
from .data_files import Record, json_records, numbered, table_records

HUB_DATASET = "nyu-mll/glue"
LOCAL_EXTENSIONS = {"parquet": "parquet", "jsonl": "json", "json": "json", "csv": "csv", "tsv": "csv"}
SMALL_TASK_SEEDS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    columns: tuple[str, Optional[str]]
    """The text column(s) in the hub's schema; a second one makes it a sentence-pair task."""
    num_labels: int
    """1 = regression (STS-B)."""
    dev_splits: tuple[str, ...] = ("validation",)
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


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("cola", ("sentence", None), 2, default_seeds=SMALL_TASK_SEEDS),
    TaskSpec("sst2", ("sentence", None), 2),
    TaskSpec("mrpc", ("sentence1", "sentence2"), 2, default_seeds=SMALL_TASK_SEEDS),
    TaskSpec("stsb", ("sentence1", "sentence2"), 1, default_seeds=SMALL_TASK_SEEDS),
    TaskSpec("qqp", ("question1", "question2"), 2),
    TaskSpec("mnli", ("premise", "hypothesis"), 3, dev_splits=("validation_matched", "validation_mismatched")),
    TaskSpec("qnli", ("question", "sentence"), 2),
    TaskSpec("rte", ("sentence1", "sentence2"), 2, default_seeds=SMALL_TASK_SEEDS),
)}

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


def _rows(spec: TaskSpec, records: Iterable[Record], limit: Optional[int]) -> list[dict[str, Any]]:
    rows = []
    for where, record in records:
        row = _row(spec, where, record)
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


def _file_records(path: Path) -> Iterable[Record]:
    ext = path.suffix.lstrip(".")
    if LOCAL_EXTENSIONS[ext] == "json":
        return json_records(path)
    return table_records(path, LOCAL_EXTENSIONS[ext], **({"delimiter": "\t"} if ext == "tsv" else {}))


def _local_split(spec: TaskSpec, data_dir: str, split: str) -> Iterable[Record]:
    folder = Path(data_dir) / spec.name
    files = sorted(p for p in folder.glob(f"{split}*") if p.suffix.lstrip(".") in LOCAL_EXTENSIONS
                   and not p.name.startswith(f"{split}_"))  # validation_matched is not `validation`
    if not files:
        raise EvalError(f"no {split} file for {spec.name} under {folder}; expected {folder}/{split}.{{parquet,jsonl,"
                        f"json,csv,tsv}} with columns {', '.join(c for c in spec.columns if c)}, label")
    return itertools.chain.from_iterable(_file_records(f) for f in files)


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
    load = (lambda split: _local_split(spec, data_dir, split)) if source == "local" else (
        lambda split: _hub_split(spec, split))
    data = TaskData(_rows(spec, load("train"), limit), {s: _rows(spec, load(s), limit) for s in spec.dev_splits})
    if not data.train or not all(data.dev.values()):
        raise EvalError(f"{spec.name}: a split has no labelled rows; check the data")
    return data
