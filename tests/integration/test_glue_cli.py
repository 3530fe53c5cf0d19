"""`python -m evals.glue` end to end on a tiny local GLUE-layout folder and a tiny exported model."""
import json
import random
from pathlib import Path

import pytest

from evals import glue

WORDS = "the cat dog sat ran on a mat park bird flew over house tree river under".split()



def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng, root = random.Random(0), tmp_path_factory.mktemp("glue")
    pair = lambda label: {"sentence1": _sentence(rng), "sentence2": _sentence(rng), "label": label}  # noqa: E731
    for split, n in (("train", 24), ("validation", 12)):
        _write(root / "rte" / f"{split}.jsonl", [pair(i % 2) for i in range(n)])
        _write(root / "stsb" / f"{split}.jsonl", [pair(round(rng.uniform(0, 5), 2)) for _ in range(n)])
        _write(root / "cola" / f"{split}.jsonl", [{"sentence": _sentence(rng), "label": i % 2} for i in range(n)])
    mnli = lambda: [{"premise": _sentence(rng), "hypothesis": _sentence(rng), "label": i % 3}  # noqa: E731
                    for i in range(12)]
    for split in ("train", "validation_matched", "validation_mismatched"):
        _write(root / "mnli" / f"{split}.jsonl", mnli())
    return root


def test_finetunes_and_writes_results(export_dir, glue_dir, tmp_path):
    out = tmp_path / "res"
    code = glue.main(["--model", str(export_dir), "--data-dir", str(glue_dir), "--tasks", "rte,stsb,cola,mnli",
                      "--seeds", "1,2", "--epochs", "1", "--batch-size", "8", "--limit", "20", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    tasks = results["tasks"]
    assert set(tasks) == {"rte", "stsb", "cola", "mnli"}
    assert set(tasks["stsb"]["median"]) == {"pearson", "spearman"}
    assert set(tasks["mnli"]["median"]) == {"accuracy_m", "accuracy_mm"}
    assert set(tasks["cola"]["median"]) == {"mcc"}
    assert sorted(tasks["rte"]["seeds"]) == ["1", "2"] and tasks["rte"]["n_train"] == 20
    assert tasks["rte"]["majority"]["accuracy"] == 0.5  # balanced dev labels
    for r in tasks.values():
        assert r["score"] == pytest.approx(sum(r["median"].values()) / len(r["median"]))
    assert results["average"] == pytest.approx(sum(r["score"] for r in tasks.values()) / 4)
    assert results["versions"]["transformers"] and "stand" not in results["benchmark"]
    assert "| rte |" in (out / "results.md").read_text() and (out / "scores.png").stat().st_size > 0


def test_small_tasks_start_from_mnli(export_dir, glue_dir, tmp_path):
    out = tmp_path / "res"
    code = glue.main(["--model", str(export_dir), "--data-dir", str(glue_dir), "--tasks", "rte,mnli", "--seeds", "3",
                      "--epochs", "1", "--batch-size", "8", "--limit", "12", "--from-mnli", "--pooling", "decoder",
                      "--out", str(out)])
    assert code == 0
    assert (out / "mnli_seed3" / "config.json").is_file()
    assert list(json.loads((out / "results.json").read_text())["tasks"]) == ["mnli", "rte"]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "wnli"], "unknown GLUE task wnli; valid: cola, sst2"),
    (["--tasks", "sst2"], "no train file for sst2 under"),
    (["--tasks", "rte", "--seeds", "x"], "--seeds 'x' must be comma-separated integers"),
])
def test_bad_requests_are_one_line_errors(export_dir, glue_dir, tmp_path, capsys, args, message):
    code = glue.main(["--model", str(export_dir), "--data-dir", str(glue_dir), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert glue.main(["--model", str(tmp_path / "nope"), "--stand-in"]) == 2
    assert "is not a directory" in capsys.readouterr().err
