"""`--data-dir` reads the benchmark files users have on disk: every layout of one benchmark gives the same rows, in
the same order, with the same labels (GLUE: the GLUE download's TSVs, a hub-cache snapshot of nyu-mll/glue, a
save_to_disk folder, per-split jsonl / parquet / csv / tsv; SCROLLS: the official folders and zips, hub shards,
save_to_disk; LongBench: data.zip in place or extracted, v2's data.json). A bad label, a missing column or an
unknown layout is one EvalError naming the file, the row and the layout expected.

The rows come from the project's tiny corpus (HotpotQA paragraphs, tests/conftest.py), cut into sentences, plus
text that trips naive TSV/CSV readers (quotes, commas, apostrophes, non-ASCII).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from evals.common import EvalError
from evals.glue_data import DEV_FILES, DOWNLOADS, TASKS, load_task
from evals.longbench_data import task_rows
from evals.scrolls_data import TASKS as SCROLLS_TASKS, load_split

TRICKY = ['"Quoted," she said.', "It's 5' tall, isn't it?", 'An unbalanced " quote', "café, naïve — ünïcode",
          "a, b; c", '"Starts with a quote']
GLUE_TASKS = ("qnli", "mnli", "cola", "stsb", "mrpc")
ROWS_PER_SPLIT = 9


def _sentences(corpus: Path) -> Iterator[str]:
    text = corpus.read_text(encoding="utf-8").replace("\t", " ")
    yield from TRICKY
    yield from (s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 10 < len(s.strip()) < 160)


def _canonical(corpus: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """task -> split -> rows in nyu-mll/glue's schema (text columns, integer or float label, idx)."""
    sentences, data = _sentences(corpus), {}
    for name in GLUE_TASKS:
        spec, rng = TASKS[name], random.Random(name)
        data[name] = {split: [{**{c: next(sentences) for c in spec.columns if c}, "idx": i,
                               "label": rng.randrange(21) / 4 if spec.num_labels == 1 else (i + k) % spec.num_labels}
                              for i in range(ROWS_PER_SPLIT)]
                      for k, split in enumerate(("train", *spec.dev_splits))}
    return data


# ------------------------------------------------------------------------------------- GLUE layout writers


def _download_row(name: str, dev: bool, i: int, row: dict) -> tuple[list[str], list[str]]:
    """(header, fields) of one row as the GLUE download writes it (CoLA: no header)."""
    spec, label = TASKS[name], row["label"]
    named = spec.label_names[label] if spec.label_names else ""
    if name == "qnli":
        return ["index", "question", "sentence", "label"], [str(i), row["question"], row["sentence"], named]
    if name == "mnli":
        votes = ["label1", "label2", "label3", "label4", "label5"] if dev else ["label1"]
        header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                  "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", *votes, "gold_label"]
        return header, [str(i), str(100 + i), f"{100 + i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)",
                        row["premise"], row["hypothesis"], *[named] * len(votes), named]
    if name == "cola":
        return [], ["gj04", str(label), "" if label else "*", row["sentence"]]
    if name == "stsb":
        return (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                 "score"], [str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none",
                            row["sentence1"], row["sentence2"], f"{label:.3f}"])
    return (["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],  # MRPC: the MSR file's BOM survives
            [str(label), str(1000 + i), str(2000 + i), row["sentence1"], row["sentence2"]])


def _write_download(root: Path, data: dict) -> Path:
    for name, splits in data.items():
        for split, rows in splits.items():
            lines = [_download_row(name, split != "train", i, r) for i, r in enumerate(rows)]
            header = ["\t".join(lines[0][0]) + "\n"] if lines[0][0] else []
            path = root / DOWNLOADS[name].folder / f"{DEV_FILES.get(split, split)}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(header + ["\t".join(fields) + "\n" for _, fields in lines]), encoding="utf-8")
        (root / DOWNLOADS[name].folder / "test.tsv").write_text("index\tsentence\n0\tnever read\n")
    return root


def _dataset(name: str, rows: list[dict]) -> Any:
    from datasets import ClassLabel, Dataset, Features, Value

    spec = TASKS[name]
    label = ClassLabel(names=list(spec.label_names)) if spec.label_names else Value("float32")  # as the hub has it
    features = Features({**{c: Value("string") for c in spec.columns if c}, "label": label, "idx": Value("int32")})
    return Dataset.from_list(rows, features=features)


def _write_snapshot(root: Path, data: dict) -> Path:
    repo = root / "datasets--nyu-mll--glue"
    for name, splits in data.items():
        for split, rows in splits.items():
            path = repo / "snapshots" / "0123abcd" / name / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            _dataset(name, rows).to_parquet(str(path))
    return repo  # the repository folder: its only snapshot is read


def _write_saved(root: Path, data: dict) -> Path:
    from datasets import DatasetDict

    for name, splits in data.items():
        DatasetDict({split: _dataset(name, rows) for split, rows in splits.items()}).save_to_disk(str(root / name))
    return root


def _per_split(suffix: str) -> Callable[[Path, dict], Path]:
    def write(root: Path, data: dict) -> Path:
        for name, splits in data.items():
            for split, rows in splits.items():
                path = root / name / f"{split}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                if suffix == ".jsonl":
                    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                elif suffix == ".tsv":  # the hub's columns, written literally
                    columns = list(rows[0])
                    path.write_text("".join("\t".join(map(str, line)) + "\n" for line in
                                            [columns] + [[r[c] for c in columns] for r in rows]), encoding="utf-8")
                else:
                    dataset = _dataset(name, rows)
                    dataset.to_parquet(str(path)) if suffix == ".parquet" else dataset.to_csv(str(path), index=False)
        return root
    return write


GLUE_LAYOUTS = {"download": _write_download, "hub-snapshot": _write_snapshot, "save_to_disk": _write_saved,
                "jsonl": _per_split(".jsonl"), "parquet": _per_split(".parquet"), "csv": _per_split(".csv"),
                "tsv": _per_split(".tsv")}


@pytest.fixture(scope="module")
def glue_layouts(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Path]]:
    data = _canonical(tiny_corpus)
    return data, {name: write(tmp_path_factory.mktemp(name), data) for name, write in GLUE_LAYOUTS.items()}


