"""`python -m evals.glue --data-dir` on QNLI as the GLUE download lays it out (QNLI/train.tsv, QNLI/dev.tsv with
columns index, question, sentence, label and labels by name), end to end with the tiny export of conftest.py; the
other layouts are checked row for row in tests/unit/test_eval_layouts.py."""
import json
import random
from pathlib import Path

from evals import glue
from test_glue_cli import _sentence  # noqa: E402  (export_dir is a conftest fixture)

NAMES = ("entailment", "not_entailment")


def _glue_download(root: Path, label: str = "") -> Path:
    """DIR/QNLI/{train,dev,test}.tsv; `label` replaces the label of the train file's third row."""
    rng, folder = random.Random(0), root / "glue" / "QNLI"
    folder.mkdir(parents=True)
    for name, n in (("train.tsv", 24), ("dev.tsv", 12)):
        rows = [[str(i), f'{_sentence(rng)} "quoted?', f"{_sentence(rng)}, it's so.", NAMES[i % 2]] for i in range(n)]
        if label and name == "train.tsv":
            rows[2][3] = label
        (folder / name).write_text("".join("\t".join(r) + "\n" for r in [["index", "question", "sentence", "label"],
                                                                          *rows]))
    (folder / "test.tsv").write_text("index\tquestion\tsentence\n0\ta?\tb.\n")  # no labels: never read
    return root / "glue"


def test_glue_download_layout_runs_end_to_end(export_dir, tmp_path):
    out = tmp_path / "res"
    code = glue.main(["--model", str(export_dir), "--data-dir", str(_glue_download(tmp_path)), "--tasks", "qnli",
                      "--seeds", "1", "--epochs", "1", "--batch-size", "8", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "results.json").read_text())["tasks"]["qnli"]
    assert result["n_train"] == 24 and result["n_dev"] == {"validation": 12}
    assert result["majority"]["accuracy"] == 0.5  # both names were read as the two labels, balanced
    assert set(result["median"]) == {"accuracy"}


def test_glue_download_with_a_foreign_label_is_one_line(export_dir, tmp_path, capsys):
    data_dir = _glue_download(tmp_path, label="neutral")
    code = glue.main(["--model", str(export_dir), "--data-dir", str(data_dir), "--tasks", "qnli", "--seeds", "1",
                      "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"error: {data_dir}/QNLI/train.tsv:4: label 'neutral' is not a qnli label")
    assert "entailment / not_entailment or 0..1" in lines[0] and not (tmp_path / "res").exists()
