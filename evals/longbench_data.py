"""LongBench rows for `evals.longbench`: loaded from the hub, from LongBench's own files, or built as stand-ins,
then checked and reduced to what each protocol reads. Every row problem is a one-line EvalError naming the row.

Sources per task:
  hub         THUDM/LongBench (config = task, split test) and THUDM/LongBench-v2 (split train).
  --data-dir  LongBench's own files (names in any case; DIR may be a hub-cache folder or snapshot): v1 from the
              repo's data.zip, read in place as DIR/data.zip or extracted as DIR/data/<task>.jsonl or
              DIR/<task>.jsonl; v2 from the v2 repo's data.json (a JSON list) as DIR/data.json,
              DIR/longbench_v2/data.json, DIR/longbench_v2.json or DIR/longbench_v2.jsonl.
  --stand-in  built at run time from HotpotQA (evals/standin_sources.py): passage_retrieval_en and longbench_v2
              from evals/standins.py's ``long_standin`` ("passage_retrieval" with STANDIN_CONTEXT_TOKENS of
              paragraphs, "multiple_choice" with a --max-length context), trec from ``fewshot_standin`` below (a
              LongBench-only shape, kept with the LongBench rows). lsht (Chinese news) has no stand-in: skipped.
"""
from __future__ import annotations

import argparse
import itertools
import random
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from . import standin_sources, standins
from .common import EvalError, json_kind, one_line
from .data_files import FilePath, Record, find_child, hub_snapshot, json_records, numbered, zip_member

HUB_V1, HUB_V2 = "THUDM/LongBench", "THUDM/LongBench-v2"
LETTERS = "ABCD"
CHOICES = tuple(f"choice_{x}" for x in LETTERS)  # v2's own files spell the options out one field each
# Few-shot classification: (text marker, label marker) of the context's examples, as LongBench lays them out.
FEWSHOT_MARKERS = {"trec": ("Question", "Type"), "lsht": ("新闻", "类别")}
V2_FILES = ("longbench_v2.json", "longbench_v2.jsonl", "data.json", "longbench_v2/data.json")
NO_STANDIN = {"lsht": "Chinese news classification; there is no Chinese source to derive a stand-in from"}
# Context size of the passage_retrieval_en and trec stand-ins (LongBench's contexts average 9,289 and 5,177
# words). Their paragraphs and examples are encoded one by one, so this sets how many there are (about 20
# paragraphs, 130 examples), not an input length; the v2 stand-in's context is one input: --max-length tokens.
STANDIN_CONTEXT_TOKENS = 4096
FEWSHOT_LABELS = ("yesno", "year", "number", "entity")  # standin_sources.answer_type's classes
_PARAGRAPH = re.compile(r"Paragraph (\d+): ")

Row = dict[str, Any]


def split_paragraphs(context: str) -> list[str]:
    """"Paragraph 1: ... Paragraph 2: ..." -> texts in order (numbering checked to be 1..n)."""
    parts = _PARAGRAPH.split(context)
    numbers, texts = [int(n) for n in parts[1::2]], [t.strip() for t in parts[2::2]]
    if not texts or numbers != list(range(1, len(texts) + 1)):
        raise ValueError("context is not numbered 'Paragraph 1: ...', 'Paragraph 2: ...'")
    return texts


def _marker(key: str) -> str:
    return rf"{key}[ \t]*[:：][ \t]*"  # ASCII or full-width colon


def parse_examples(context: str, text_key: str, label_key: str) -> list[tuple[str, str]]:
    """A few-shot context -> [(text, label), ...].

    Each example starts at a line beginning with ``<text_key>:`` and runs to the first following line that
    begins with ``<label_key>:``; the rest of that line is the label. Texts may span lines; anything after a
    label line up to the next example is ignored. Colons may be ASCII or full-width. ValueError when there is
    no example, an example has no label line, or a text or label is empty.
    """
    pieces = re.split(rf"(?:^|\n)[ \t]*{_marker(text_key)}", context)[1:]  # [0] is what precedes example 1
    if not pieces:
        raise ValueError(f"no '{text_key}: ...' example")
    label_line = re.compile(rf"\n[ \t]*{_marker(label_key)}([^\n]*)")
    examples = []
    for k, piece in enumerate(pieces, 1):
        found = label_line.search(piece)
        if found is None:
            raise ValueError(f"example {k} has no '{label_key}: ...' line")
        text, label = piece[:found.start()].strip(), found.group(1).strip()
        if not text or not label:
            raise ValueError(f"example {k} has an empty {'text' if not text else 'label'}")
        examples.append((text, label))
    return examples


