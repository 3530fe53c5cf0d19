"""`python -m evals.efficiency` end to end on CPU with a tiny model: reports, ratios, loss-path memory, skips, errors.

Timings on a shared CPU are noise, so only memory comparisons and the consistency of the reports are asserted.
"""
import json
from pathlib import Path

import pytest

from evals import efficiency
from megaconcept.model import ConceptModelConfig
from megaconcept.model.hf_configuration import MegaconceptConfig

TINY = ConceptModelConfig(vocab_size=1000, num_concepts=4, concept_dim=32, num_heads=2, num_layers=1,
                          max_position_embeddings=64)
FAST = ["--device", "cpu", "--repeats", "1", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    fields = {k: v for k, v in TINY.to_dict().items() if k != "backbone"}
    path.write_text("model:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in fields.items()))
    return path


def test_reports_both_models_and_the_loss_path(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    assert efficiency.main(["--config", str(tiny_recipe), "--lengths", "64,128,256", "--tokens-per-step", "256",
                            "--loss-shapes", "1x256,2x256", "--out", str(out), *FAST]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["device"]["type"] == "cpu" and result["device"]["dtype"] == "fp32"
    assert {"torch", "transformers"} <= set(result["versions"])
    assert result["full_encoder"] == {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                      "intermediate_size": TINY.mlp_dim}
    rows = result["lengths"]
    assert [(r["seq_len"], r["batch"]) for r in rows] == [(64, 4), (128, 2), (256, 1)]
    for row in rows:
        for name in ("concept", "full"):
            assert row[name]["status"] == "ok" and row[name]["time_ms"] > 0 and row[name]["peak_mib"] >= 0
        assert row["time_ratio"] == pytest.approx(row["full"]["time_ms"] / row["concept"]["time_ms"])
        if row["concept"]["peak_mib"] > 0:
            assert row["memory_ratio"] == pytest.approx(row["full"]["peak_mib"] / row["concept"]["peak_mib"])
    for name in ("concept", "full"):
        scaling = result["scaling"][name]
        assert scaling["time_exponent_per_sequence"] == pytest.approx(scaling["time_exponent_fixed_tokens"] + 1)
    loss = result["loss_path"]
    assert loss["vocab"] == 49152 and [r["positions"] for r in loss["rows"]] == [38, 76]
    for row in loss["rows"]:
        sparse, dense = row["sparse_chunked"]["peak_mib"], row["dense"]["peak_mib"]
        assert 0 < sparse < dense and row["memory_ratio"] == pytest.approx(dense / sparse)
    md = (out / "results.md").read_text()
    assert "| 256 | 1 |" in md and "time exponent, per sequence" in md and "| 2x256 | 76 |" in md
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_model_folder_and_cells_over_the_memory_cap(tmp_path: Path) -> None:
    MegaconceptConfig.from_model_config(TINY).save_pretrained(str(tmp_path / "export"))
    out = tmp_path / "res"
    # 0.1 GiB: the full encoder's 4096^2 attention matrix (128 MiB) is over it; everything else runs.
    assert efficiency.main(["--model", str(tmp_path / "export"), "--lengths", "64,4096", "--tokens-per-step", "64",
                            "--loss-shapes", "1x64", "--memory-cap-gib", "0.1", "--out", str(out), *FAST]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["model_config"]["concept_dim"] == 32 and result["model_config"]["max_position_embeddings"] == 4096
    short, long = result["lengths"]
    assert short["full"]["status"] == "ok" and long["concept"]["status"] == "ok"
    assert long["full"]["status"] == "skipped" and long["time_ratio"] is None
    assert "SKIPPED" in (out / "results.md").read_text()


@pytest.mark.parametrize("args, fragment", [
    (["--lengths", "64,abc"], "--lengths '64,abc' must be comma-separated positive integers"),
    (["--lengths", "0,128"], "must be comma-separated positive integers"),
    (["--loss-shapes", "4x"], "--loss-shapes '4x' must be comma-separated positive BATCHxSEQ_LEN pairs"),
    (["--model", "/nonexistent/export"], "is not an exported folder with a config.json"),
    (["--device", "tpu"], "unknown --device 'tpu'; valid: auto, cpu, cuda"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
])
def test_bad_input_is_one_line(args, fragment, capsys, tmp_path):
    assert efficiency.main([*args, "--out", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "res").exists()
