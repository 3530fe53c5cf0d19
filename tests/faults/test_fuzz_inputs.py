"""Seeded fuzzing of what users hand the tools: corpus files for data_prep and recipe YAML for pretraining.

Every input either works, is a counted skip (a reason from sources.SKIP_REASONS), or raises the one-line
error type the CLI prints as `error: ...` (ValueError for data_prep.shard, ConfigError for the launcher),
naming the file. Any other exception is a bug.
"""
from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import shard
from data_prep.sources import SKIP_REASONS, iter_local_files
from megaconcept.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Alpha beta gamma.\nCafé naïve — déjà vu.\n\nΑθήνα 東京 line three\n"
JSONL = "".join(json.dumps({"text": line, "id": i}, ensure_ascii=False) + "\n"
                for i, line in enumerate(TEXT.splitlines()))
RECIPE = (ROOT / "launchers" / "configs" / "demo_smollm2.yaml").read_text(encoding="utf-8") + \
    "objective:\n  masking:\n    rate: 0.2  # café\n"
WRONG_SHAPES = ["[1, 2]", '"text"', "null", "3.5", '{"text": 5}', '{"text": {"a": 1}}', '{"text": ["a"]}',
                '{"body": "x"}', '{"text": "a\\u0000b"}', "[" * 5000 + "]" * 5000, '{"text": 1' + "0" * 5000 + "}"]


def _parquet_bytes() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": TEXT.splitlines() * 20, "n": list(range(80))}), sink, row_group_size=16)
    return sink.getvalue()


def _variants(valid: bytes, text: str | None, rng: random.Random) -> Iterator[bytes]:
    """Random bytes, truncations at many offsets, other encodings, NULs and flipped bytes of ``valid``."""
    for _ in range(8):
        yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    for cut in sorted(rng.sample(range(len(valid)), min(40, len(valid)))):
        yield valid[:cut]
    if text is not None:
        for encoding in ("latin-1", "utf-16", "utf-16-le", "utf-32", "utf-8-sig"):
            yield text.encode(encoding, errors="replace")
    for _ in range(6):
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 5)):
            data.insert(rng.randrange(len(data) + 1), 0)
        yield bytes(data)
    for _ in range(6):
        data = bytearray(valid)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        yield bytes(data)


def _check_reader(path: Path, text_field: str = "text") -> None:
    try:
        records = list(iter_local_files([str(path)], text_field))
    except ValueError as err:
        assert "\n" not in str(err) and str(path) in str(err), str(err)
        return
    for text, reason in records:
        assert (text is None) != (reason is None)
        assert reason in SKIP_REASONS if reason is not None else isinstance(text, str) and "\x00" not in text


@pytest.mark.parametrize("suffix, valid", [(".txt", TEXT), (".jsonl", JSONL)])
def test_text_readers_never_raise_anything_else(tmp_path: Path, suffix: str, valid: str) -> None:
    rng = random.Random(f"{suffix}-1")
    cases = list(_variants(valid.encode(), valid, rng))
    if suffix == ".jsonl":
        cases += [(shape + "\n").encode() for shape in WRONG_SHAPES]
    for index, data in enumerate(cases):
        path = tmp_path / f"case{index}{suffix}"
        path.write_bytes(data)
        _check_reader(path)


def test_wide_encodings_are_one_line_errors_not_silent_garbage(tmp_path: Path) -> None:
    path = tmp_path / "wide.txt"
    path.write_bytes(TEXT.encode("utf-16"))
    with pytest.raises(ValueError, match="UTF-16/32 text"):
        list(iter_local_files([str(path)], "text"))
    path.write_bytes(TEXT.encode("utf-16-le"))  # no byte-order mark: every line holds NULs
    assert {reason for _, reason in iter_local_files([str(path)], "text")} <= {"nul_byte", "bad_utf8", "empty"}
    path.write_bytes(TEXT.encode("utf-8-sig"))
    assert next(iter_local_files([str(path)], "text"))[0] == "Alpha beta gamma."