def strip_query(text: str, text_key: str, label_key: str) -> str:
    """The unlabelled input without an optional leading ``<text_key>:`` and trailing ``<label_key>:`` line."""
    text = re.sub(rf"\n[ \t]*{label_key}[ \t]*[:：]$", "", text.rstrip())
    return re.sub(rf"^\s*{_marker(text_key)}", "", text).strip()


def _name(task: str, position: int, record: dict[str, Any]) -> str:
    return f"{task} row {position}" + (f" (_id {record['_id']})" if record.get("_id") else "")


def _require(task: str, position: int, record: dict[str, Any], where: str, text: tuple[str, ...],
             lists: tuple[str, ...] = ()) -> None:
    """Every field in `text` a non-empty string, every field in `lists` a non-empty list of strings."""
    name = _name(task, position, record)
    missing = [k for k in (*text, *lists) if record.get(k) in (None, "", [])]
    if missing:
        raise EvalError(f"{name} lacks {', '.join(missing)} ({where})")
    for key in text:
        if not isinstance(record[key], str):
            raise EvalError(f"{name}: {key} is {json_kind(record[key])}, expected text ({where})")
    for key in lists:
        if not isinstance(record[key], list) or not all(isinstance(v, str) for v in record[key]):
            raise EvalError(f"{name}: {key} is {json_kind(record[key])}, expected a list of strings ({where})")


def passage_row(record: dict[str, Any], position: int, where: str) -> Row:
    """{"input", "paragraphs", "answer"}; stand-in records carry their paragraphs already."""
    _require("passage_retrieval_en", position, record, where, ("input", "context"), ("answers",))
    try:
        paragraphs = record.get("paragraphs") or split_paragraphs(record["context"])
    except ValueError as exc:
        raise EvalError(f"{_name('passage_retrieval_en', position, record)}: {exc} ({where})") from None
    return {"input": record["input"], "paragraphs": paragraphs, "answer": record["answers"][0]}


def fewshot_row(task: str, record: dict[str, Any], position: int, where: str) -> Row:
    """{"input", "examples": [(text, label), ...], "answers", "all_classes"} from a LongBench trec/lsht row."""
    _require(task, position, record, where, ("input", "context"), ("answers", "all_classes"))
    text_key, label_key = FEWSHOT_MARKERS[task]
    try:
        examples = parse_examples(record["context"], text_key, label_key)
    except ValueError as exc:
        raise EvalError(f"{_name(task, position, record)}: cannot parse its context in {where} ({exc}); expected "
                        f"'{text_key}: ...' / '{label_key}: ...' example lines") from None
    query = strip_query(record["input"], text_key, label_key)
    if not query:
        raise EvalError(f"{_name(task, position, record)}: the input is empty once its markers are removed ({where})")
    return {"input": query, "examples": examples, "answers": list(record["answers"]),
            "all_classes": list(record["all_classes"])}


def v2_row(record: dict[str, Any], position: int, where: str) -> Row:
    """{"question", "context", "options", "answer", "difficulty", "length"} from a v2 (or stand-in) row."""
    task = "longbench_v2"
    listed = "options" in record
    _require(task, position, record, where, ("question", "context") + (() if listed else CHOICES),
             ("options",) if listed else ())
    options = list(record["options"]) if listed else [record[key] for key in CHOICES]
    if not 2 <= len(options) <= len(LETTERS):
        raise EvalError(f"{_name(task, position, record)} has {len(options)} options, expected 2 to {len(LETTERS)} "
                        f"({where})")
    answer = str(record.get("answer")).strip().upper()
    if answer not in LETTERS[:len(options)]:
        raise EvalError(f"{_name(task, position, record)}: answer {record.get('answer')!r} is not one of "
                        f"{', '.join(LETTERS[:len(options)])} ({where})")
    return {"question": record["question"], "context": record["context"], "options": options,
            "answer": answer, "difficulty": record.get("difficulty"), "length": record.get("length")}


