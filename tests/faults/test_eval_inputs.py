"""Bad input to the evaluation CLIs is one line on stderr and exit 2, never a traceback: every numeric argument,
damaged local data files (GLUE / SCROLLS / LongBench / concept text), broken model folders, and the
trust_remote_code decision (only a project export's own code runs without --trust-remote-code)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import pytest

from evals import concepts, efficiency, glue, longbench, scrolls
from evals.common import is_project_export, trust_remote_code

CLIS = {"glue": glue.main, "scrolls": scrolls.main, "longbench": longbench.main, "concepts": concepts.main,
        "efficiency": efficiency.main}
MODEL_CLIS = ("glue", "scrolls", "longbench", "concepts")  # the ones that load an exported model
GARBAGE = bytes(random.Random(0).randrange(256) for _ in range(512)) + b"\xff\xfe"  # never valid UTF-8



def _run(cli: str, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run one CLI in process; assert exit 2 and exactly one error line, no traceback; return that line."""
    try:
        code = CLIS[cli](argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ") or ": error: argument --" in lines[0], lines  # EvalError or argparse
    return lines[0]


def _base(cli: str, export: Path, tmp: Path) -> list[str]:
    """Arguments that would run: only the case's own argument is wrong."""
    out = ["--out", str(tmp / "res")]
    if cli == "efficiency":
        return out
    if cli == "concepts":
        (tmp / "docs.txt").write_text("the cat sat on the mat\na dog ran in the park\n")
        return ["--model", str(export), "--data", str(tmp / "docs.txt"), "--max-length", "64", *out]
    if cli == "longbench":  # a local file: longbench loads the model after every row is read
        (tmp / "lb").mkdir(exist_ok=True)
        (tmp / "lb" / "trec.jsonl").write_bytes(_jsonl([TREC_ROW]))
        return ["--model", str(export), "--data-dir", str(tmp / "lb"), "--tasks", "trec", "--max-length", "64", *out]
    # Stand-ins: every case fails before their data is built.
    return ["--model", str(export), "--stand-in", "--limit", "2", "--max-length", "64", *out]


# ------------------------------------------------------------------------------------- arguments

BAD_ARGUMENTS = [
    ("glue", ["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    ("glue", ["--batch-size", "-4"], "argument --batch-size: must be >= 1, got -4"),
    ("glue", ["--batch-size", "two"], "argument --batch-size: expected an integer >= 1, got 'two'"),
    ("glue", ["--epochs", "-1"], "argument --epochs: must be a finite number > 0, got '-1'"),
    ("glue", ["--epochs", "0"], "argument --epochs: must be a finite number > 0"),
    ("glue", ["--lr", "0"], "argument --lr: must be a finite number > 0, got '0'"),
    ("glue", ["--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    ("glue", ["--lr", "inf"], "argument --lr: must be a finite number > 0, got 'inf'"),
    ("glue", ["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    ("glue", ["--max-length", "1"], "argument --max-length: must be >= 16 tokens"),
    ("glue", ["--data-dir", "/nonexistent/glue"], "argument --data-dir: '/nonexistent/glue' is not a directory"),
    ("scrolls", ["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    ("scrolls", ["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ("scrolls", ["--epochs", "-1"], "argument --epochs: must be a finite number > 0"),
    ("scrolls", ["--lr=-1e-4"], "argument --lr: must be a finite number > 0"),
    ("scrolls", ["--max-length", "1"], "argument --max-length: must be >= 16 tokens"),
    ("scrolls", ["--max-answer-tokens", "0"], "argument --max-answer-tokens: must be >= 1"),
    ("longbench", ["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    ("longbench", ["--limit", "-2"], "argument --limit: must be >= 1, got -2"),
    ("longbench", ["--max-length", "1"], "argument --max-length: must be >= 16 tokens"),
    ("concepts", ["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    ("concepts", ["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ("concepts", ["--max-length", "1"], "argument --max-length: must be >= 16 tokens"),
    ("efficiency", ["--tokens-per-step", "0"], "argument --tokens-per-step: must be >= 1"),
    ("efficiency", ["--repeats", "0"], "argument --repeats: must be >= 1"),
    ("efficiency", ["--warmup", "-1"], "argument --warmup: must be >= 0"),
    ("efficiency", ["--threads", "-1"], "argument --threads: must be >= 0"),
    ("efficiency", ["--memory-cap-gib", "-1"], "argument --memory-cap-gib: must be a finite number > 0"),
    ("efficiency", ["--memory-cap-gib", "nan"], "argument --memory-cap-gib: must be a finite number > 0"),
]


@pytest.mark.parametrize("cli, args, fragment", BAD_ARGUMENTS, ids=[f"{c}{' '.join(a)}" for c, a, _ in BAD_ARGUMENTS])
def test_bad_argument_is_one_line(cli, args, fragment, export_dir, tmp_path, capsys):
    assert fragment in _run(cli, _base(cli, export_dir, tmp_path) + args, capsys)
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("cli", list(CLIS))
def test_out_naming_a_file_is_refused_up_front(cli, export_dir, tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    line = _run(cli, _base(cli, export_dir, tmp_path) + ["--out", str(tmp_path / "taken")], capsys)
    assert "argument --out" in line and "exists and is not a directory" in line


@pytest.mark.parametrize("cli, seeds, fragment", [
    ("glue", "0", "seed 0 is outside 1..4294967295"),
    ("glue", "-1", "seed -1 is outside"),
    ("glue", "1,1", "repeats seed 1"),
    ("glue", str(2**32), f"seed {2**32} is outside"),
    ("scrolls", "0", "seed 0 is outside"),
])
def test_bad_seeds_are_one_line(cli, seeds, fragment, export_dir, tmp_path, capsys):
    line = _run(cli, _base(cli, export_dir, tmp_path) + ["--seeds", seeds], capsys)
    assert line.startswith("error: --seeds") and fragment in line


# ------------------------------------------------------------------------------------- data files


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _pairs(n: int, label: Callable[[int], object] = lambda i: i % 2) -> list[dict]:
    return [{"sentence1": f"the cat sat {i}", "sentence2": f"a dog ran {i}", "label": label(i)} for i in range(n)]


GOOD_RTE = _jsonl(_pairs(6))
GLUE_FILES = [  # (train file name, its bytes, fragment after the path)
    ("train.jsonl", GARBAGE, "train.jsonl:1 is not UTF-8 text"),
    ("train.jsonl", GOOD_RTE + b'{"sentence1": "a", "sente', "train.jsonl:7 is not valid JSON"),
    ("train.jsonl", '{"sentence1": "café", "sentence2": "b", "label": 0}\n'.encode("latin-1"),
     "train.jsonl:1 is not UTF-8 text"),
    ("train.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 0}\n'.encode("utf-16"),
     "train.jsonl:1 is not UTF-8 text"),
    ("train.jsonl", GOOD_RTE + b'{"sentence1": "a", "label": 1}\n', "train.jsonl:7 lacks sentence2"),
    ("train.jsonl", GOOD_RTE + b"[1, 2]\n", "train.jsonl:7 is an array, expected a JSON object"),
    ("train.jsonl", _jsonl(_pairs(3, lambda i: 5)), "train.jsonl:1: label 5 is out of range for rte"),
    ("train.jsonl", _jsonl(_pairs(3, lambda i: "entailment")), "label 'entailment' is out of range for rte"),
    ("train.jsonl", _jsonl([{"sentence1": 3, "sentence2": "b", "label": 0}]), "train.jsonl:1: sentence1 is a number"),
    ("train.json", b'[{"sentence1": "a", "sentence2": "b", "label": 0},', "train.json is not valid JSON"),
    ("train.json", b'{"rows": []}', "train.json:1 lacks sentence1, sentence2, label"),
    ("train.parquet", GARBAGE, "train.parquet cannot be read as parquet"),
]


@pytest.mark.parametrize("name, content, fragment", GLUE_FILES, ids=[f[2].split(" ", 1)[1] for f in GLUE_FILES])
def test_bad_glue_file_names_file_and_line(name, content, fragment, export_dir, tmp_path, capsys):
    (tmp_path / "glue" / "rte").mkdir(parents=True)
    (tmp_path / "glue" / "rte" / name).write_bytes(content)
    (tmp_path / "glue" / "rte" / "validation.jsonl").write_bytes(GOOD_RTE)
    line = _run("glue", ["--model", str(export_dir), "--data-dir", str(tmp_path / "glue"), "--tasks", "rte",
                         "--max-length", "64", "--out", str(tmp_path / "res")], capsys)
    assert str(tmp_path / "glue" / "rte") in line and fragment in line, line


def test_bad_regression_label_says_what_is_expected(export_dir, tmp_path, capsys):
    (tmp_path / "glue" / "stsb").mkdir(parents=True)
    for split in ("train", "validation"):
        (tmp_path / "glue" / "stsb" / f"{split}.jsonl").write_bytes(_jsonl(_pairs(3, lambda i: "high")))
    line = _run("glue", ["--model", str(export_dir), "--data-dir", str(tmp_path / "glue"), "--tasks", "stsb",
                         "--max-length", "64"], capsys)
    assert "stsb/train.jsonl:1: label 'high' is not a finite number; stsb is scored by regression" in line


SCROLLS_ROW = {"id": "c0", "input": "is it so?\n\nthe whole contract text", "output": "Entailment"}
SCROLLS_FILES = [
    (GARBAGE, "train.jsonl:1 is not UTF-8 text"),
    (_jsonl([SCROLLS_ROW]) + b'{"id": "c1", "input": "is', "train.jsonl:2 is not valid JSON"),
    (_jsonl([SCROLLS_ROW, {"id": "c1", "input": "q\n\nd"}]), "train.jsonl:2 lacks output"),
    (_jsonl([{**SCROLLS_ROW, "input": 7}]), "train.jsonl:1: input is a number, expected text"),
]


@pytest.mark.parametrize("content, fragment", SCROLLS_FILES, ids=[f[1] for f in SCROLLS_FILES])
def test_bad_scrolls_file_names_file_and_line(content, fragment, export_dir, tmp_path, capsys):
    folder = tmp_path / "scrolls" / "contract_nli"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_bytes(content)
    (folder / "validation.jsonl").write_bytes(_jsonl([SCROLLS_ROW]))
    line = _run("scrolls", ["--model", str(export_dir), "--data-dir", str(tmp_path / "scrolls"), "--tasks",
                            "contract_nli", "--max-length", "64"], capsys)
    assert str(folder) in line and fragment in line, line


TREC_ROW = {"_id": "r0", "input": "Question: what is it", "context": "Question: where\nType: LOC\n",
            "answers": ["LOC"], "all_classes": ["LOC", "NUM"]}
V2_ROW = {"_id": "v0", "question": "which?", "context": "a long story", "choice_A": "a", "choice_B": "b",
          "choice_C": "c", "choice_D": "d", "answer": "A"}
LONGBENCH_FILES = [
    ("trec", "trec.jsonl", _jsonl([TREC_ROW]) + b'{"_id": "r1", "inp', "trec.jsonl:2 is not valid JSON"),
    ("trec", "trec.jsonl", GARBAGE, "trec.jsonl:1 is not UTF-8 text"),
    ("trec", "trec.jsonl", _jsonl([TREC_ROW, {**TREC_ROW, "_id": "r1", "answers": "LOC"}]),
     "trec row 1 (_id r1): answers is text, expected a list of strings"),
    ("trec", "trec.jsonl", _jsonl([{**TREC_ROW, "input": None}]), "trec row 0 (_id r0) lacks input"),
    ("longbench_v2", "longbench_v2.json", b'[{"_id": "v0", "question": ', "longbench_v2.json is not valid JSON"),
    ("longbench_v2", "longbench_v2.json", json.dumps([{k: v for k, v in V2_ROW.items() if k != "choice_C"}]).encode(),
     "longbench_v2 row 0 (_id v0) lacks choice_C"),
    ("longbench_v2", "longbench_v2.json", json.dumps([{**V2_ROW, "options": list("abcdef")}]).encode(),
     "has 6 options, expected 2 to 4"),
    ("passage_retrieval_en", "passage_retrieval_en.jsonl", "{}\n".encode("utf-16"),
     "passage_retrieval_en.jsonl:1 is not UTF-8 text"),
]


@pytest.mark.parametrize("task, name, content, fragment", LONGBENCH_FILES, ids=[f[3] for f in LONGBENCH_FILES])
def test_bad_longbench_file_names_file(task, name, content, fragment, export_dir, tmp_path, capsys):
    (tmp_path / "lb").mkdir()
    (tmp_path / "lb" / name).write_bytes(content)
    line = _run("longbench", ["--model", str(export_dir), "--data-dir", str(tmp_path / "lb"), "--tasks", task,
                              "--max-length", "64"], capsys)
    assert str(tmp_path / "lb" / name) in line and fragment in line, line


@pytest.mark.parametrize("name, content, fragment", [
    ("docs.txt", b"one document\nanother\nbad \xff byte\n", "docs.txt:3 is not UTF-8 text"),
    ("docs.jsonl", b'{"text": "fine"}\n{"body": "no text field"}\n', "docs.jsonl:2 lacks a \"text\" field"),
])
def test_bad_concept_text_names_the_line(name, content, fragment, export_dir, tmp_path, capsys):
    (tmp_path / name).write_bytes(content)
    line = _run("concepts", ["--model", str(export_dir), "--data", str(tmp_path / name), "--max-length", "64"], capsys)
    assert fragment in line


# ------------------------------------------------------------------------------------- model folders


def _copy(export: Path, tmp: Path, name: str = "", content: Optional[bytes] = None) -> Path:
    """A copy of the export with `name` deleted (content None) or overwritten."""
    folder = tmp / "copy"
    shutil.copytree(export, folder)
    if name and content is None:
        (folder / name).unlink()
    elif name:
        (folder / name).write_bytes(content)
    return folder


def _config_with(export: Path, **changes: object) -> bytes:
    return json.dumps({**json.loads((export / "config.json").read_text()), **changes}).encode()


BROKEN_FOLDERS = [  # (file, new content or None to delete, fragment); config cases take the export as input
    ("model.safetensors", None, "lacks a weights file (model.safetensors or pytorch_model.bin)"),
    ("config.json", GARBAGE, "config.json is not UTF-8 text"),
    ("config.json", b'{"model_type": "megaconcept", "num_con', "config.json is not valid JSON"),
    ("config.json", b"[1, 2, 3]", "config.json holds an array, not a JSON object"),
    ("config.json", lambda e: _config_with(e, model_type="bert"), "config.json has model_type 'bert'"),
    ("config.json", lambda e: _config_with(e, max_position_embeddings="long"),
     "config.json: max_position_embeddings is text ('long'), expected an integer"),
    ("config.json", lambda e: _config_with(e, backbone=[2]),
     "config.json: backbone is an array ([2]), expected an object"),
    ("tokenizer.json", GARBAGE, "its tokenizer cannot be loaded"),
    ("model.safetensors", GARBAGE, "AutoModel cannot load it"),
]
CASES = [(cli, *case) for cli in MODEL_CLIS for case in BROKEN_FOLDERS
         if not (cli in ("glue", "scrolls") and case[1] is GARBAGE and case[0] == "model.safetensors")]


@pytest.mark.parametrize("cli, name, content, fragment", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3][:30]}" for c in CASES])
def test_broken_model_folder_is_one_line(cli, name, content, fragment, export_dir, tmp_path, capsys):
    broken = _copy(export_dir, tmp_path, name, content(export_dir) if callable(content) else content)
    args = _base(cli, export_dir, tmp_path)
    args[args.index("--model") + 1] = str(broken)
    line = _run(cli, args, capsys)
    assert str(broken) in line and fragment in line, line


def test_glue_with_damaged_weights_fails_before_training(export_dir, tmp_path, capsys):
    broken = _copy(export_dir, tmp_path, "model.safetensors", GARBAGE)
    (tmp_path / "glue" / "rte").mkdir(parents=True)
    for split in ("train", "validation"):
        (tmp_path / "glue" / "rte" / f"{split}.jsonl").write_bytes(GOOD_RTE)
    line = _run("glue", ["--model", str(broken), "--data-dir", str(tmp_path / "glue"), "--tasks", "rte",
                         "--seeds", "1", "--max-length", "64"], capsys)
    assert str(broken) in line and "AutoModelForSequenceClassification cannot load it" in line


@pytest.mark.parametrize("content, fragment", [
    (GARBAGE, "config.json is not UTF-8 text"),
    (b"{not json", "config.json is not valid JSON"),
    (b'{"model_type": "bert", "hidden_size": 768}', "config.json has model_type 'bert'"),
])
def test_efficiency_broken_config_is_one_line(content, fragment, export_dir, tmp_path, capsys):
    broken = _copy(export_dir, tmp_path, "config.json", content)
    line = _run("efficiency", ["--model", str(broken), "--lengths", "64", "--loss-shapes", "1x64"], capsys)
    assert str(broken) in line and fragment in line


# ------------------------------------------------------------------------------------- trust_remote_code


def _foreign(export: Path, tmp: Path) -> Path:
    """The export with AutoModel mapped to a module of another name: loadable code, but not the project's."""
    folder = _copy(export, tmp)
    shutil.copy(folder / "hf_modeling.py", folder / "custom_modeling.py")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModel"] = "custom_modeling.MegaconceptModel"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_project_export_is_trusted(export_dir):
    assert is_project_export(export_dir)
    assert trust_remote_code(export_dir, allowed=False) is True


@pytest.mark.parametrize("make", [
    lambda e, t: _copy(e, t, "hf_modeling.py"),  # code not shipped: transformers would fetch it from elsewhere
    lambda e, t: _copy(e, t, "config.json", _config_with(e, model_type="llama")),
    lambda e, t: _copy(e, t, "config.json", _config_with(e, auto_map={
        "AutoModel": "someone/repo--hf_modeling.MegaconceptModel"})),  # a hub repository's code
    lambda e, t: _copy(e, t, "config.json", _config_with(e, auto_map=None)),
    lambda e, t: _copy(e, t, "config.json", GARBAGE),
    _foreign,
], ids=["code-missing", "other-model-type", "hub-code", "no-auto-map", "garbage-config", "renamed-module"])
def test_other_folders_are_not_trusted_without_the_flag(make, export_dir, tmp_path):
    folder = make(export_dir, tmp_path)
    assert trust_remote_code(folder, allowed=False) is False
    assert trust_remote_code(folder, allowed=True) is True


def test_hub_id_is_trusted_only_with_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    assert trust_remote_code("someone/concept-model", allowed=False) is False
    assert trust_remote_code("someone/concept-model", allowed=True) is True


@pytest.mark.parametrize("cli", MODEL_CLIS)
def test_every_model_cli_has_the_flag(cli):
    module = {"glue": glue, "scrolls": scrolls, "longbench": longbench, "concepts": concepts}[cli]
    extra = ["--data", "x"] if cli == "concepts" else []
    assert module.build_parser().parse_args(["--model", "m", "--trust-remote-code", *extra]).trust_remote_code
    assert not module.build_parser().parse_args(["--model", "m", *extra]).trust_remote_code


def test_foreign_code_runs_only_with_the_flag(export_dir, tmp_path, capsys):
    folder = _foreign(export_dir, tmp_path)
    (tmp_path / "docs.txt").write_text("the cat sat on the mat\na dog ran in the park\n")
    args = ["--model", str(folder), "--data", str(tmp_path / "docs.txt"), "--max-length", "64", "--batch-size", "2"]
    line = _run("concepts", args + ["--out", str(tmp_path / "no")], capsys)
    assert str(folder) in line and "pass --trust-remote-code" in line
    assert concepts.main(args + ["--trust-remote-code", "--out", str(tmp_path / "yes")]) == 0
    assert (tmp_path / "yes" / "results.json").is_file()


def test_option_sections_of_an_export_are_read_not_refused(export_dir, tmp_path):
    # decoder_options / bottleneck_options are Optional[dict[str, Any]]: an object there is valid (a diffusion
    # export records its mask token id), a list is named.
    from evals.common import EvalError, model_config

    folder = _copy(export_dir, tmp_path, "config.json", _config_with(export_dir, decoder_options={"mask_token_id": 1}))
    assert model_config(folder).decoder_options == {"mask_token_id": 1}
    bad = _copy(export_dir, tmp_path / "bad", "config.json", _config_with(export_dir, decoder_options=[1]))
    with pytest.raises(EvalError, match="decoder_options is an array"):
        model_config(bad)
