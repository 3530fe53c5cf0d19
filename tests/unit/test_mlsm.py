"""The `mlsm` objective: targets from the frozen teacher's sparse codes, KL loss, placement, resume guard."""
from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.objectives.base import BuildContext
from megaconcept.objectives.compose import build_objectives
from megaconcept.objectives.mlsm import DICTIONARY_NAME, METADATA_NAME, MLSMObjective, read_dictionary
from megaconcept.objectives.mlsm_coding import fista, unit_rows
from megaconcept.objectives.mlsm_teacher import build_teacher
from megaconcept.objectives.module import PretrainModule

VOCAB, N = 64, 16


def write_dictionary(root: Path, vocab: int = VOCAB, atoms: int = 6, hidden: int = 16, layers: int = 2,
                     layer: int = 1, seed: int = 0) -> Path:
    """A tiny random Llama teacher (HF folder) and random unit atoms with the dictionary job's metadata."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    teacher_dir, out = root / "teacher", root / "dictionary"
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(str(teacher_dir))
    identity = build_teacher(str(teacher_dir), layer)[1]
    out.mkdir(parents=True)
    save_file({"atoms": unit_rows(torch.randn(atoms, hidden))}, str(out / DICTIONARY_NAME))
    metadata = {"format": "megaconcept-mlsm-dictionary", "version": 1, "teacher": identity, "layer": layer,
                "atoms": atoms, "lambda": 0.05, "hidden_size": hidden, "tokenizer": {"sha256": "test"},
                "unknown_id": 0, "objective": 0.0, "tokens": 0}
    (out / METADATA_NAME).write_text(json.dumps(metadata))
    return out


@lru_cache(maxsize=None)
def tiny_dictionary(vocab: int = VOCAB) -> str:
    """One dictionary per test session (registry conformance builds mlsm terms with it)."""
    return str(write_dictionary(Path(tempfile.mkdtemp(prefix="mlsm-dict-")), vocab))


def _module(terms: dict, seed: int = 0) -> PretrainModule:
    torch.manual_seed(seed)
    model = ConceptMLM(ConceptModelConfig(vocab_size=VOCAB, num_concepts=4, concept_dim=16, num_heads=2, num_layers=1,
                                          decoder_layers=1, max_position_embeddings=32, dropout=0.0))
    return PretrainModule(model, build_objectives(terms, "fixed", None, BuildContext(model=model)))


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(2, VOCAB, (3, N), generator=g)
    positions = torch.rand(3, N, generator=g).topk(4, dim=1).indices.sort(dim=1).values
    ids = clean.clone().scatter_(1, positions, 1)  # id 1 = the mask
    return {"input_ids": ids, "positions": positions, "labels": clean.gather(1, positions), "clean_ids": clean}


def test_targets_are_fista_codes_of_the_clean_teacher_states():
    module = _module({"mlsm": {"dictionary": tiny_dictionary()}})
    term: MLSMObjective = module.objectives.terms["mlsm"]
    batch = _batch()
    atoms, meta = read_dictionary(tiny_dictionary())
    teacher = build_teacher(meta["teacher"]["source"], meta["layer"])[0]
    states = teacher(batch["clean_ids"])
    picked = torch.stack([states[b, batch["positions"][b]] for b in range(3)]).flatten(0, 1)
    expected = fista(unit_rows(picked), atoms, 0.05, 100)
    torch.testing.assert_close(term.targets(batch["clean_ids"], batch["positions"]), expected)
    # The teacher reads the clean ids, never the masked input.
    assert not torch.equal(term.targets(batch["input_ids"], batch["positions"]), expected)


def test_loss_is_kl_to_normalised_codes_and_trains_the_head():
    module = _module({"mlsm": {"dictionary": tiny_dictionary()}})
    term = module.objectives.terms["mlsm"]
    batch = _batch()
    out = module(**batch)
    codes = term.targets(batch["clean_ids"], batch["positions"])
    keep = codes.sum(-1) > 0
    target = codes[keep] / codes[keep].sum(-1, keepdim=True)
    log_q = torch.log_softmax(term.head(out.outputs.states.flatten(0, 1))[keep], -1)
    expected = torch.nn.functional.kl_div(log_q, target, reduction="batchmean")
    torch.testing.assert_close(out.metrics["loss/mlsm"], expected.detach())
    assert float(out.metrics["mlsm/zero_code_rows"]) == float((~keep).sum())
    out.loss.backward()
    assert term.head.weight.grad.abs().sum() > 0
    # The head is the term's (checkpointed, dropped by the export); the teacher is nowhere in the module.
    names = set(module.state_dict())
    assert {"objectives.terms.mlsm.head.weight", "objectives.terms.mlsm.dictionary_digest"} <= names
    assert not any("teacher" in n or "embed_tokens" in n for n in names)
    assert all(not p.requires_grad for p in term._frozen[0].parameters())


def test_all_zero_codes_give_a_zero_loss_with_a_graph():
    module = _module({"mlsm": {"dictionary": tiny_dictionary(), "lambda_": 100.0}})
    out = module(**_batch())
    assert float(out.loss) == 0.0 and float(out.metrics["mlsm/zero_code_rows"]) == 12
    out.loss.backward()


def test_composes_with_mlm_and_the_collator_adds_clean_ids():
    module = _module({"mlm": {}, "mlsm": {"dictionary": tiny_dictionary(), "weight": 0.5}})
    makers = module.objectives.batch_makers(separator_id=0, seq_len=N)
    ids = torch.randint(2, VOCAB, (2, N))
    assert torch.equal(makers[0](ids)["clean_ids"], ids)
    out = module(**_batch())
    assert torch.isfinite(out.loss) and {"loss/mlm", "loss/mlsm", "mlsm/active_atoms"} <= set(out.metrics)


def test_refuses_another_dictionary_on_resume_and_a_different_teacher(tmp_path):
    module = _module({"mlsm": {"dictionary": tiny_dictionary()}})
    other = write_dictionary(tmp_path / "other", seed=1)
    fresh = _module({"mlsm": {"dictionary": str(other)}})
    with pytest.raises(ValueError, match="another dictionary"):
        fresh.load_state_dict(module.state_dict())
    moved = write_dictionary(tmp_path / "moved", seed=2)
    with pytest.raises(ValueError, match="weights hash differs"):
        _module({"mlsm": {"dictionary": str(moved), "teacher": str(Path(tiny_dictionary()).parent / "teacher")}})
    with pytest.raises(ValueError, match="no finished MLSM dictionary"):
        _module({"mlsm": {"dictionary": str(tmp_path)}})


def test_config_refuses_a_dictionary_of_other_shards(tiny_shards, tmp_path):
    from megaconcept.config import ConfigError, load_config

    dictionary = Path(tiny_dictionary())  # its metadata records tokenizer sha256 "test"
    overrides = [f"data.shards={tiny_shards}", "objective.terms.mlm=null"]
    with pytest.raises(ConfigError, match=r"objective.terms.mlsm.dictionary was learned on shards with another"):
        load_config(None, [*overrides, f"objective.terms.mlsm={{dictionary: {dictionary}}}"])
    with pytest.raises(ConfigError, match=r"holds no mlsm_dictionary.json"):
        load_config(None, [*overrides, f"objective.terms.mlsm={{dictionary: {tmp_path}}}"])
    same = tmp_path / "same"
    same.mkdir()
    meta = json.loads((dictionary / METADATA_NAME).read_text())
    meta["tokenizer"] = json.loads((tiny_shards / "manifest.json").read_text())["tokenizer"]
    (same / METADATA_NAME).write_text(json.dumps(meta))
    cfg = load_config(None, [*overrides, f"objective.terms.mlsm={{dictionary: {same}, fista_iterations: 50}}"])
    assert cfg.objective.terms["mlsm"]["fista_iterations"] == 50


def test_model_card_names_the_dictionary_and_teacher():
    from megaconcept.export.card import _objective_text

    meta = json.loads((Path(tiny_dictionary()) / METADATA_NAME).read_text())
    text = _objective_text({"objective": {"terms": {"mlm": None, "mlsm": {"dictionary": tiny_dictionary()}}}})
    assert "masked latent semantic modeling" in text and meta["teacher"]["weights_sha256"][:16] in text
    assert "to layer 1" in text and "<local>/dictionary" in text
    assert _objective_text({"objective": {"terms": {"mlm": {}}}}) == "Objective terms: `mlm`."


def test_pipeline_parallelism_is_refused_in_one_line(tiny_shards):
    from megaconcept.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"objective.terms.mlsm \(mlsm\) is not supported with parallel.pipeline>1"):
        load_config(None, [f"data.shards={tiny_shards}", "parallel.pipeline=2", "model.num_layers=2",
                           f"objective.terms={{mlm: null, mlsm: {{dictionary: {tiny_dictionary()}}}}}"])