def _find(root: Path, relative: str) -> Optional[Path]:
    """root/relative with every part matched as data_files.find_child matches names (any case, - or _)."""
    found: Optional[Path] = root
    parts = relative.split("/")
    for k, part in enumerate(parts):
        found = find_child(found, part, directory=k < len(parts) - 1) if found is not None else None
    return found


def _local_file(task: str, root: Path) -> Optional[FilePath]:
    if task == "longbench_v2":
        return next(filter(None, (_find(root, name) for name in V2_FILES)), None)
    extracted = next(filter(None, (_find(root, name) for name in (f"{task}.jsonl", f"data/{task}.jsonl"))), None)
    archive = _find(root, "data.zip") if extracted is None else None
    return zip_member(archive, (f"data/{task}.jsonl",)) if archive is not None else extracted


def _local_records(task: str, data_dir: str) -> Iterable[Record]:
    root = hub_snapshot(Path(data_dir))
    path = _local_file(task, root)
    if path is not None:
        return json_records(path)
    if task == "longbench_v2":
        raise EvalError(f"{root / V2_FILES[0]} not found; expected the v2 repo's data.json (a JSON list) as "
                        f"{root}/data.json, {root}/longbench_v2/data.json or {root}/longbench_v2.json, or JSON lines "
                        f"as longbench_v2.jsonl (or leave {task} out with --tasks)")
    raise EvalError(f"{root / task}.jsonl not found; expected LongBench's data.zip in {root} (read in place) or its "
                    f"data/{task}.jsonl extracted to {root}/data/ or {root}/ (or leave {task} out with --tasks)")


def _hub_records(task: str) -> Iterable[Record]:
    from datasets import load_dataset

    hub, config, split = (HUB_V2, None, "train") if task == "longbench_v2" else (HUB_V1, task, "test")
    try:
        dataset = load_dataset(hub, config, split=split)
    except Exception as exc:  # network / auth / loader errors: one line
        raise EvalError(f"could not load {hub}{'/' + config if config else ''} ({one_line(exc)}); "
                        f"use --data-dir with LongBench's files (the v1 repo's data.zip holds <task>.jsonl) "
                        f"or --stand-in") from None
    return numbered(f"{hub}{'/' + config if config else ''} [{split}]", dataset)


def _standin_records(task: str, limit: Optional[int], max_length: int, tokenizer: Any) -> list[dict[str, Any]]:
    # A missing or damaged asset is already an EvalError saying how to reinstall it (evals/standin_sources.py).
    if task == "trec":
        return fewshot_standin(limit=limit, tokenizer=tokenizer)["validation"]
    if task == "passage_retrieval_en":
        return standins.long_standin("passage_retrieval", limit=limit, target_tokens=STANDIN_CONTEXT_TOKENS,
                                     tokenizer=tokenizer)["validation"]
    return standins.long_standin("multiple_choice", limit=limit, target_tokens=max_length,
                                 tokenizer=tokenizer)["validation"]


def task_rows(task: str, args: argparse.Namespace, tokenizer: Any) -> list[Row]:
    """The rows of one task from the source the arguments name, capped at --limit, in protocol form."""
    if args.stand_in:
        records: Iterable[Record] = numbered(f"{task} stand-in", _standin_records(task, args.limit, args.max_length,
                                                                                  tokenizer))
    else:
        records = _local_records(task, args.data_dir) if args.data_dir else _hub_records(task)
    records = itertools.islice(records, args.limit)  # None: all of them
    if task in FEWSHOT_MARKERS:
        return [fewshot_row(task, r, i, where) for i, (where, r) in enumerate(records)]
    if task == "longbench_v2":
        return [v2_row(r, i, where) for i, (where, r) in enumerate(records)]
    return [passage_row(r, i, where) for i, (where, r) in enumerate(records)]


