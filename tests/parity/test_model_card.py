"""The model card says what a user of the weights needs to know, from the files the run left: objectives and their
weights, the parallel layout, counters, the last held-out loss and concept health before the exported step, the
data and its license, the tokenizer, and a usage snippet; and it names no local path."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from megaconcept.export.card import model_card
from megaconcept.export.checkpoint import CheckpointInfo
from megaconcept.model import ConceptModelConfig

CFG = ConceptModelConfig(vocab_size=1000, num_concepts=8, concept_dim=32, num_layers=1, num_heads=2)


def _record(step: int, loss: float, rank: float, **extra) -> dict:
    return {"step": step, "heldout_loss": loss, "heldout_mlm15": loss + 0.5, "concepts/effective_rank": rank,
            "concepts/participation_ratio": 3.25, "concepts/mean_pairwise_cosine": 0.125, "concepts/uniformity": -2.5,
            "concepts/collapsed_dims": 0.0, **extra}


def _run(tmp_path: Path, sources: list[dict], step: int = 20, shards_name: str = "shards") -> CheckpointInfo:
    """A run dir with a metrics log and shards whose manifest names `sources`; the checkpoint is at `step`."""
    run, shards = tmp_path / "runs" / "r1", tmp_path / "data" / shards_name
    tag = run / "checkpoints" / f"step_{step:08d}"
    tag.mkdir(parents=True)
    shards.mkdir(parents=True)
    lines = [json.dumps({"step": 10, "loss": 5.0}), json.dumps(_record(10, 4.5, 3.0)), "{cut by a cra",
             json.dumps(_record(20, 4.25, 5.5)), json.dumps(_record(30, 3.0, 7.0)),  # after the export: ignored
             json.dumps(_record(20, 4.0, 6.0, **{"concepts/collapse_alarm": True}))]  # a resumed run wrote 20 again
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    manifest = {"sources": sources, "documents": 1234, "tokens": 56789, "seq_len": 64,
                "separator_token": "<|endoftext|>", "tokenizer": {"spec": str(tmp_path / "tok" / "my-bpe"), "sha256": "ab" * 32}}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    run_config = {"data": {"shards": str(shards)}, "train": {"precision": "bf16"},
                  "analysis": {"heldout": "last_shard", "samples": 32},
                  "objective": {"terms": {"mlm": {"weight": 1.0}, "contrastive": {"weight": 0.1, "warmup_steps": 50},
                                          "kl": None},
                                "weighting": {"scheme": "fixed"}, "masking": {"strategy": "span", "rate": 0.3}}}
    return CheckpointInfo(tag, 4, 2, 2, 1, {}, run_config, {"step": step, "tokens_seen": 81920, "samples_seen": 1280})


def _card(info: CheckpointInfo, tokenizer_dir: Path) -> str:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return str(model_card(CFG, 123456, info, tokenizer, 3, "someone/concepts"))


def test_card_reports_training_heldout_data_and_tokenizer(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    info = _run(tmp_path, [{"hub": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT", "split": "train"}])
    card = _card(info, tiny_tokenizer_dir)
    for needle in (
        "20 optimizer steps, 81,920 tokens seen (1,280 samples)",
        "Parallel layout: 4 processes: tensor 2 x pipeline 1 x data 2, ZeRO stage 3; precision `bf16`",
        "| `mlm` | mlm | 1.0 | constant |", "| `contrastive` | contrastive | 0.1 | linear warm-up over 50 steps |",
        "Weighting: `fixed`; masking: `span` at rate 0.3",
        # The last record at or before the exported step, as last written (the resumed run's step 20).
        "Measured at step 20 on the held-out batch (`analysis.heldout=last_shard`, 32 samples)",
        "| held-out loss (the MLM term, else the whole objective, on a fixed masking) | 4.0000 |",
        "| held-out MLM loss at 15% masking (comparable across runs) | 4.5000 |",
        "| effective rank (entropy, per sample) | 6.00 / 8 |", "| mean pairwise cosine | 0.125 |",
        "| collapsed dimensions | 0 |", "| collapse alarm | raised",
        "[`HuggingFaceFW/fineweb-edu`](https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu) (config "
        "`sample-10BT`, split `train`): 1,234 documents, 56,789 tokens in samples of 64.",
        "Data license: that of the dataset(s) above", "datasets:\n- HuggingFaceFW/fineweb-edu",
        "`<local>/my-bpe` (sha256 abababababababab)", "tokens including the mask token `<mask>`",
        'AutoModelForMaskedLM.from_pretrained("someone/concepts", trust_remote_code=True)'):
        assert needle in card, needle
    assert "kl" not in re.findall(r"\| `(\w+)` \|", card) and "| 3.0000 |" not in card
    assert str(tmp_path) not in card  # every local path is reduced to its last component


@pytest.mark.parametrize("sources, shards_name, license_text", [
    ([{"path": "/data/corpus/hotpotqa_paragraphs.txt", "format": "txt", "bytes": 1}], "shards",
     "HotpotQA dev set (CC BY-SA 4.0"),
    ([{"path": "/home/me/private/notes.jsonl", "format": "jsonl", "bytes": 1}], "shards",
     "Data license: not recorded by the shards (local files)"),
], ids=["embedded-demo", "local-files"])
def test_card_license_follows_the_data(sources, shards_name, license_text, tmp_path: Path,
                                       tiny_tokenizer_dir: Path) -> None:
    card = _card(_run(tmp_path, sources, shards_name=shards_name), tiny_tokenizer_dir)
    assert license_text in card
    assert "/data/corpus" not in card and "/home/me" not in card and "datasets:" not in card
    assert f"`<local>/{Path(sources[0]['path']).name}` ({sources[0]['format']})" in card


def test_card_says_what_is_missing(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    info = _run(tmp_path, [])
    (info.tag_dir.parent.parent / "metrics.jsonl").unlink()
    (Path(info.run_config["data"]["shards"]) / "manifest.json").unlink()
    card = _card(info, tiny_tokenizer_dir)
    assert "No held-out measurement was logged beside this checkpoint" in card
    assert "their manifest was not found at export time" in card and "Data license: not recorded" in card
