"""HF export parity: real 2-rank DeepSpeed checkpoints (ZeRO-3, ZeRO-1, ZeRO-0) -> HF folder -> same logits.

The checkpoints come from tests/parity/_make_checkpoint.py, run once per session under torchrun on CPU/gloo,
which also records the native weights (gathered from the live engine) and native logits for a probe input.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from megaconcept.export import __main__ as cli
from megaconcept.export.checkpoint import ExportError
from megaconcept.export.gather import check_against_native, strip_wrapper_prefixes
from megaconcept.export.hf_folder import hf_names, shipped_code
from megaconcept.model import ConceptModelConfig
from megaconcept.model.config import BackboneConfig
from megaconcept.model.hf_configuration import MegaconceptConfig
from megaconcept.model.hf_modeling import MegaconceptForMaskedLM, MegaconceptModel

pytestmark = pytest.mark.distributed  # the checkpoints come from a 2-process torchrun
ROOT = Path(__file__).resolve().parents[2]
MAKE_CHECKPOINT = Path(__file__).with_name("_make_checkpoint.py")

_LAYER = ["cross.query_norm.weight", "cross.kv_norm.weight", *[f"cross.attn.{p}_proj.weight" for p in "qkvo"],
          "self_attn.norm.weight", *[f"self_attn.attn.{p}_proj.weight" for p in "qkvo"], "mlp.norm.weight",
          *[f"mlp.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]]
# The canonical key set of the tiny model (2 encoder layers, 1 decoder layer, tied head): no wrapper prefixes,
# no separate lm_head.weight.
PINNED_KEYS = {
    "encoder.token_embed.weight", "encoder.position_embed.weight", "encoder.concepts", "encoder.norm.weight",
    *[f"encoder.layers.{i}.{name}" for i in range(2) for name in _LAYER],
    "decoder.position_queries.weight", "decoder.cross.0.query_norm.weight", "decoder.cross.0.kv_norm.weight",
    *[f"decoder.cross.0.attn.{p}_proj.weight" for p in "qkvo"], "decoder.mlp.0.norm.weight",
    *[f"decoder.mlp.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")], "decoder.norm.weight",
    "lm_bias",
}

FRESH_PROCESS = """
import json, sys, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
folder, native_path, result = sys.argv[1:]
native = torch.load(native_path)
model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(input_ids=native["input_ids"], attention_mask=native["attention_mask"]).logits
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
fill = pipeline("fill-mask", model=folder, trust_remote_code=True)
predictions = fill(f"The river {tokenizer.mask_token} city.")
torch.save({"logits": logits, "module": type(model).__module__, "predictions": predictions}, result)
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def checkpoints(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/zero{3,1,0}/ run dirs, each with checkpoints/step_00000001 and native.pt (2 ranks each)."""
    out = tmp_path_factory.mktemp("export_ckpts")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(MAKE_CHECKPOINT), str(out), str(tiny_tokenizer_dir), "3,1,0"]
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def exported_zero3(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export_hf") / "zero3"
    assert cli.main([str(checkpoints / "zero3"), str(out)]) == 0
    return out


def _native(checkpoints: Path, stage: int) -> dict:
    return torch.load(checkpoints / f"zero{stage}" / "native.pt")


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _copy_run(checkpoints: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(checkpoints / "zero3", run)
    return run, run / "checkpoints" / "step_00000001"


def test_fresh_process_logits_and_fill_mask(exported_zero3: Path, checkpoints: Path, tmp_path: Path) -> None:
    # No PYTHONPATH to the repo and cwd elsewhere: the folder's own code must be all that is needed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = tmp_path / "result.pt"
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(exported_zero3),
                           str(checkpoints / "zero3" / "native.pt"), str(result)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(result)
    assert got["module"].startswith("transformers_modules.")
    native = _native(checkpoints, 3)["logits"]
    assert got["logits"].shape == native.shape
    assert (got["logits"] - native).abs().max().item() <= 1e-5
    assert len(got["predictions"]) == 5 and all("token_str" in p for p in got["predictions"])


def test_safetensors_hold_exactly_the_native_weights(exported_zero3: Path, checkpoints: Path) -> None:
    saved = load_file(str(exported_zero3 / "model.safetensors"))
    native = _native(checkpoints, 3)["weights"]
    assert set(saved) == PINNED_KEYS == set(native)
    assert all(t.numel() > 0 for t in saved.values())
    assert max((saved[k] - native[k]).abs().max().item() for k in saved) <= 1e-6


@pytest.mark.parametrize("stage", [1, 0])
def test_zero1_and_zero0_consolidate(stage: int, checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / f"zero{stage}"
    # The checkpoints dir form of CHECKPOINT follows `latest`.
    assert cli.main([str(checkpoints / f"zero{stage}" / "checkpoints"), str(out)]) == 0
    native = _native(checkpoints, stage)
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == PINNED_KEYS
    assert max((saved[k] - native["weights"][k]).abs().max().item() for k in saved) <= 1e-6
    model = MegaconceptForMaskedLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        logits = model(native["input_ids"], native["attention_mask"]).logits
    assert (logits - native["logits"]).abs().max().item() <= 1e-5


def test_folder_contents_config_and_card(exported_zero3: Path, tiny_tokenizer_dir: Path) -> None:
    names = {p.name for p in exported_zero3.iterdir()}
    # Exactly the code the auto_map's classes import; training-only modules stay home.
    assert {n for n in names if n.endswith(".py")} == set(shipped_code())
    assert not {"warmstart.py", "sharding.py", "lm_loss.py", "__init__.py"} & names
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    config = json.loads((exported_zero3 / "config.json").read_text())
    assert config["model_type"] == "megaconcept" and config["architectures"] == ["MegaconceptForMaskedLM"]
    assert config["auto_map"]["AutoConfig"] == "hf_configuration.MegaconceptConfig"
    assert config["auto_map"]["AutoModelForMaskedLM"] == "hf_modeling.MegaconceptForMaskedLM"
    assert "AutoTokenizer" not in config["auto_map"]  # a tokenizer is data: no code is named for it
    tokenizer_config = json.loads((exported_zero3 / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in tokenizer_config
    from transformers import AutoTokenizer

    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)))
    card = (exported_zero3 / "README.md").read_text()
    for needle in ("license: apache-2.0", "trust_remote_code=True", "HotpotQA", "CC BY-SA 4.0", "1 optimizer steps",
                   "32 tokens seen", "8 x 32", "2 processes: tensor 1 x pipeline 1 x data 2, ZeRO stage 3",
                   "| `mlm` | mlm | 1.0 | constant |", "No held-out measurement was logged", "## Tokenizer",
                   f"{len(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))):,} tokens including the mask token"):
        assert needle in card, needle
    for text in (card, (exported_zero3 / "config.json").read_text(), json.dumps(tokenizer_config)):
        assert str(ROOT) not in text and str(exported_zero3.parent) not in text  # nothing local is pushed


def test_card_usage_snippet_runs_as_written(exported_zero3: Path) -> None:
    """The card's python block, verbatim, in a fresh process without the project, from the folder's parent (it
    loads by the folder's name, which is also what it would be called on the hub), hub offline, stdin closed."""
    snippet = re.search(r"```python\n(.*?)```", (exported_zero3 / "README.md").read_text(), re.S).group(1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", snippet], env=env, cwd=exported_zero3.parent, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "token_str" in proc.stdout and "torch.Size([1, 8, 32])" in proc.stdout, proc.stdout[-2000:]
    output = proc.stdout + proc.stderr
    assert "Do you wish to run the custom code" not in output and "You are using a model of type" not in output


def test_bf16_export(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    assert cli.main([str(checkpoints / "zero3"), str(out), "--dtype", "bf16"]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_missing_rank_file_fails_loudly(checkpoints: Path, tmp_path: Path, capsys) -> None:
    run, tag = _copy_run(checkpoints, tmp_path)
    (tag / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    out = tmp_path / "hf"
    assert cli.main([str(run), str(out)]) == 2
    assert "zero_pp_rank_1_mp_rank_00_model_states.pt" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no OUT_DIR, no temp dir left


def test_truncated_shard_fails_loudly(checkpoints: Path, tmp_path: Path, capsys) -> None:
    run, tag = _copy_run(checkpoints, tmp_path)
    shard = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "hf"
    assert cli.main([str(run), str(out)]) == 2
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_incomplete_checkpoint_refused(checkpoints: Path, tmp_path: Path, capsys) -> None:
    _, tag = _copy_run(checkpoints, tmp_path)
    (tag / "COMPLETE").unlink()
    assert cli.main([str(tag), str(tmp_path / "hf")]) == 2
    assert "COMPLETE" in _error_line(capsys)


def test_non_empty_out_dir_that_is_not_an_export_refused(checkpoints: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert cli.main([str(checkpoints / "zero3"), str(out)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert (out / "keep.txt").read_text() == "user data"
    # A folder the export did not write (no megaconcept_export.json) is never replaced, even with --overwrite
    # (tests/faults/test_export_safety.py covers replacing a previous export).
    assert cli.main([str(checkpoints / "zero3"), str(out), "--overwrite"]) == 2
    assert "megaconcept_export.json" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("make", ["missing", "empty_dir"])
def test_bad_checkpoint_path_is_one_line(make: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "nope"
    if make == "empty_dir":
        path.mkdir()
    assert cli.main([str(path), str(tmp_path / "hf")]) == 2
    line = _error_line(capsys)
    assert str(path) in line and "expected a checkpoint tag dir" in line
    assert not (tmp_path / "hf").exists()


def test_push_to_hub_argument_handling(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["ckpt", "out", "--private"])
    with pytest.raises(SystemExit):
        cli.parse_args(["ckpt", "out", "--push-to-hub", "no-namespace"])
    calls = []
    monkeypatch.setattr(cli, "export_checkpoint", lambda *args: calls.append(("export", *args)) or tmp_path)
    monkeypatch.setattr("megaconcept.export.hub.push_folder", lambda *args: calls.append(("push", *args)) or "url")
    assert cli.main(["ckpt", "out", "--push-to-hub", "me/model", "--private", "--dtype", "bf16"]) == 0
    assert calls == [("export", "ckpt", "out", "bf16", False, "me/model"), ("push", tmp_path, "me/model", True)]


def test_wrapper_prefixes_are_stripped() -> None:
    weights = {"module.encoder.x": 1, "_orig_mod.decoder.y": 2, "encoder._orig_mod.layers.0.w": 3, "lm_bias": 4}
    assert strip_wrapper_prefixes(weights) == {"encoder.x": 1, "decoder.y": 2, "encoder.layers.0.w": 3, "lm_bias": 4}


def test_native_check_names_empty_and_foreign_keys() -> None:
    cfg = ConceptModelConfig(vocab_size=50, num_concepts=4, concept_dim=16, num_layers=1, num_heads=2)
    from megaconcept.model import ConceptMLM

    weights = ConceptMLM(cfg).state_dict()
    weights["decoder.norm.weight"] = torch.empty(0)
    weights["lm_head.weight"] = weights.pop("lm_bias")
    with pytest.raises(ExportError) as err:
        check_against_native(weights, cfg)
    message = str(err.value)
    assert "empty tensors" in message and "decoder.norm.weight" in message
    assert "missing keys: lm_bias" in message and "unexpected keys: lm_head.weight" in message


def test_untied_head_round_trips(tmp_path: Path) -> None:
    from megaconcept.model import ConceptMLM

    cfg = ConceptModelConfig(vocab_size=40, num_concepts=4, concept_dim=16, num_layers=1, num_heads=2,
                             max_position_embeddings=8, tie_word_embeddings=False)
    native = ConceptMLM(cfg).eval()
    model = MegaconceptForMaskedLM(MegaconceptConfig.from_model_config(cfg))
    model.load_state_dict(hf_names(native.state_dict(), model), strict=True)
    model.save_pretrained(str(tmp_path))
    loaded = MegaconceptForMaskedLM.from_pretrained(str(tmp_path)).eval()
    # A plain save_pretrained writes the HF layout: the base model's parts under base_model_prefix.
    saved = set(load_file(str(tmp_path / "model.safetensors")))
    assert saved == set(hf_names(native.state_dict(), model)) and "megaconcept.encoder.concepts" in saved
    assert "lm_head.weight" in saved
    ids = torch.randint(0, 40, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, native.logits(native(ids).states))
        loss = loaded(ids, labels=torch.full_like(ids, -100).index_fill_(1, torch.tensor([3]), 5)).loss
    assert torch.isfinite(loss)


def test_backbone_round_trips_past_the_table(tmp_path: Path) -> None:
    """A RoPE backbone with sinusoidal decoder queries, saved and loaded through transformers: the loaded
    model computes exactly the native model's states and logits, also on more tokens than the 8-row table.
    A large init_std makes attention sharp, so wrong rotation frequencies could not hide in uniform weights
    (transformers 5 once left a non-persistent frequency buffer uninitialized on load)."""
    from megaconcept.model import ConceptMLM

    torch.manual_seed(0)
    backbone = BackboneConfig(num_layers=1, hidden_size=24, num_heads=3, num_kv_heads=1, intermediate_size=48)
    cfg = ConceptModelConfig(vocab_size=40, num_concepts=4, concept_dim=12, num_layers=1, num_heads=3, init_std=0.5,
                             max_position_embeddings=8, decoder_positions="sinusoidal", backbone=backbone)
    native = ConceptMLM(cfg).eval()
    saved = MegaconceptForMaskedLM(MegaconceptConfig.from_model_config(cfg))
    saved.load_state_dict(hf_names(native.state_dict(), saved), strict=True)
    saved.save_pretrained(str(tmp_path))
    loaded = MegaconceptForMaskedLM.from_pretrained(str(tmp_path)).eval()
    encoder_only = MegaconceptModel.from_pretrained(str(tmp_path)).eval()
    assert loaded.config.decoder_positions == "sinusoidal"
    ids = torch.randint(0, 40, (2, 30))  # longer than the 8-row max_position_embeddings
    with torch.no_grad():
        states = native.encoder.backbone(native.encoder.token_embed(ids))[-1]
        assert torch.equal(loaded.encoder.backbone(loaded.encoder.token_embed(ids))[-1], states)
        assert torch.equal(encoder_only(ids).last_hidden_state, native.encoder(ids))
        assert torch.equal(loaded(ids).logits, native.logits(native(ids).states))
