"""Launched by test_collectives.py under torchrun: the data-parallel gather carries the exact gradient.

Each data-parallel rank embeds its own half of a fixed batch with a shared linear map, gathers the embeddings
over the data group, and scores an InfoNCE-style loss of its local rows against all gathered rows. After the
data-parallel average of the parameter gradient, it must equal the single-process gradient of the same loss
over the whole batch. Writes OUT/rank_R.pt.
"""
import sys

import torch
import torch.nn.functional as F

from megaconcept.parallel import init_distributed, shutdown
from megaconcept.parallel.collectives import gather_with_grad, group_rank, group_size
from megaconcept.parallel.layout import Layout


def loss_of(rows: torch.Tensor, columns: torch.Tensor, offset: int) -> torch.Tensor:
    logits = rows @ columns.T / 0.1  # (local, global)
    return F.cross_entropy(logits, torch.arange(rows.shape[0]) + offset)


def main() -> None:
    out, tensor = sys.argv[1], int(sys.argv[2])
    import os

    ctx = init_distributed(Layout(int(os.environ["WORLD_SIZE"]), tensor=tensor))
    torch.manual_seed(0)
    weight = torch.randn(6, 5, requires_grad=True)
    data = torch.randn(8, 6)  # the global batch, the same on every rank
    world, me = group_size(ctx.data_group), group_rank(ctx.data_group)
    local = data.chunk(world)[me]
    z = F.normalize(local @ weight, dim=-1)
    gathered = gather_with_grad(z, ctx.data_group)
    loss_of(z, gathered, me * z.shape[0]).backward()
    grad = weight.grad.clone()
    torch.distributed.all_reduce(grad, group=ctx.data_group)  # what data-parallel training does: the mean
    grad /= world
    ref_weight = weight.detach().clone().requires_grad_(True)
    full = F.normalize(data @ ref_weight, dim=-1)
    loss_of(full, full, 0).backward()
    torch.save({"grad": grad, "ref": ref_weight.grad, "world": world, "rows": gathered.shape[0],
                "data_rank": ctx.data_parallel_rank, "me": me}, f"{out}/rank_{ctx.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main()