# ------------------------------------------------------------------------- trec-shaped stand-in


def _round_robin(streams: list[Iterator[str]]) -> Iterator[str]:
    """One item from each stream in turn, dropping streams as they run dry."""
    while streams:
        for stream in list(streams):
            item = next(stream, None)
            if item is None:
                streams.remove(stream)
            else:
                yield item


def _fewshot_row(data: Any, index: int, label: str, train: dict[str, list[int]], labels: list[str],
                 seed: int, target: int, tokenizer: Any) -> Row:
    """One trec-shaped row whose input is question ``index``; see ``fewshot_standin``."""
    q = data.questions[index]
    rng = random.Random(f"{seed}:fewshot:{q.qid}")

    def examples(kind: str) -> Iterator[str]:
        pool = train[kind]
        for i in standin_sources.draws(len(pool), rng):
            other = data.questions[pool[i]]
            if not q.titles & {title for title, _ in other.support}:
                yield f"Question: {' '.join(other.question.split())}\nType: {kind}"

    def cost(block: str) -> int:
        return standin_sources.count_tokens(block, tokenizer) + 1

    blocks = standin_sources.pack(target, _round_robin([examples(kind) for kind in labels]), cost)
    rng.shuffle(blocks)
    context = standin_sources.fit(blocks, lambda _: False, "\n".join, target, tokenizer)
    return {"_id": q.qid, "input": " ".join(q.question.split()), "context": context, "answers": [label],
            "all_classes": list(labels)}


def fewshot_standin(limit: Optional[int] = None, seed: int = 0, target_tokens: int = STANDIN_CONTEXT_TOKENS,
                    tokenizer: Any = None, dev_fraction: float = 0.2) -> dict[str, list[Row]]:
    """LongBench-trec-shaped rows from HotpotQA dev: name a question's answer type from labelled examples.

    TREC labels questions by the type of their answer; here the label is ``standin_sources.answer_type`` of the
    HotpotQA answer: yesno, year, number (any other answer with a digit, full dates included) or entity.
    Questions are split by ``in_validation(_id, seed, dev_fraction)``: validation questions are the inputs,
    train questions the in-context examples (as LongBench samples trec's examples from TREC's training set).
    Inputs cycle through the labels (a seeded order within each label), so the labels are balanced and
    chance is 1/k; rows stop when a label runs out. Each row's context holds "Question: ...\\nType: ..."
    blocks (whitespace collapsed, joined by newlines), drawn in turn from each label's training questions that
    share no supporting title with the input, packed to about ``target_tokens`` (``count_tokens``), shuffled.
    Rows ``{"_id", "input", "context", "answers": [label], "all_classes", "idx"}`` in ``{"validation"}``.
    """
    data = standin_sources.hotpot_data()
    pools: dict[str, dict[str, list[int]]] = {"train": {}, "validation": {}}
    for index, q in enumerate(data.questions):
        split = "validation" if standin_sources.in_validation(q.qid, seed, dev_fraction) else "train"
        pools[split].setdefault(standin_sources.answer_type(q.answer), []).append(index)
    labels = [kind for kind in FEWSHOT_LABELS if pools["train"].get(kind) and pools["validation"].get(kind)]
    rng = random.Random(seed)
    inputs = {kind: rng.sample(pools["validation"][kind], len(pools["validation"][kind])) for kind in labels}
    turns = min((len(v) for v in inputs.values()), default=0)
    order = [(kind, inputs[kind][turn]) for turn in range(turns) for kind in labels][:limit]
    rows = [_fewshot_row(data, index, kind, pools["train"], labels, seed, target_tokens, tokenizer) | {"idx": idx}
            for idx, (kind, index) in enumerate(order)]
    return {"validation": rows}