def _expected(name: str, rows: list[dict]) -> list[dict]:
    a, b = TASKS[name].columns
    return [{"text_a": r[a], "text_b": r[b] if b else None, "label": r["label"]} for r in rows]


@pytest.mark.parametrize("layout", list(GLUE_LAYOUTS))
@pytest.mark.parametrize("name", GLUE_TASKS)
def test_every_glue_layout_gives_the_same_rows(glue_layouts, name, layout):
    data, dirs = glue_layouts
    loaded = load_task(TASKS[name], "local", str(dirs[layout]), None)
    got = {"train": loaded.train, **loaded.dev}
    assert list(got) == list(data[name])  # MNLI: both dev sets
    for split, rows in data[name].items():
        if TASKS[name].num_labels == 1:  # the hub stores STS-B scores as float32
            assert [r["label"] for r in got[split]] == pytest.approx([r["label"] for r in rows], rel=1e-6)
            got[split] = [{**r, "label": e["label"]} for r, e in zip(got[split], rows)]
        assert got[split] == _expected(name, rows), (layout, split)


def test_download_labels_follow_the_hub_order(glue_layouts):
    dirs = glue_layouts[1]
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["qnli"].label_names == TASKS["rte"].label_names == ("entailment", "not_entailment")
    line = (dirs["download"] / "MNLI" / "train.tsv").read_text().splitlines()[1].split("\t")
    assert load_task(TASKS["mnli"], "local", str(dirs["download"]), 1).train[0]["label"] == \
        TASKS["mnli"].label_names.index(line[-1])


# ------------------------------------------------------------------------------------- GLUE errors


def _glue_error(root: Path, task: str, files: dict[str, str]) -> str:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    with pytest.raises(EvalError) as caught:
        load_task(TASKS[task], "local", str(root), None)
    message = str(caught.value)
    assert "\n" not in message
    return message


QNLI_DEV = "index\tquestion\tsentence\tlabel\n0\tq\ts\tentailment\n1\tq2\ts2\tnot_entailment\n"


def test_a_label_outside_the_task_is_named_with_file_row_and_layout(tmp_path):
    message = _glue_error(tmp_path, "qnli", {"QNLI/train.tsv": QNLI_DEV + "2\tq3\ts3\tneutral\n",
                                             "QNLI/dev.tsv": QNLI_DEV})
    assert message.startswith(f"{tmp_path}/QNLI/train.tsv:4: label 'neutral' is not a qnli label")
    assert "train.tsv is read as a table (tab-separated" in message and "entailment / not_entailment or 0..1" in message


def test_an_out_of_range_index_in_a_saved_folder_names_the_row(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"question": "q", "sentence": "s", "label": label} for label in (0, 1, 7)]
    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:2])}).save_to_disk(
        str(tmp_path / "qnli"))
    message = _glue_error(tmp_path, "qnli", {})
    assert message.startswith(f"{tmp_path}/qnli [train] row 3: label 7 is out of range for qnli")
    assert "(save_to_disk) is read as rows with question, sentence, label" in message


