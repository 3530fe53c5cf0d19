"""Offline stand-ins for GLUE / SCROLLS / LongBench tasks, built at run time from real QA data.

The task builders live here: QNLI-shaped pairs from SQuAD v2, BoolQ-shaped yes/no rows and long
SCROLLS / LongBench-shaped rows from HotpotQA. The source files, their licence and the helpers the builders
share (loading, the split by id, packing contexts into a token budget) are in evals/standin_sources.py.

Nothing derived here is ever written to the repository. Every builder is deterministic for a given ``seed``
and returns ``{split: [row, ...]}`` of plain dicts; ``limit`` keeps at most that many rows PER SPLIT (quick
runs). Scores on these rows are stand-in scores, never the official task's: label them with ``STANDIN_NOTE``.
"""
from __future__ import annotations

import functools
import random
import re
from typing import Any, Callable, Iterator, Optional, Sequence

from .standin_sources import (HotpotData, Row, Splits, answer_type, context_with_distractors, count_tokens, draws,
                              finish_split, fit, hotpot_data, in_validation, is_yes_no, join_paragraphs, pack,
                              squad_articles)

LONG_KINDS = ("passage_retrieval", "multiple_choice", "nli")
LETTERS = "ABCD"
# Sentence boundary: whitespace after ., ! or ?, optionally after a closing quote or bracket, except after
# an initial ("U.S.", "John F.") or a common title abbreviation ("St.", "Dr."). Other abbreviations still
# split wrongly; pairs that this breaks are dropped, not mislabelled (see qnli_standin).
_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "vs")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))"
                           + "".join(rf"(?<!\b{a}\.)" for a in _ABBREVIATIONS) + r"(?<!\b[A-Z]\.)\s+")


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
    articles = squad_articles()
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
    return {split: finish_split(rows, rng, limit) for split, rows in out.items()}


# --------------------------------------------------------------------------------------------- BoolQ


def boolq_standin(limit: Optional[int] = None, seed: int = 0, dev_fraction: float = 0.2) -> Splits:
    """BoolQ-shaped yes/no rows from HotpotQA dev; rows ``{"question", "passage", "label", "idx"}``.

    Every question whose answer is "yes" or "no" (case-insensitive; all are comparison questions) gives
    one row: passage = its supporting paragraphs (the titles named in ``supporting_facts``, in that order)
    as ``title: text`` blocks joined by a blank line; label 1 = yes, 0 = no. A question goes to validation
    iff ``in_validation(_id, seed, dev_fraction)`` (seeded hash of the id). Each split is seeded-shuffled,
    capped at ``limit`` and numbered ``idx`` 0..n-1.
    """
    out: Splits = {"train": [], "validation": []}
    for q in hotpot_data().questions:
        if not is_yes_no(q.answer) or not q.support:
            continue
        split = "validation" if in_validation(q.qid, seed, dev_fraction) else "train"
        label = int(q.answer.strip().lower() == "yes")
        out[split].append({"question": q.question, "passage": join_paragraphs(q.support), "label": label})
    rng = random.Random(seed)
    return {split: finish_split(rows, rng, limit) for split, rows in out.items()}


# ------------------------------------------------------------------------------------ long contexts


def _numbered(paragraphs: list[str]) -> str:
    return "\n\n".join(f"Paragraph {k}: {text}" for k, text in enumerate(paragraphs, 1))


def _passage_retrieval_rows(data: HotpotData, index: int, rng: random.Random, target: int,
                            tokenizer: Any) -> list[Row]:
    """One LongBench passage_retrieval_en-shaped row; see ``long_standin``."""
    q = data.questions[index]
    gold = " ".join(text for _, text in q.support)

    def cost(text: str) -> int:  # "Paragraph NN: " prefix plus the separator, approximately
        return count_tokens(f"Paragraph 10: {text}", tokenizer) + 1

    def others() -> Iterator[str]:
        for i in draws(len(data.questions), rng):
            other = data.questions[i]
            if i != index and other.support and not q.titles & {t for t, _ in other.support}:
                yield " ".join(text for _, text in other.support)

    paragraphs = pack(target - cost(gold), others(), cost)
    paragraphs.insert(rng.randint(0, len(paragraphs)), gold)
    context = fit(paragraphs, lambda p: p is gold, _numbered, target, tokenizer)
    k = next(k for k, p in enumerate(paragraphs, 1) if p is gold)
    return [{"input": q.question, "context": context, "answers": [f"Paragraph {k}"], "all_classes": None,
             "num_paragraphs": len(paragraphs), "gold_index": k, "paragraphs": paragraphs}]


