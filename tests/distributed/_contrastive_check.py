"""Launched by test_contrastive_ranks.py under torchrun: the contrastive term over data-parallel ranks (optionally
with tensor parallelism) gives the single-process loss and gradients of the global batch.

Every rank builds the same tiny model; each data-parallel rank scores its share of a fixed global batch with
the term gathering negatives over the data group; the data-parallel mean of loss and gradients must equal the
single-process term (a group of one) on the whole batch with an unsharded copy of the model. Writes
OUT/rank_R.pt.
"""
import os
import sys

import torch
import torch.distributed as dist

from megaconcept.model.concept_mlm import ConceptMLM
from megaconcept.model.config import ConceptModelConfig
from megaconcept.objectives.base import BuildContext
from megaconcept.objectives.contrastive import ContrastiveConfig, ContrastiveObjective
from megaconcept.parallel import init_distributed, shutdown
from megaconcept.parallel.layout import Layout
from megaconcept.parallel.tensor import apply_tensor_parallel

CFG = ConceptModelConfig(vocab_size=64, num_concepts=4, concept_dim=16, num_heads=2, num_layers=1,
                         max_position_embeddings=32)
GLOBAL_BATCH, SEQ, EOS = 8, 32, 0


def build(seed: int) -> ConceptMLM:
    torch.manual_seed(seed)
    return ConceptMLM(CFG)


def term_for(model: ConceptMLM, group) -> ContrastiveObjective:
    torch.manual_seed(1)  # the projection head: the same init on every rank and in the reference
    return ContrastiveObjective(ContrastiveConfig(temperature=0.1), BuildContext(model=model, data_group=group))


def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    ids = torch.randint(1, CFG.vocab_size, (GLOBAL_BATCH, SEQ))
    ids[::3, 20] = EOS  # some samples hold two documents
    ids[7, 5::6] = EOS  # one has only short documents: no pair
    return term_for(ConceptMLM(CFG), None).batch_maker(EOS, SEQ)(ids)


def main() -> None:
    out, tensor = sys.argv[1], int(sys.argv[2])
    ctx = init_distributed(Layout(int(os.environ["WORLD_SIZE"]), tensor=tensor))
    singles = [dist.new_group([r]) for r in range(ctx.world_size)]  # every rank joins every new group
    full = batch()
    world, me = ctx.data_parallel_size, ctx.data_parallel_rank
    local = {k: v.chunk(world)[me] for k, v in full.items()}
    model = build(0)
    if tensor > 1:
        apply_tensor_parallel(model, ctx)
    term = term_for(model, ctx.data_group)
    loss = term(None, local)["loss"]
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, group=ctx.data_group)
    grads = {n: p.grad.clone() for n, p in term.projection.named_parameters()}
    for g in grads.values():  # what data-parallel training does: the mean
        dist.all_reduce(g, group=ctx.data_group)
        g /= world
    embed_grad = None
    if tensor == 1:  # with tensor parallelism the embedding is split across ranks: the projection suffices
        embed_grad = model.encoder.token_embed.weight.grad.clone()
        dist.all_reduce(embed_grad, group=ctx.data_group)
        embed_grad /= world
    ref_model = build(0)
    ref_term = term_for(ref_model, singles[ctx.rank])
    ref_loss = ref_term(None, full)["loss"]
    ref_loss.backward()
    torch.save({"loss": mean_loss / world, "ref_loss": ref_loss.detach(), "grads": grads,
                "ref_grads": {n: p.grad for n, p in ref_term.projection.named_parameters()},
                "embed_grad": embed_grad,
                "ref_embed_grad": ref_model.encoder.token_embed.weight.grad, "world": world,
                "valid": int(full["view_valid"].sum())}, f"{out}/rank_{ctx.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main()
