"""LM-head loss selection (fused kernels with fallbacks) and per-layer activation checkpointing / compile."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.config import BackboneConfig
from megaconcept.objectives.cross_entropy import CROSS_ENTROPY, available, select_cross_entropy
from megaconcept.objectives.module import mlm_module
from megaconcept.parallel.parallelize import per_layer_options


def test_auto_picks_the_fastest_present_and_falls_back():
    assert select_cross_entropy("auto", cuda=False, tensor_parallel=False) == "chunked"
    assert not available("liger", cuda=False) and not available("apex", cuda=False)
    assert select_cross_entropy("auto", True, False, importable=lambda n, c: n != "liger") == "apex"
    assert select_cross_entropy("auto", True, False, importable=lambda n, c: True) == "liger"
    assert select_cross_entropy("auto", True, True) == "vocab_parallel"


def test_unusable_choices_are_one_line_errors():
    with pytest.raises(ValueError, match="liger needs a CUDA device and the liger_kernel package; use auto or chunked"):
        select_cross_entropy("liger", cuda=False, tensor_parallel=False)
    with pytest.raises(ValueError, match="cannot split the vocabulary across tensor-parallel ranks"):
        select_cross_entropy("apex", cuda=True, tensor_parallel=True)


def test_liger_adapter_passes_weight_input_target_bias(monkeypatch):
    class FakeLiger(torch.nn.Module):  # liger's documented forward(lin_weight, _input, target, bias)
        def __init__(self, reduction):
            super().__init__()
            assert reduction == "mean"

        def forward(self, lin_weight, _input, target, bias=None):
            return F.cross_entropy(F.linear(_input, lin_weight, bias), target)

    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", types.SimpleNamespace(LigerFusedLinearCrossEntropyLoss=FakeLiger))
    states, weight, bias = torch.randn(6, 4), torch.randn(10, 4), torch.randn(10)
    labels = torch.randint(0, 10, (6,))
    got = CROSS_ENTROPY["liger"](states, weight, bias, labels, 4)
    assert torch.allclose(got, CROSS_ENTROPY["chunked"](states, weight, bias, labels, 4), atol=1e-6)


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = mlm_module(model)(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("checkpointing, compile", [(True, False), (False, True), (True, True)])
def test_per_layer_options_keep_results_and_names(checkpointing, compile):
    cfg = ConceptModelConfig(vocab_size=50, num_concepts=4, concept_dim=16, num_heads=2, max_position_embeddings=32,
                             backbone=BackboneConfig(num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1,
                                                     intermediate_size=32))
    torch.manual_seed(0)
    model = ConceptMLM(cfg)
    batch = {"input_ids": torch.randint(0, 50, (2, 12)), "positions": torch.tensor([[1, 5], [0, 7]]),
             "labels": torch.tensor([[3, 4], [5, 6]])}
    names = [n for n, _ in model.named_parameters()]
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    assert per_layer_options(model, checkpointing, compile) == 3  # 1 backbone + 2 concept layers
    torch._dynamo.reset()  # no cached graphs from an earlier test: tracing must happen here
    counters.clear()
    loss, grads = _loss_and_grads(model, batch)
    assert (counters["stats"]["calls_captured"] > 0) == compile  # dynamo really traced the layers
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == list(ConceptMLM(cfg).state_dict())
    assert abs(loss - ref_loss) < 1e-5
    for n in names:
        assert torch.allclose(grads[n], ref_grads[n], atol=1e-5), n
