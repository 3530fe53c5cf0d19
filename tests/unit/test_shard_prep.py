"""data_prep.shard / data_prep.sources / data_prep.embedded: packing, accounting, skips, determinism, resume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import shard
from data_prep.embedded import iter_paragraphs
from data_prep.sources import iter_hub_dataset, iter_local_files
from megaconcept.data.shards import read_manifest, read_shard
from megaconcept.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _shard(inputs: list[str], tokenizer: Path, out: Path, *extra: str, seq_len: int = 16, per_shard: int = 4) -> int:
    return shard.main(["--input", *inputs, "--tokenizer", str(tokenizer), "--seq-len", str(seq_len),
                       "--samples-per-shard", str(per_shard), "--out", str(out), "--workers", "1", *extra])


def _all_rows(out: Path) -> np.ndarray:
    manifest = read_manifest(str(out))
    return np.concatenate([read_shard(manifest.shard_path(i), s.sha256, manifest.seq_len, s.samples)
                           for i, s in enumerate(manifest.shards)])


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def test_packing_exact_samples_eos_and_accounting(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    docs = ["Alpha beta gamma delta.", "A much longer second document that will surely cross a sample "
            "boundary when packed into sixteen-token samples.", "x", "Last one here."]
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(docs) + "\n", encoding="utf-8")
    assert _shard([str(corpus)], tiny_tokenizer_dir, tmp_path / "out") == 0
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    stream = [i for d in docs for i in tokenizer(d, add_special_tokens=False)["input_ids"] + [0]]
    manifest = read_manifest(str(tmp_path / "out"))
    rows = _all_rows(tmp_path / "out")
    assert rows.shape == (len(stream) // 16, 16)
    assert rows.reshape(-1).tolist() == stream[: rows.size]  # documents run across sample boundaries
    assert manifest.tokens == len(stream) and manifest.dropped_tokens == len(stream) % 16
    assert manifest.samples * manifest.seq_len + manifest.dropped_tokens == manifest.tokens
    assert (manifest.documents, manifest.skipped_documents, manifest.dtype) == (4, 0, "uint16")
    assert [s.samples for s in manifest.shards][:-1] == [4] * (len(manifest.shards) - 1)
    assert (manifest.eos_token_id, manifest.mask_token_id, manifest.vocab_size) == (0, 1, 1000)
    assert manifest.tokenizer["sha256"] and (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()


def test_txt_and_jsonl_skips_are_counted(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"good one\n\xff\xfe bad utf8\n\n   \nsecond good\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "ok"}\n{not json\n{"body": "x"}\n{"text": 5}\n{"text": "  "}\n[1]\n\n'
                     '{"text": "fine"}\n', encoding="utf-8")
    records = list(iter_local_files([str(txt), str(jsonl)], "text"))
    assert [t for t, _ in records if t] == ["good one", "second good", "ok", "fine"]
    reasons = [r for _, r in records if r]
    assert sorted(reasons) == sorted(["bad_utf8", "empty", "empty", "bad_json", "missing_field",
                                      "not_string", "empty", "bad_json", "empty"])


def test_skip_counts_reach_the_manifest(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"good one here\n\xff bad\n\n" + "A second good document.\n".encode() * 20)
    assert _shard([str(txt)], tiny_tokenizer_dir, tmp_path / "out") == 0
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest.documents == 21 and manifest.skipped_documents == 2
    assert manifest.skipped_by_reason == {"bad_utf8": 1, "empty": 1}


def _table_files(tmp_path: Path) -> tuple[Path, Path, list]:
    texts = ["first parquet document", None, "", "third one, with more words in it", "last"] * 30
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": texts}), parquet)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts), encoding="utf-8")
    return parquet, jsonl, texts


def test_hub_loader_streams_local_data_files(tmp_path: Path) -> None:
    parquet, jsonl, texts = _table_files(tmp_path)
    local = list(iter_local_files([str(parquet)], "content"))
    assert [t for t, _ in local] == [t or None for t in texts]
    assert list(iter_hub_dataset("parquet", None, "train", "content", str(parquet))) == local
    assert list(iter_hub_dataset("json", None, "train", "content", str(jsonl))) == local
    with pytest.raises(ValueError, match="cannot stream dataset"):
        next(iter_hub_dataset("json", None, "nosuchsplit", "content", str(jsonl)))


def test_hub_cli_path_matches_local_input(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    parquet, _, _ = _table_files(tmp_path)
    assert _shard([str(parquet)], tiny_tokenizer_dir, tmp_path / "local", "--text-field", "content") == 0
    code = shard.main(["--hub", "parquet", "--data-files", str(parquet), "--text-field", "content",
                       "--tokenizer", str(tiny_tokenizer_dir), "--seq-len", "16", "--samples-per-shard", "4",
                       "--out", str(tmp_path / "hub"), "--max-documents", "50"])
    assert code == 0
    hub = read_manifest(str(tmp_path / "hub"))
    assert hub.documents == 50 and hub.skipped_by_reason == {"empty": 17, "not_string": 17}
    assert _all_rows(tmp_path / "hub").reshape(-1).tolist() == \
        _all_rows(tmp_path / "local").reshape(-1).tolist()[: hub.samples * 16]


def test_byte_identical_across_runs_and_workers(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    args = ["--max-documents", "400"]
    assert _shard([str(tiny_corpus)], tiny_tokenizer_dir, tmp_path / "a", *args, seq_len=64, per_shard=32) == 0
    # A fresh process so the tokenizer thread pool really starts with 2 threads; also exercises `-m`.
    subprocess.run([sys.executable, "-m", "data_prep.shard", "--input", str(tiny_corpus), "--tokenizer",
                    str(tiny_tokenizer_dir), "--seq-len", "64", "--samples-per-shard", "32", "--out",
                    str(tmp_path / "b"), "--workers", "2", "--batch-docs", "7", *args],
                   check=True, cwd=REPO, capture_output=True)
    first, second = _shard_bytes(tmp_path / "a"), _shard_bytes(tmp_path / "b")
    assert len(first) >= 3 and first == second
    assert read_manifest(str(tmp_path / "a")).to_json() == read_manifest(str(tmp_path / "b")).to_json()


def test_resume_after_interruption_gives_same_bytes(tiny_corpus: Path, tiny_tokenizer_dir: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ([str(tiny_corpus)], tiny_tokenizer_dir)
    opts = dict(seq_len=64, per_shard=16)
    assert _shard(*args, tmp_path / "full", "--max-documents", "300", **opts) == 0
    real_write = shard.write_shard

    def failing_write(out_dir: Path, index: int, samples: np.ndarray):
        if index == 5:
            raise KeyboardInterrupt  # what an operator's Ctrl-C looks like mid-run
        return real_write(out_dir, index, samples)

    monkeypatch.setattr(shard, "write_shard", failing_write)
    with pytest.raises(KeyboardInterrupt):
        _shard(*args, tmp_path / "resumed", "--max-documents", "300", **opts)
    progress = json.loads((tmp_path / "resumed" / ".progress.json").read_text())
    assert len(progress["shards"]) == 5 and not (tmp_path / "resumed" / "manifest.json").exists()
    monkeypatch.setattr(shard, "write_shard", real_write)
    added: list[int] = []
    real_add = shard.Packer.add_document
    monkeypatch.setattr(shard.Packer, "add_document", lambda self, ids: (added.append(1), real_add(self, ids)))
    assert _shard(*args, tmp_path / "resumed", "--max-documents", "300", **opts) == 0
    assert len(added) == 300 - progress["documents"]  # consumed documents are not tokenized again
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "full")
    assert (read_manifest(str(tmp_path / "resumed")).to_json() == read_manifest(str(tmp_path / "full")).to_json())
    assert not (tmp_path / "resumed" / ".progress.json").exists()


def test_finished_dir_and_settings_mismatch(tiny_tokenizer_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("Some words to pack into a few samples of tokens.\n" * 10, encoding="utf-8")
    out = tmp_path / "out"
    assert _shard([str(corpus)], tiny_tokenizer_dir, out) == 0
    before = _shard_bytes(out)
    assert _shard([str(corpus)], tiny_tokenizer_dir, out) == 0
    assert "already complete" in capsys.readouterr().out and _shard_bytes(out) == before
    assert _shard([str(corpus)], tiny_tokenizer_dir, out, seq_len=8) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "--overwrite" in err and err.count("\n") == 1
    assert _shard([str(corpus)], tiny_tokenizer_dir, out, "--overwrite", seq_len=8) == 0
    assert read_manifest(str(out)).seq_len == 8


def test_bad_inputs_are_one_line_errors(tiny_tokenizer_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    assert _shard([str(tmp_path / "missing.txt")], tiny_tokenizer_dir, tmp_path / "o1") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("a\n")
    assert _shard([str(tmp_path / "x.csv")], tiny_tokenizer_dir, tmp_path / "o2") == 2
    assert "unsupported suffix" in capsys.readouterr().err
    (tmp_path / "tiny.txt").write_text("hi\n")
    assert _shard([str(tmp_path / "tiny.txt")], tiny_tokenizer_dir, tmp_path / "o3", seq_len=512) == 2
    assert "not enough for one sample" in capsys.readouterr().err


def test_embedded_paragraphs_dedupe_and_format() -> None:
    questions = [{"context": [["A", ["One.", " Two."]], ["B", ["Three."]]]},
                 {"context": [["A", ["One.", " Two."]], ["A", ["Other."]], ["C", ["Line\nbreak."]]]}]
    assert list(iter_paragraphs(questions)) == ["A: One. Two.", "B: Three.", "A: Other.", "C: Line break."]
    assert list(iter_paragraphs(questions, limit=2)) == ["A: One. Two.", "B: Three."]
