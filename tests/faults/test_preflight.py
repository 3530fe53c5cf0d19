"""Shard directories that contradict themselves are refused before anything is written: a swapped tokenizer,
a manifest that lies about its vocabulary, ids outside it."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megaconcept.data.preflight import check_shards
from megaconcept.data.shards import ShardError, encode_shard, read_manifest, read_shard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import TINY, env  # noqa: E402


@pytest.fixture()
def shards(tmp_path, tiny_shards):
    out = tmp_path / "shards"
    shutil.copytree(tiny_shards, out)
    return out


def _edit_manifest(shards, **changes):
    path = shards / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_intact_shards_pass(shards):
    check_shards(read_manifest(str(shards)))


def test_a_swapped_tokenizer_is_refused(shards, tmp_path):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(str(shards / "tokenizer"))
    other.add_tokens(["<extra>"])
    shutil.rmtree(shards / "tokenizer")
    other.save_pretrained(str(shards / "tokenizer"))
    with pytest.raises(ShardError, match=r"tokenizer is not the tokenizer .*manifest.json records"):
        check_shards(read_manifest(str(shards)))


@pytest.mark.parametrize("changes, fragment", [
    ({"mask_token_id": 10**6}, "mask_token_id=1000000 outside the vocabulary"),
    ({"eos_token_id": -1}, "eos_token_id=-1 outside the vocabulary"),
    ({"vocab_size": 500}, "says vocab_size=500 but its tokenizer has"),
    ({"special_token_ids": [0, 1, 99999]}, "special_token_ids[2]=99999"),
])
def test_manifest_lies_are_refused(shards, changes, fragment):
    _edit_manifest(shards, **changes)
    with pytest.raises(ShardError) as err:
        check_shards(read_manifest(str(shards)))
    assert fragment in str(err.value) and "manifest.json" in str(err.value) and "\n" not in str(err.value)


def test_a_shard_holding_ids_beyond_the_vocabulary_is_named(shards):
    manifest = read_manifest(str(shards))
    rows = np.full((4, manifest.seq_len), manifest.vocab_size + 7, dtype=np.int64)
    path = shards / "shard-bad.tar"
    path.write_bytes(encode_shard(0, rows))
    with pytest.raises(ShardError, match=rf"shard-bad.tar holds id {manifest.vocab_size + 7}, outside"):
        read_shard(str(path), None, manifest.seq_len, vocab_size=manifest.vocab_size)


def test_the_cli_refuses_a_lying_manifest_before_writing_anything(shards, tmp_path):
    _edit_manifest(shards, mask_token_id=10**6)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "launchers" / "pretrain.py"), *TINY, f"data.shards={shards}",
           f"run_dir={run_dir}"]
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "mask_token_id=1000000" in errors[0]
    assert not run_dir.exists()