def test_parquet_reader_never_raises_anything_else(tmp_path: Path) -> None:
    rng = random.Random("parquet-1")
    valid = _parquet_bytes()
    for index, data in enumerate(_variants(valid, None, rng)):
        path = tmp_path / f"case{index}.parquet"
        path.write_bytes(data)
        _check_reader(path)
    path = tmp_path / "ok.parquet"
    path.write_bytes(valid)
    _check_reader(path, "n")  # a non-string column: every row a counted not_string skip
    with pytest.raises(ValueError, match="no column 'body'"):
        list(iter_local_files([str(path)], "body"))


def _check_recipe(path: Path) -> None:
    try:
        load_config(str(path))
    except ConfigError as err:
        assert "\n" not in str(err), str(err)
        # Bad values are named by key; anything about the file itself names the file.
        assert str(path) in str(err) or "=" in str(err) or "invalid value for" in str(err), str(err)


def test_recipe_loader_never_raises_anything_else(tmp_path: Path) -> None:
    rng = random.Random("recipe-1")
    shapes = ["- 1\n- 2\n", "0\n", "'text'\n", "train: 5\n", "train:\n", "model:\n  backbone: [1]\n",
              "train:\n  betas: {a: 1}\n", "seed: 2020-01-01\n", "1: 2\n", "? [1]\n: 2\n", "[" * 3000,
              "train:\n  max_steps: ${nope}\n", "x: !!binary aGVsbG8=\n", "train: &a {lr: *a}\n"]
    cases = list(_variants(RECIPE.encode(), RECIPE, rng)) + [s.encode() for s in shapes]
    for index, data in enumerate(cases):
        path = tmp_path / f"case{index}.yaml"
        path.write_bytes(data)
        _check_recipe(path)


def _single_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def test_shard_cli_bad_input_is_one_line_and_leaves_nothing(tiny_tokenizer_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(_parquet_bytes()[:-9])  # truncated: the footer is gone
    out = tmp_path / "out"
    code = shard.main(["--input", str(bad), "--tokenizer", str(tiny_tokenizer_dir), "--seq-len", "8",
                       "--out", str(out), "--workers", "1"])
    assert code == 2 and str(bad) in _single_error(capsys.readouterr().err)
    assert not out.exists()  # no tokenizer/ folder, no progress: the run created OUT, so OUT goes too


def test_pretrain_cli_binary_recipe_is_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "binary.yaml"
    recipe.write_bytes(bytes(random.Random(7).randrange(256) for _ in range(256)) + b"\xff")
    proc = subprocess.run([sys.executable, str(ROOT / "launchers" / "pretrain.py"), "--config", str(recipe),
                           f"run_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not UTF-8" in _single_error(proc.stderr)
    assert not (tmp_path / "run").exists()


def test_failed_run_removes_only_what_it_wrote(tiny_tokenizer_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("Some words to pack into a few samples of tokens.\n" * 40, encoding="utf-8")
    out = tmp_path / "out"
    args = ["--input", str(corpus), "--tokenizer", str(tiny_tokenizer_dir), "--seq-len", "8",
            "--samples-per-shard", "4", "--out", str(out), "--workers", "1", "--batch-docs", "1"]
    real_write = shard.write_shard

    def failing_at(index: int, exc: BaseException):
        def write(out_dir: Path, i: int, samples):
            if i == index:
                raise exc
            return real_write(out_dir, i, samples)
        return write

    out.mkdir()
    (out / "notes.md").write_text("the user's own file")
    monkeypatch.setattr(shard, "write_shard", failing_at(3, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        shard.main(args)
    kept = {p.name: p.read_bytes() for p in out.iterdir()}  # resumable: shards 0-2 and their progress
    assert ".progress.json" in kept and "tokenizer" not in kept and "tokenizer.tmp" not in kept
    monkeypatch.setattr(shard, "write_shard", failing_at(6, ValueError("disk says no")))
    assert shard.main(args) == 2 and "disk says no" in _single_error(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept  # the resumed run's shards 3-5 are gone
    monkeypatch.setattr(shard, "write_shard", real_write)
    assert shard.main(args) == 0 and (out / "tokenizer").is_dir() and (out / "notes.md").is_file()
