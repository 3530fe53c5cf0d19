"""`python -m evals.concepts` end to end on a tiny exported model: shards and text in, metrics + usage out."""
import json
import math
import shutil

import pytest
import torch
from transformers import AutoModel

from evals import concepts

METRICS = {"num_samples", "num_concepts", "num_vectors", "concept_dim", "effective_rank", "global_effective_rank",
           "participation_ratio", "mean_pairwise_cosine", "max_pairwise_cosine", "dims_for_95pct_variance",
           "top1_singular_share", "uniformity", "collapsed_dims", "twonn_dimension"}


def _run(export_dir, data, out, *extra):
    return concepts.main(["--model", str(export_dir), "--data", str(data), "--max-length", "64", "--batch-size", "8",
                          "--out", str(out), *extra])


def test_shards_give_every_metric_usage_and_spectrum(export_dir, tiny_shards, tmp_path):
    out = tmp_path / "res"
    assert _run(export_dir, tiny_shards, out, "--limit", "20") == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert set(metrics) == METRICS and all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["num_samples"] == 20 and metrics["num_concepts"] == 4 and metrics["concept_dim"] == 32
    assert results["data"]["kind"] == "shards" and results["data"]["tokens"] == 20 * 64
    usage = results["usage"]
    assert len(usage["per_concept"]) == 4 and sum(usage["per_concept"]) == pytest.approx(1.0)
    assert usage["tokens"] == 20 * 64 and usage["dead_concepts"] == sum(u == 0 for u in usage["per_concept"])
    assert 1 <= usage["perplexity"] <= 4 and all(0 <= e <= 1 for e in usage["attention_entropy"])
    assert (out / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| effective_rank |" in (out / "results.md").read_text()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_text_files_are_tokenized_per_document(export_dir, tmp_path, suffix):
    docs = ["the cat sat on the mat", "a dog ran in the park", "", "birds flew over the river"]
    lines = docs if suffix == ".txt" else [json.dumps({"text": d}) if d else "" for d in docs]
    data = tmp_path / f"docs{suffix}"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "res"
    assert _run(export_dir, data, out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["samples"] == 3 and results["metrics"]["num_vectors"] == 3 * 4  # blank line skipped
    assert sum(results["usage"]["per_concept"]) == pytest.approx(1.0)
    assert results["usage"]["tokens"] == results["data"]["tokens"]  # padding is never counted


def test_usage_counts_each_real_token_for_its_top_concept():
    usage = concepts.Usage(3)
    # (B, C, N): each concept's attention over tokens. Sample 0 has 3 real tokens, sample 1 one.
    weights = torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.25, 0.25, 0.5]],
                            [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    usage.add(weights, torch.tensor([[1, 1, 1], [1, 0, 0]]))
    summary = usage.summary()
    # Sample 0: tokens 0, 1 peak at concept 0, token 2 at concepts 1 and 2 (a tie: the lowest index, 1).
    # Sample 1: its one token ties all three concepts: concept 0.
    assert summary["per_concept"] == [pytest.approx(3 / 4), pytest.approx(1 / 4), 0.0]
    assert summary["tokens"] == 4 and summary["dead_concepts"] == 1
    assert summary["entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    # Only sample 0 has a spread to measure: concept 0 attends to 2 of 3 tokens equally -> log 2 / log 3.
    assert summary["attention_entropy"][0] == pytest.approx(math.log(2) / math.log(3))
    assert summary["attention_entropy"][1] == pytest.approx(1.5 * math.log(2) / math.log(3))


def test_exported_attention_weights_reproduce_the_block_output(export_dir):
    """output_attentions: softmax(QK^T / sqrt(d)) times V, through o_proj, is what the SDPA block computed;
    padding gets exactly 0 and the traced concepts equal the plain forward's."""
    model = AutoModel.from_pretrained(str(export_dir), trust_remote_code=True).eval()
    block = model.encoder.layers[-1].cross
    seen = {}
    handle = block.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    ids = torch.randint(2, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask)
        queries, tokens, key_mask = seen["args"]
        sdpa_out = seen["out"]
        traced = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        weights = traced.attentions[-1]  # (B, H, C, N)
        v = block.attn.v_proj(block.kv_norm(tokens)).unflatten(-1, (block.attn.num_heads, -1)).transpose(1, 2)
        rebuilt = queries + block.attn.o_proj((weights @ v).transpose(1, 2).flatten(-2))
    handle.remove()
    layers = model.config.num_layers
    assert len(traced.attentions) == layers and len(traced.hidden_states) == layers + 1
    assert weights.shape == (2, model.config.num_heads, model.config.num_concepts, 10)
    assert weights[1, :, :, 6:].abs().max() == 0 and weights.sum(-1).sub(1).abs().max() < 1e-5
    torch.testing.assert_close(rebuilt, sdpa_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traced.last_hidden_state, plain.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert model(input_ids=ids).attentions is None  # nothing extra unless asked


def _corrupt_shards(tmp_path, tiny_shards):
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    first = sorted(copy.glob("shard-*.tar"))[0]
    data = bytearray(first.read_bytes())
    data[600] ^= 0xFF
    first.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("make, fragment", [
    (lambda p, s: p / "missing", "does not exist"),
    (lambda p, s: (p / "x.csv").write_text("a\n") and p / "x.csv", "unknown file type '.csv'"),
    (lambda p, s: (p / "empty.txt").write_text("\n\n") and p / "empty.txt", "holds no documents"),
    (lambda p, s: (p / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n') and p / "bad.jsonl", "bad.jsonl:2"),
    (lambda p, s: p, "without manifest.json"),
    (_corrupt_shards, "fails its checksum"),
])
def test_bad_data_is_a_one_line_error(export_dir, tiny_shards, tmp_path, capsys, make, fragment):
    data = make(tmp_path, tiny_shards)
    assert _run(export_dir, data, tmp_path / "res") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert concepts.main(["--model", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a directory" in err[0]
