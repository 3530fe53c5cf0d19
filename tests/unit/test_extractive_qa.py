"""evals/extractive_qa.py (answer typing, encoding with offsets, span decoding) and the qasper stand-in
(evals/qasper_standin.py) on a tiny hand-written HotpotQA file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from evals import standin_sources
from evals.extractive_qa import (DROP_CUT, DROP_NOT_FOUND, answer_target, best_span, encode_qa, token_span,
                                 training_features)
from evals.qasper_standin import qasper_standin


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def test_answer_types_and_span_search():
    doc = "The cat sat. A Cat ran to the CAT house."
    assert answer_target("Yes", doc) == ("yes", None)
    assert answer_target(" no. ", doc) == ("no", None)
    assert answer_target("UNANSWERABLE", doc) == ("unanswerable", None)
    assert answer_target("Cat ran", doc) == ("span", (15, 22))  # case-sensitive match first
    assert answer_target("Cat", doc) == ("span", (15, 18))
    assert answer_target("cat HOUSE", doc) == ("span", (30, 39))  # then case-insensitive
    assert answer_target("a dog", doc) is None and answer_target("  ", doc) is None


def test_spans_round_trip_through_offsets(tokenizer):
    doc = "Concept encoders compress long inputs. The decoder reads positions back from concepts."
    enc = encode_qa(tokenizer, "What reads positions?", doc, max_length=64)
    assert enc.input_ids[enc.doc_start - 1] == tokenizer.eos_token_id == enc.input_ids[-1]
    assert len(enc.input_ids) == enc.doc_start + len(enc.offsets) + 1
    first, last = token_span(enc, answer_target("The decoder", doc)[1])
    chars = enc.offsets[first - enc.doc_start][0], enc.offsets[last - enc.doc_start][1]
    assert doc[slice(*chars)].strip() == "The decoder"


def test_truncation_keeps_half_for_the_question_and_cuts_spans(tokenizer):
    doc = " ".join(f"word{i}" for i in range(80)) + " final answer"
    enc = encode_qa(tokenizer, " ".join(["question"] * 100), doc, max_length=40)
    assert len(enc.input_ids) == 40 and enc.doc_start == 19 + 1  # (40 - 2) // 2 question tokens, then eos
    assert token_span(enc, answer_target("final answer", doc)[1]) is None
    assert token_span(enc, answer_target("word0", doc)[1])[0] == enc.doc_start


def test_training_features_drop_and_count(tokenizer):
    doc = " ".join(f"word{i}" for i in range(80)) + " final answer"
    rows = [{"query": "q?", "document": doc, "answers": [a]} for a in ("Yes", "word3", "elsewhere", "final answer")]
    features, dropped = training_features(tokenizer, rows, max_length=32)
    assert [f["answer_type"] for f in features] == ["yes", "span"]
    assert features[0]["start_positions"] == features[0]["end_positions"] == 0
    assert dropped == {DROP_NOT_FOUND: 1, DROP_CUT: 1}


def test_best_span_respects_order_and_length():
    start = torch.tensor([-10.0, 5.0, 0.0, 0.0, 1.0])
    end = torch.tensor([9.0, 0.5, 0.0, 4.0, 2.0])
    assert best_span(start, end, max_tokens=5) == (1, 3)  # end 0 scores high but lies before every good start
    assert best_span(start, end, max_tokens=2) == (1, 1)  # (1, 3) is 3 tokens long
    assert best_span(torch.tensor([1.0]), torch.tensor([1.0]), max_tokens=64) == (0, 0)


def _record(i: int) -> dict:
    context = [[f"Q{i} {name}", [f"Q{i} {name} tells the z{i}{name} fact.", f" Then q{i}{name} more."]]
               for name in ("Alpha", "Beta", "Gamma")]
    answer = ("yes", "no")[i % 2] if i % 5 == 0 else f"z{i}Alpha"
    return {"_id": f"id{i:03d}", "question": f"What is fact {i}?", "answer": answer, "type": "bridge",
            "supporting_facts": [[f"Q{i} Alpha", 0], [f"Q{i} Beta", 0]], "context": context, "level": "easy"}


@pytest.fixture
def hotpot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hotpotqa.json"
    path.write_text(json.dumps([_record(i) for i in range(60)]))
    monkeypatch.setattr(standin_sources, "hotpotqa_path", lambda: path)


def test_qasper_standin_answers_follow_the_context(hotpot):
    splits = qasper_standin(target_tokens=120, seed=3)
    rows = splits["train"] + splits["validation"]
    assert not {r["id"] for r in splits["train"]} & {r["id"] for r in splits["validation"]}
    kinds = {"Yes", "No", "Unanswerable", "span"}
    seen = set()
    for row in rows:
        assert set(row) == {"id", "question", "context", "answer"}
        i = int(row["id"][2:])
        support = f"the z{i}Alpha fact"
        kind = row["answer"] if row["answer"] in kinds else "span"
        seen.add(kind)
        assert (support in row["context"]) == (kind != "Unanswerable")  # withheld evidence only when unanswerable
        assert standin_sources.count_tokens(row["question"]) + 2 + standin_sources.count_tokens(row["context"]) <= 120
        if kind == "span":
            assert row["answer"] == f"z{i}Alpha" and row["answer"] in row["context"]
    assert seen == kinds and len(rows) == 60
    assert qasper_standin(target_tokens=120, seed=3) == splits  # deterministic
    part = qasper_standin(target_tokens=120, seed=3, limit=2)
    assert all(len(rows) == 2 for rows in part.values())
