"""Minimum spanning trees of point sets, batched: the edge set is chosen without gradient, the edge lengths
are recomputed with it (T-REGS, Mordacq et al. 2025, maximises the length of the MST of the concepts).

    minimum_spanning_tree(distances (B, C, C)) -> (child (B, C-1), parent (B, C-1))   no gradient
    tree_edge_lengths(points (B, C, D), child, parent) -> (B, C-1)                     with gradient
    mst_edge_lengths(points (B, C, D)) -> (B, C-1)                                     both, in one call

The gradient is a subgradient: the edge set is piecewise constant in the points, so it flows only through the
lengths of the chosen edges (exact away from ties between candidate edges).
"""
from __future__ import annotations

import torch


@torch.compiler.disable  # a C-1 step Python loop: compiling it would unroll C steps into one graph
@torch.no_grad()
def minimum_spanning_tree(distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prim's algorithm on every sample at once, grown from node 0.

    distances: (B, C, C) symmetric pairwise distances (the diagonal is ignored). Returns (child, parent), both
    (B, C-1) long: edge k joins node child[:, k] to node parent[:, k], in the order Prim added them. Unlike
    scipy.sparse.csgraph, a zero distance is an ordinary edge (collapsed concepts still give one tree).
    O(B C^2) memory; C-1 sequential steps of a masked argmin over (B, C).
    """
    batch, count, _ = distances.shape
    rows = torch.arange(batch, device=distances.device)
    in_tree = torch.zeros(batch, count, dtype=torch.bool, device=distances.device)
    in_tree[:, 0] = True
    best = distances[:, 0, :].clone()  # (B, C) shortest known distance from the tree to each node
    nearest = torch.zeros(batch, count, dtype=torch.long, device=distances.device)  # (B, C) tree node it is from
    children, parents = [], []
    for _ in range(count - 1):
        child = best.masked_fill(in_tree, float("inf")).argmin(dim=1)  # (B,)
        children.append(child)
        parents.append(nearest[rows, child])
        in_tree[rows, child] = True
        row = distances[rows, child]  # (B, C) distances from the new tree node
        closer = row < best
        best = torch.where(closer, row, best)
        nearest = torch.where(closer, child[:, None], nearest)
    empty = torch.zeros(batch, 0, dtype=torch.long, device=distances.device)
    return (torch.stack(children, 1), torch.stack(parents, 1)) if children else (empty, empty)


def tree_edge_lengths(points: torch.Tensor, child: torch.Tensor, parent: torch.Tensor,
                      eps: float = 1e-12) -> torch.Tensor:
    """points (B, C, D), child/parent (B, E) -> (B, E) lengths sqrt(||p_child - p_parent||^2 + eps).

    The eps keeps the gradient finite where two points coincide (sqrt'(0) is infinite; here the gradient of a
    zero-length edge is 0), at the price of a length of sqrt(eps) for such an edge.
    """
    width = points.shape[-1]
    ends = [points.gather(1, index[..., None].expand(-1, -1, width)) for index in (child, parent)]  # 2 x (B, E, D)
    return ((ends[0] - ends[1]).pow(2).sum(-1) + eps).sqrt()


def mst_edge_lengths(points: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """points (B, C, D) -> (B, C-1) lengths (with gradient) of the edges of each sample's Euclidean MST."""
    with torch.no_grad():
        # The direct kernel, not the matmul expansion: its rounding near 0 would reorder short edges.
        distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    child, parent = minimum_spanning_tree(distances)
    return tree_edge_lengths(points, child, parent, eps)