def test_a_missing_column_is_named_with_the_header(tmp_path):
    message = _glue_error(tmp_path, "mnli", {"MNLI/train.tsv": "index\tsentence1\tgold_label\n0\ta\tneutral\n"})
    assert message.startswith(f"{tmp_path}/MNLI/train.tsv:1: the header (index, sentence1, gold_label) has no "
                              f"hypothesis column")
    assert "header names premise (or sentence1), hypothesis (or sentence2), label (or gold_label)" in message


def test_a_regression_label_must_be_a_number(tmp_path):
    header = "index\tsentence1\tsentence2\tscore\n"
    message = _glue_error(tmp_path, "stsb", {"STS-B/train.tsv": header + "0\ta\tb\thigh\n",
                                             "STS-B/dev.tsv": header + "0\ta\tb\t1.5\n"})
    assert f"{tmp_path}/STS-B/train.tsv:2: label 'high' is not a finite number; stsb is scored by regression" in message


@pytest.mark.parametrize("files, fragments", [
    ({"QNLI/notes.txt": "x"}, ["no train file for qnli under", "/QNLI (it holds notes.txt); expected the GLUE "
                               "download (train.tsv), per-split files (train.{parquet,jsonl,json,csv,tsv}",
                               "dataset_dict.json"]),
    ({"QNLI/train.tsv": QNLI_DEV}, ["no validation file for qnli", "expected the GLUE download (dev.tsv)"]),
    ({"RTE/train.tsv": QNLI_DEV}, ["no train file for qnli under", "it has no qnli (or QNLI) folder"]),
    ({"QNLI/train.tsv": QNLI_DEV, "QNLI/train.jsonl": "{}\n", "QNLI/dev.tsv": QNLI_DEV},
     ["holds train as train.jsonl and train.tsv; keep one"]),
    ({"QNLI/train.tsv": QNLI_DEV, "qnli/train.tsv": QNLI_DEV}, ["holds QNLI and qnli, all read as qnli; keep one"]),
    ({"QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n0\tq\n", "QNLI/dev.tsv": QNLI_DEV},
     ["train.tsv:2 has 2 fields but the header names 4", "no row of", "fits its header"]),
    ({"CoLA/train.tsv": "gj04\t1\tOur friends.\n", "CoLA/dev.tsv": "gj04\t1\t\tx\n"},
     ["CoLA/train.tsv:1: the header (gj04, 1, Our friends.) has no sentence, label column",
      "CoLA's GLUE download: no header"]),
], ids=["unknown-layout", "no-dev", "no-task-folder", "two-forms", "two-folders", "short-rows", "not-cola"])
def test_unreadable_layouts_say_what_is_expected(tmp_path, files, fragments):
    task = "cola" if "CoLA/train.tsv" in files else "qnli"
    message = _glue_error(tmp_path, task, files)
    assert all(f in message for f in fragments), message


def test_rows_cut_short_are_skipped_and_counted(tmp_path, capsys):
    (tmp_path / "QQP").mkdir()
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    (tmp_path / "QQP" / "train.tsv").write_text(header + "0\t1\t2\ta?\tb?\t1\n1\t3\t4\tcut here\n2\t5\t6\tc?\td?\t0\n")
    (tmp_path / "QQP" / "dev.tsv").write_text(header + "0\t1\t2\ta?\tb?\t0\n")
    data = load_task(TASKS["qqp"], "local", str(tmp_path), None)
    assert [r["label"] for r in data.train] == [1, 0]
    assert "QQP/train.tsv: skipped 1 rows whose field count is not the header's 6" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- SCROLLS


def _scrolls_rows(corpus: Path) -> dict[str, list[dict]]:
    sentences, labels = _sentences(corpus), ("Entailment", "Contradiction", "Not mentioned")
    return {split: [{"id": f"{split}{i}", "pid": f"{split}{i}_0", "output": labels[i % 3],
                     "input": f"{next(sentences)}\n\n{' '.join(next(sentences) for _ in range(5))}"} for i in range(n)]
            for split, n in (("train", 7), ("validation", 4))}


def _write_scrolls(layout: str, root: Path, rows: dict[str, list[dict]]) -> Path:
    from datasets import Dataset, DatasetDict

    root.mkdir()
    jsonl = {split: "".join(json.dumps(r) + "\n" for r in split_rows) for split, split_rows in rows.items()}
    folder = root / "contract_nli"
    if layout == "zip":  # the official download, not extracted
        with zipfile.ZipFile(root / "contract_nli.zip", "w") as archive:
            for split, text in jsonl.items():
                archive.writestr(f"contract_nli/{split}.jsonl", text)
    elif layout == "save_to_disk":
        DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()}).save_to_disk(str(folder))
    else:
        folder = root / ("Contract_NLI" if layout == "hub-shards" else "contract_nli")
        folder.mkdir()
        for split, split_rows in rows.items():
            if layout == "hub-shards":
                Dataset.from_list(split_rows).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
            else:
                (folder / f"{split}.jsonl").write_text(jsonl[split], encoding="utf-8")
    return root


