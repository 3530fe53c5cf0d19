"""SCROLLS data for the encoder-shaped tasks: the hub (`tau/scrolls`), local files in its layouts, or stand-ins.

Local layouts (--data-dir DIR; task names in any case; DIR may be a hub-cache folder or snapshot): DIR/<task>/
holding <split>.jsonl (the official <task>.zip extracted), <split>.{json,parquet}, hub shards
<split>-00000-of-0000N.parquet or <split>/*.parquet, or a datasets.save_to_disk folder; or DIR/<task>.zip itself,
read in place (its members <task>/<split>.jsonl).

SCROLLS rows are {"id", "input", "output"} with the query prepended to the document, separated by a blank
line. contract_nli: query = the hypothesis, output = "Entailment" | "Contradiction" | "Not mentioned".
quality: query = the question followed by four lines "(A) ..." .. "(D) ...", output = the correct option's
text. qasper: query = a question about an NLP paper, output = one reference answer ("Yes", "No",
"Unanswerable", extractive spans or free text); a question with several references repeats once per
reference under the same id. Parsed here into {"query", "document", "options"?, "label"} and, for qasper,
{"id", "query", "document", "answers"} with the references of one id merged on the dev split.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .common import EvalError, json_kind, one_line
from .data_files import (Record, find_child, hub_snapshot, json_records, numbered, saved_split, split_files,
                         table_records, zip_member)

HUB_DATASET = "tau/scrolls"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
_OPTION = re.compile(r"^\s*\(([A-D])\)\s*(.*?)\s*$")


@dataclass(frozen=True)
class ScrollsTask:
    name: str
    kind: str
    """classification (labels from the data) | multiple_choice (4 options) | extractive_qa (answer type + span)."""
    standin: str
    """Which long stand-in replaces it offline (evals/standins.py; qasper's is evals/qasper_standin.py)."""


TASKS = {
    "contract_nli": ScrollsTask("contract_nli", "classification", "nli"),
    "quality": ScrollsTask("quality", "multiple_choice", "multiple_choice"),
    "qasper": ScrollsTask("qasper", "extractive_qa", "qasper"),
}

# Why the other four of the seven SCROLLS tasks are not scored: their outputs are free text.
NOT_SCORED = {
    "gov_report": "abstractive summary (generation; ROUGE)",
    "summ_screen_fd": "abstractive summary (generation; ROUGE)",
    "qmsum": "query-based summary (generation; ROUGE)",
    "narrative_qa": "free-form answers written by annotators (generation; token F1)",
}


def split_query(text: str) -> tuple[str, str]:
    query, sep, document = text.partition("\n\n")
    if not sep:
        raise ValueError("no blank line between query and document")
    return query.strip(), document.strip()


def parse_quality(text: str, output: str) -> dict[str, Any]:
    """question + (A)..(D) options + story -> row with the gold option's index."""
    lines = text.split("\n")
    options: dict[str, str] = {}
    question_lines, end = [], 0
    for i, line in enumerate(lines):
        match = _OPTION.match(line)
        if match:
            options[match[1]] = match[2]
            end = i + 1
        elif not options:
            question_lines.append(line)
        elif len(options) == 4:
            break
    if sorted(options) != list("ABCD"):
        raise ValueError("options (A)-(D) not found")
    texts = [options[k] for k in "ABCD"]
    if output.strip() not in texts:
        raise ValueError("the output is none of the options")
    return {"query": " ".join(q.strip() for q in question_lines if q.strip()), "options": texts,
            "document": "\n".join(lines[end:]).strip(), "label": texts.index(output.strip())}


def parse_row(task: ScrollsTask, record: dict[str, Any]) -> dict[str, Any]:
    if task.kind == "multiple_choice":
        return parse_quality(record["input"], record["output"])
    query, document = split_query(record["input"])
    if task.kind == "extractive_qa":
        return {"id": record["id"], "query": query, "document": document, "answers": [record["output"].strip()]}
    return {"query": query, "document": document, "label": record["output"].strip()}


def group_references(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per id holding every reference answer of that id (how SCROLLS scores: max over references)."""
    grouped: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["id"] in grouped:
            grouped[row["id"]]["answers"] += row["answers"]
        else:
            grouped[row["id"]] = {**row, "answers": list(row["answers"])}
    return list(grouped.values())


def _local_records(task: ScrollsTask, split: str, data_dir: str) -> Iterable[Record]:
    root = hub_snapshot(Path(data_dir))
    folder = find_child(root, task.name, directory=True)
    if folder is not None and (folder / "dataset_dict.json").is_file():
        return saved_split(folder, split)
    files = split_files(folder, (split,), LOCAL_SUFFIXES) if folder is not None else []
    if files:
        return itertools.chain.from_iterable(table_records(f, "parquet") if f.suffix == ".parquet" else json_records(f)
                                             for f in files)
    archive = find_child(root, f"{task.name}.zip", directory=False)
    member = zip_member(archive, (f"{task.name}/{split}.jsonl", f"{split}.jsonl")) if archive else None
    if member is not None:
        return json_records(member)
    raise EvalError(f"no {split} file for {task.name} under {folder or root}; expected {root}/{task.name}/"
                    f"{split}.jsonl (SCROLLS' {task.name}.zip extracted, or that zip itself in {root}), "
                    f"{split}.parquet or hub shards {split}-00000-of-00001.parquet, or a datasets.save_to_disk folder, "
                    f"with SCROLLS fields id, input, output")


def _records(task: ScrollsTask, split: str, data_dir: Optional[str]) -> Iterable[Record]:
    from datasets import load_dataset

    if data_dir is not None:
        return _local_records(task, split, data_dir)
    try:
        dataset = load_dataset(HUB_DATASET, task.name, split=split)
    except Exception as exc:  # network / auth / config errors: one line for the user
        raise EvalError(f"could not load {HUB_DATASET}/{task.name} [{split}] ({one_line(exc)}); use "
                        f"--data-dir with local files or --stand-in offline") from None
    return numbered(f"{HUB_DATASET}/{task.name} [{split}]", dataset)


def _checked(where: str, record: dict[str, Any]) -> dict[str, Any]:
    """A record with the SCROLLS fields, or an EvalError naming the row (a broken file, not a format quirk)."""
    missing = [k for k in ("id", "input", "output") if record.get(k) is None]
    if missing:
        raise EvalError(f"{where} lacks {', '.join(missing)}; SCROLLS rows need id, input, output")
    wrong = [k for k, kinds in (("id", (str, int)), ("input", str), ("output", str))
             if not isinstance(record[k], kinds) or isinstance(record[k], bool)]
    if wrong:
        raise EvalError(f"{where}: {wrong[0]} is {json_kind(record[wrong[0]])}, expected text")
    return record


def load_split(task: ScrollsTask, split: str, data_dir: Optional[str], limit: Optional[int]) -> list[dict[str, Any]]:
    """Parsed rows; rows whose text does not follow the SCROLLS layout are skipped and counted (a clear error if
    none parse); a row without the SCROLLS fields is an error."""
    rows, bad = [], 0
    for where, record in _records(task, split, data_dir):
        record = _checked(where, record)
        try:
            rows.append(parse_row(task, record))
        except ValueError:
            bad += 1
        if limit is not None and len(rows) >= limit:
            break
    if bad:
        print(f"{task.name} [{split}]: skipped {bad} rows that do not follow the SCROLLS format")
    if not rows:
        raise EvalError(f"{task.name} [{split}]: no row follows the SCROLLS format (query, blank line, document)")
    return rows


def standin_splits(task: ScrollsTask, limit: Optional[int], target_tokens: int, tokenizer: Any) -> dict[str, list]:
    """HotpotQA-derived long rows in the parsed layout (evals/standins.py builds them)."""
    from .standins import LETTERS, long_standin

    if task.kind == "extractive_qa":
        from .qasper_standin import qasper_standin

        rows = qasper_standin(limit=limit, target_tokens=target_tokens, tokenizer=tokenizer)
        return {name: [{"id": r["id"], "query": r["question"], "document": r["context"], "answers": [r["answer"]]}
                       for r in split] for name, split in rows.items()}
    splits = long_standin(task.standin, limit=limit, target_tokens=target_tokens, tokenizer=tokenizer)
    if task.kind == "multiple_choice":
        return {name: [{"query": r["question"], "document": r["context"], "options": r["options"],
                        "label": LETTERS.index(r["answer"])} for r in rows] for name, rows in splits.items()}
    return {name: [{"query": r["hypothesis"], "document": r["context"], "label": r["label"]} for r in rows]
            for name, rows in splits.items()}
