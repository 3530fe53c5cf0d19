"""Sparse + chunked cross-entropy equals dense cross-entropy on the masked positions."""
import torch
import torch.nn.functional as F

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.lm_loss import chunked_cross_entropy
from megaconcept.objectives.module import mlm_module


def test_chunked_matches_dense_value_and_grads():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g, requires_grad=True)
    bias = torch.randn(101, generator=g, requires_grad=True)
    labels = torch.randint(0, 101, (37,), generator=g)
    dense = F.cross_entropy(F.linear(states, weight, bias), labels)
    grads_dense = torch.autograd.grad(dense, (states, weight, bias))
    for chunk in (1, 5, 37, 1000):
        chunked = chunked_cross_entropy(states, weight, bias, labels, chunk_size=chunk)
        grads = torch.autograd.grad(chunked, (states, weight, bias))
        assert torch.allclose(chunked, dense, atol=1e-6)
        for a, b in zip(grads, grads_dense):
            assert torch.allclose(a, b, atol=1e-6)


def test_model_sparse_loss_equals_dense_logits_loss():
    torch.manual_seed(0)
    model = ConceptMLM(ConceptModelConfig(vocab_size=211, num_concepts=8, concept_dim=32, num_heads=4, max_position_embeddings=64))
    ids = torch.randint(0, 211, (3, 40))
    positions = torch.stack([torch.randperm(40)[:6].sort().values for _ in range(3)])
    labels = torch.randint(0, 211, (3, 6))
    sparse = mlm_module(model, ce_chunk_size=4)(input_ids=ids, positions=positions, labels=labels).loss
    full_logits = model.logits(model(ids).states)  # (B, N, V): what sparse decoding avoids
    picked = full_logits[torch.arange(3)[:, None], positions]
    dense = F.cross_entropy(picked.flatten(0, 1), labels.flatten())
    assert torch.allclose(sparse, dense, atol=1e-5)