def _wrong_options(data: HotpotData, gold: str, rng: random.Random) -> Optional[list[str]]:
    """Three distinct answers of other questions, of ``gold``'s answer type when that pool has enough."""
    pools = data.answers
    taken = {gold.strip().casefold()}
    picked: list[str] = []
    # The same-type pool first; other non-yes/no types only when it is too small (tiny fixtures).
    for kind in (answer_type(gold), "entity", "number", "year"):
        pool = pools.get(kind, ())
        for i in (draws(len(pool), rng) if pool else ()):
            if pool[i].casefold() not in taken:
                taken.add(pool[i].casefold())
                picked.append(pool[i])
                if len(picked) == 3:
                    return picked
    return None


def _multiple_choice_rows(data: HotpotData, index: int, rng: random.Random, target: int,
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
    _, context = context_with_distractors(data, q, rng, target, tokenizer)
    return [{"context": context, "question": q.question, "options": options, "answer": LETTERS[position]}]


def _nli_rows(data: HotpotData, index: int, rng: random.Random, target: int, tokenizer: Any) -> list[Row]:
    """Two ContractNLI-shaped rows sharing one context (Entailment, NotMentioned); see ``long_standin``."""
    q = data.questions[index]
    if not q.facts or not q.support:
        return []
    paragraphs, context = context_with_distractors(data, q, rng, target, tokenizer)
    present = q.titles | {title for title, _ in paragraphs}
    rows = [{"context": context, "hypothesis": rng.choice(q.facts), "label": "Entailment"}]
    for i in draws(len(data.questions), rng):
        other = data.questions[i]
        if i == index or present & {t for t, _ in other.support}:
            continue
        absent = [fact for fact in other.facts if fact not in context]
        if absent:
            rows.append({"context": context, "hypothesis": rng.choice(absent), "label": "NotMentioned"})
            break
    return rows


_LONG_ROWS: dict[str, Callable[[HotpotData, int, random.Random, int, Any], list[Row]]] = {
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
      (``context_with_distractors``), question = the HotpotQA question, options = the gold answer plus 3
      distinct answers of other questions of the same ``answer_type`` (year / number / entity), the gold at a
      seeded letter; yes/no questions and questions whose answer appears in the question text are skipped. Row
      ``{"context", "question", "options": [4 str], "answer": "A".."D"}``.
    * ``nli`` (ContractNLI-shaped, but only 2 of its 3 classes: there is no Contradiction): per question
      one ``context_with_distractors`` and two rows, hypothesis = one of its supporting-fact sentences (label
      "Entailment"), and a supporting-fact sentence of another question that shares no title with the
      context and whose text is absent from it ("NotMentioned"). Hypotheses are verbatim sentences, so
      this measures locating evidence in a long input, not paraphrase reasoning. Row
      ``{"context", "hypothesis", "label"}``.

    ``multiple_choice`` and ``nli`` return ``{"train", "validation"}``, split by ``in_validation`` on the
    question id. ``limit`` caps each split's rows (building stops once every split is full).
    """
    if kind not in _LONG_ROWS:
        raise ValueError(f"unknown long stand-in {kind!r}; choose one of {', '.join(LONG_KINDS)}")
    data = hotpot_data()
    out: Splits = {"validation": []} if kind == "passage_retrieval" else {"train": [], "validation": []}
    order = list(range(len(data.questions)))
    random.Random(seed).shuffle(order)
    for index in order:
        qid = data.questions[index].qid
        split = "train" if "train" in out and not in_validation(qid, seed, dev_fraction) else "validation"
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
