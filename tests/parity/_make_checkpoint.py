"""Write tiny real DeepSpeed checkpoints (one per ZeRO stage) in the trainer's layout, plus native references.

Launched by tests/parity/test_export.py as
    python -m torch.distributed.run --standalone --nproc_per_node=2 _make_checkpoint.py OUT TOKENIZER 3,1,0
For each stage S it writes OUT/zeroS/checkpoints/step_00000001/ through megaconcept's Checkpointer after one
optimizer step (so weights differ from init), and OUT/zeroS/native.pt holding the gathered native weights
{name: full tensor}, a probe input and the native logits (B, N, V) the export must reproduce.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from megaconcept.config import RunConfig, to_yaml
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.objectives.module import mlm_module
from megaconcept.parallel import init_distributed, shutdown
from megaconcept.parallel.zero import register_tied_head
from megaconcept.train.checkpointer import Checkpointer
from megaconcept.train.state import TrainState

SECTION = ConceptModelConfig(num_concepts=8, concept_dim=32, num_layers=2, num_heads=2, decoder_layers=1,
                       max_position_embeddings=64)


def probe_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed input_ids (2, 12) and attention_mask (2, 12) whose second row ends in padding."""
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(2, vocab, (2, 12), generator=generator)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    return ids, mask


def write_one(stage: int, out: Path, tokenizer_dir: str, vocab: int, ctx) -> None:
    import deepspeed

    torch.manual_seed(1234)
    cfg = dataclasses.replace(SECTION, vocab_size=vocab)
    model = ConceptMLM(cfg)
    # The trained module, as the trainer builds it: checkpoint names are model.* (the export strips the prefix).
    module = mlm_module(model)
    register_tied_head(module, stage)
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
                 "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=ds_config)
    ids = torch.randint(2, vocab, (1, 16), generator=torch.Generator().manual_seed(ctx.rank))
    positions = torch.arange(16).unsqueeze(0)
    engine.backward(engine(input_ids=ids, positions=positions, labels=ids).loss)
    engine.step()

    run_cfg = RunConfig(run_dir=str(out), model=SECTION)
    Checkpointer(str(out), 2, ctx).save(engine, TrainState(step=1, tokens_seen=32, samples_seen=2),
                                         to_yaml(run_cfg), tokenizer_dir)
    engine.eval()
    probe_ids, probe_mask = probe_batch(vocab)
    with torch.no_grad():
        # (B, N, D) through the ZeRO engine itself
        states = engine(input_ids=probe_ids, attention_mask=probe_mask, score=False).outputs.states
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            logits = F.linear(states, model.output_embedding(), model.lm_bias)  # (B, N, V)
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if ctx.is_main:
        torch.save({"weights": weights, "input_ids": probe_ids, "attention_mask": probe_mask, "logits": logits},
                   out / "native.pt")


def main() -> None:
    out_root, tokenizer_dir, stages = Path(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
    ctx = init_distributed()
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    try:
        for stage in stages:
            write_one(stage, out_root / f"zero{stage}", tokenizer_dir, vocab, ctx)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
