"""The encoder tokenizer families end to end through the CLIs: the same corpus sharded with a byte-level BPE, a
WordPiece (BERT: no eos, documents end with [SEP]) and a SentencePiece Unigram tokenizer trains a few steps with
MLM + the contrastive term (views split at the manifest's separator), exports, and the export works with
pipeline("fill-mask") in a fresh process; the evals read the same separator from the exported tokenizer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep import shard
from megaconcept.data.shards import read_manifest
from tokenizer_families import FAMILIES, SEPARATOR, build_all

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.num_concepts=8", "model.concept_dim=32", "model.num_heads=2", "model.num_layers=1",
        "model.max_position_embeddings=64", "train.micro_batch_size=4", "train.precision=fp32", "train.log_interval=1",
        "train.warmup_steps=1", "train.max_steps=3", "data.num_workers=1", "analysis.interval=0",
        "objective.terms.contrastive={weight: 0.5, min_tokens: 8}"]

FRESH = """
import sys, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
from evals.common import load_tokenizer, separator_id
from pathlib import Path
folder = sys.argv[1]
model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tok("The river flows through the city.", return_tensors="pt")
with torch.no_grad():
    logits = model(**ids).logits
assert logits.shape[:2] == ids["input_ids"].shape and torch.isfinite(logits).all()
fill = pipeline("fill-mask", model=folder, trust_remote_code=True)
out = fill(f"The river {tok.mask_token} the city.")
assert len(out) == 5 and all("token_str" in p for p in out)
print(separator_id(load_tokenizer(Path(folder), True)))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{cmd}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def families(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_shards_trains_exports_and_fills_masks(family: str, families: dict[str, Path], tiny_corpus: Path,
                                                      tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_corpus.read_text(encoding="utf-8").splitlines()[:400]) + "\n", encoding="utf-8")
    shards, run_dir, out = tmp_path / "shards", tmp_path / "run", tmp_path / "hf"
    assert shard.main(["--input", str(corpus), "--tokenizer", str(families[family]), "--seq-len", "64",
                       "--samples-per-shard", "64", "--out", str(shards), "--workers", "1"]) == 0
    manifest = read_manifest(str(shards))
    assert manifest.separator_token == SEPARATOR[family]
    _run([sys.executable, str(ROOT / "launchers" / "pretrain.py"), "--ds_config", str(ROOT / "ds_configs/zero3.json"),
          *TINY, f"data.shards={shards}", f"run_dir={run_dir}"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in rows if "loss/contrastive" in r]
    assert trained and all(r["contrastive/pairs"] > 0 for r in trained)  # views found documents by the separator
    _run([sys.executable, "-m", "megaconcept.export", str(run_dir), str(out)])
    fresh = _run([sys.executable, "-c", FRESH, str(out)], cwd=tmp_path)
    assert int(fresh.stdout.strip().splitlines()[-1]) == manifest.separator_id
