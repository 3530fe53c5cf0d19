"""BERT dynamic masking: rate, 80/10/10 split, determinism from the generator."""
import torch

from megaconcept.objectives.masking import MASKING, MaskingCollator, MaskingSpec, num_targets

SPEC = MaskingSpec(rate=0.15, mask_prob=0.8, random_prob=0.1, mask_token_id=999, replacement_ids=torch.arange(999))


def _batch(b=64, n=256, seed=0):
    return torch.randint(0, 999, (b, n), generator=torch.Generator().manual_seed(seed))


def test_rate_and_split_statistics():
    ids = _batch()
    out = MaskingCollator("bert", SPEC)(ids, torch.Generator().manual_seed(1))
    b, n = ids.shape
    m = num_targets(n, 0.15)
    assert out["positions"].shape == (b, m) and out["labels"].shape == (b, m)
    assert m / n == 38 / 256
    # positions are unique and sorted within each row
    assert bool((out["positions"].diff(dim=1) > 0).all())
    assert torch.equal(out["labels"], ids.gather(1, out["positions"]))
    chosen = out["input_ids"].gather(1, out["positions"])
    masked = (chosen == 999).float().mean().item()
    kept = (chosen == out["labels"]).float().mean().item()
    assert abs(masked - 0.8) < 0.03
    # kept includes random draws that happen to equal the label (prob 1/999)
    assert abs(kept - 0.1) < 0.03
    assert abs(1 - masked - kept - 0.1) < 0.03
    # unchosen positions are untouched
    untouched = torch.ones_like(ids, dtype=torch.bool).scatter_(1, out["positions"], False)
    assert torch.equal(out["input_ids"][untouched], ids[untouched])


def test_positions_cover_sequence_uniformly():
    ids = _batch(b=512, n=64)
    out = MASKING["bert"](ids, SPEC, torch.Generator().manual_seed(3))
    counts = torch.bincount(out["positions"].flatten(), minlength=64).float()
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_same_generator_seed_same_mask():
    ids = _batch()
    a = MASKING["bert"](ids, SPEC, torch.Generator().manual_seed(7))
    b = MASKING["bert"](ids, SPEC, torch.Generator().manual_seed(7))
    c = MASKING["bert"](ids, SPEC, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["positions"], c["positions"])


def test_unknown_strategy_lists_valid():
    try:
        MASKING["spam"]
    except ValueError as exc:
        assert "bert" in str(exc)
    else:
        raise AssertionError("expected ValueError")
