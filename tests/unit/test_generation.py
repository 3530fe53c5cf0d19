"""Iterative unmasking: deterministic for a seed, the same from the native model and from its export (also with a
time-conditioned diffusion decoder), never touching given tokens, block order, and the CLI."""
import subprocess
import sys

import pytest
import torch

from megaconcept.export.hf_folder import build_hf_model, write_hf_folder
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.sampling import InfillOptions, infill, transfer_counts

V, MASK = 50, 1


def native(**overrides) -> ConceptMLM:
    torch.manual_seed(0)
    base = dict(vocab_size=V, num_concepts=4, concept_dim=16, num_heads=2, num_layers=1, decoder_layers=2,
                max_position_embeddings=32, decoder="diffusion")
    m = ConceptMLM(ConceptModelConfig(**{**base, **overrides}))
    with torch.no_grad():  # non-zero AdaLN weights, so t matters
        for p in m.parameters():
            if p.abs().sum() == 0 and p.dim() == 2:
                p.normal_(0, 0.02)
    return m.eval()


def prompt(masks: int = 10) -> torch.Tensor:
    ids = torch.randint(2, V, (2, 6 + masks), generator=torch.Generator().manual_seed(1))
    ids[:, 6:] = MASK
    ids[1, 2] = MASK  # sample 1 also has a hole inside its prompt
    return ids


def test_transfer_counts_spread_the_masked_positions_over_the_rounds():
    masked = torch.zeros(2, 10, dtype=torch.bool)
    masked[0, :7], masked[1, :2] = True, True
    assert transfer_counts(masked, 3).tolist() == [[3, 2, 2], [1, 1, 0]]


@pytest.mark.parametrize("decoder_options", [None, {"time_conditioning": True, "self_attention": True}])
@pytest.mark.parametrize("options", [dict(steps=5), dict(steps=4, temperature=0.8, seed=3),
                                     dict(steps=4, block_length=4, remasking="random", seed=7)])
def test_export_generates_exactly_what_the_native_model_generates(decoder_options, options):
    m = native(decoder_options=decoder_options)
    hf = build_hf_model(m.config, dict(m.state_dict()), "fp32")
    ids = prompt()
    out = m.infill(ids, MASK, **options)
    assert torch.equal(out, hf.infill(ids, MASK, **options))
    assert torch.equal(out, m.infill(ids, MASK, **options))  # deterministic for a seed
    given = ids != MASK
    assert torch.equal(out[given], ids[given]) and not (out == MASK).any()


def test_seeds_and_temperature_change_samples_and_forbidden_ids_never_appear():
    m = native()
    ids = prompt(20)
    a = m.infill(ids, MASK, steps=20, temperature=1.0, seed=1, forbidden_ids=[0, 2, 3])
    b = m.infill(ids, MASK, steps=20, temperature=1.0, seed=2, forbidden_ids=[0, 2, 3])
    assert not torch.equal(a, b)
    generated = a[ids == MASK]
    assert not torch.isin(generated, torch.tensor([0, 1, 2, 3])).any()


def test_blocks_fill_left_to_right():
    # Record which positions are still masked at each model call: with blocks of 4 the later block stays masked
    # until the earlier one is complete.
    m = native()
    seen = []

    def logits(ids, level):
        seen.append((ids == MASK)[0].clone())
        return m.logits(m(ids, noise_level=level).states)

    ids = torch.randint(2, V, (1, 12), generator=torch.Generator().manual_seed(2))
    ids[0, 4:] = MASK
    infill(logits, ids, MASK, InfillOptions(steps=4, block_length=4))
    assert len(seen) == 4 and seen[2][4:8].sum() == 0 and seen[2][8:].all()


def test_generate_cli_is_deterministic_and_matches_the_method(export_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    cmd = [sys.executable, "-m", "megaconcept.generate", "--model", str(export_dir), "--prompt", "the river",
           "--length", "6", "--steps", "3", "--temperature", "0.7", "--seed", "4"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert first == subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(export_dir), trust_remote_code=True)
    ids = torch.tensor([tokenizer("the river", add_special_tokens=False)["input_ids"] + [tokenizer.mask_token_id] * 6])
    out = model.infill(ids, tokenizer.mask_token_id, forbidden_ids=tokenizer.all_special_ids, steps=3,
                       temperature=0.7, seed=4)
    assert first.strip() == tokenizer.decode(out[0].tolist()).strip()
    infill_cmd = [sys.executable, "-m", "megaconcept.generate", "--model", str(export_dir), "--text",
                  f"the {tokenizer.mask_token} flows"]
    filled = subprocess.run(infill_cmd, capture_output=True, text=True, check=True).stdout
    assert filled.startswith("the") and tokenizer.mask_token not in filled


@pytest.mark.parametrize("args, message", [(["--text", "no masks here"], "contains no mask token"),
                                           (["--prompt", "a", "--length", "500"], "exceed the model's"),
                                           (["--prompt", "a", "--steps", "0"], "steps=0")])
def test_generate_cli_bad_requests_are_one_line_errors(export_dir, args, message):
    proc = subprocess.run([sys.executable, "-m", "megaconcept.generate", "--model", str(export_dir), *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