@pytest.mark.parametrize("layout", ["extracted", "zip", "hub-shards", "save_to_disk"])
def test_every_scrolls_layout_gives_the_same_rows(tiny_corpus, tmp_path, layout):
    rows = _scrolls_rows(tiny_corpus)
    reference = _write_scrolls("extracted", tmp_path / "reference", rows)
    root = _write_scrolls(layout, tmp_path / layout, rows)
    task = SCROLLS_TASKS["contract_nli"]
    for split in ("train", "validation"):
        got = load_split(task, split, str(root), None)
        assert got == load_split(task, split, str(reference), None)
        assert [r["label"] for r in got] == [r["output"] for r in rows[split]]
        assert [r["query"] for r in got] == [r["input"].split("\n\n")[0] for r in rows[split]]


def test_scrolls_without_a_known_layout_says_what_is_expected(tmp_path):
    (tmp_path / "contract_nli").mkdir()
    (tmp_path / "contract_nli" / "dev.txt").write_text("x")
    with pytest.raises(EvalError, match=r"no train file for contract_nli under .*contract_nli; expected .*"
                                        r"contract_nli/train\.jsonl \(SCROLLS' contract_nli\.zip extracted"):
        load_split(SCROLLS_TASKS["contract_nli"], "train", str(tmp_path), None)


# ------------------------------------------------------------------------------------- LongBench


def _longbench_rows(corpus: Path) -> dict[str, list[dict]]:
    sentences = _sentences(corpus)
    trec = []
    for i in range(4):
        examples = [(next(sentences), ("LOC", "NUM", "HUM")[k % 3]) for k in range(6)]
        trec.append({"_id": f"t{i}", "input": next(sentences), "answers": [examples[i][1]],
                     "all_classes": ["LOC", "NUM", "HUM"],
                     "context": "\n".join(f"Question: {t}\nType: {label}" for t, label in examples)})
    v2 = [{"_id": f"v{i}", "question": next(sentences), "context": next(sentences), "answer": "ABCD"[i % 4],
           "difficulty": "easy", "length": "short", **{f"choice_{x}": next(sentences) for x in "ABCD"}}
          for i in range(4)]
    return {"trec": trec, "longbench_v2": v2}


V1_LAYOUTS = {"flat": "trec.jsonl", "extracted": "data/trec.jsonl", "zip": "data.zip",
              "hub-snapshot": "datasets--THUDM--LongBench/snapshots/h1/data.zip"}
V2_LAYOUTS = {"renamed": "longbench_v2.json", "repo": "data.json", "folder": "LongBench-v2/data.json",
              "lines": "longbench_v2.jsonl", "hub-snapshot": "datasets--THUDM--LongBench-v2/snapshots/h2/data.json"}


def _args(root: Path) -> argparse.Namespace:
    return argparse.Namespace(stand_in=False, data_dir=str(root), limit=None, max_length=64)


@pytest.mark.parametrize("task, layout, relative", [("trec", k, v) for k, v in V1_LAYOUTS.items()]
                         + [("longbench_v2", k, v) for k, v in V2_LAYOUTS.items()])
def test_every_longbench_layout_gives_the_same_rows(tiny_corpus, tmp_path, task, layout, relative):
    rows = _longbench_rows(tiny_corpus)[task]
    path = tmp_path / layout / relative
    path.parent.mkdir(parents=True)
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("data/trec.jsonl", lines)
            archive.writestr("data/trec_e.jsonl", "")  # LongBench-E's file of the same task is not read
    else:
        path.write_text(lines if path.suffix == ".jsonl" else json.dumps(rows), encoding="utf-8")
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / f"{task}.jsonl" if task == "trec" else reference / "longbench_v2.jsonl").write_text(lines)
    root = tmp_path / layout
    if layout == "hub-snapshot":
        root = root / Path(relative).parts[0]  # the repository folder: its only snapshot is read
    got = task_rows(task, _args(root), None)
    assert got == task_rows(task, _args(reference), None) and len(got) == len(rows)
    key = "answers" if task == "trec" else "answer"
    assert [r[key] for r in got] == [r[key] for r in rows]


def test_longbench_without_its_files_says_what_is_expected(tmp_path):
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        archive.writestr("data/lsht.jsonl", "")
    with pytest.raises(EvalError, match=r"trec\.jsonl not found; expected LongBench's data\.zip in .* \(read in "
                                        r"place\) or its data/trec\.jsonl extracted"):
        task_rows("trec", _args(tmp_path), None)
    with pytest.raises(EvalError, match=r"longbench_v2\.json not found; expected the v2 repo's data\.json"):
        task_rows("longbench_v2", _args(tmp_path), None)
