"""The batched Prim MST against scipy's, on random and on collapsed (duplicate) points, and its gradients."""
import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst

from megaconcept.objectives.mst import minimum_spanning_tree, mst_edge_lengths, tree_edge_lengths


def _points(batch: int, count: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, count, width, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _distances(points: torch.Tensor) -> torch.Tensor:
    return (points[:, :, None, :] - points[:, None, :, :]).pow(2).sum(-1).sqrt()  # (B, C, C), no matmul rounding


def _edges(child: torch.Tensor, parent: torch.Tensor) -> list[set[frozenset[int]]]:
    return [{frozenset((int(c), int(p))) for c, p in zip(cs, ps)} for cs, ps in zip(child, parent)]


def _is_spanning_tree(edges: set[frozenset[int]], count: int) -> bool:
    """C - 1 edges that connect all C nodes (union-find)."""
    root = list(range(count))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for edge in edges:
        i, j = tuple(edge)
        root[find(i)] = find(j)
    return len(edges) == count - 1 and len({find(i) for i in range(count)}) == 1


@pytest.mark.parametrize("batch, count, width", [(1, 2, 3), (3, 5, 2), (4, 17, 8), (2, 64, 32), (2, 9, 1)])
def test_edges_and_length_equal_scipy(batch, count, width):
    points = _points(batch, count, width, seed=count)
    distances = _distances(points)
    child, parent = minimum_spanning_tree(distances)
    assert child.shape == parent.shape == (batch, count - 1)
    lengths = tree_edge_lengths(points, child, parent, eps=0.0)
    for b, edges in enumerate(_edges(child, parent)):
        reference = scipy_mst(distances[b].numpy()).tocoo()
        assert edges == {frozenset((int(i), int(j))) for i, j in zip(reference.row, reference.col)}
        assert lengths[b].sum().item() == pytest.approx(reference.sum(), rel=0, abs=1e-10)


def test_mst_edge_lengths_equals_scipy_end_to_end():
    points = _points(3, 40, 16, seed=7)
    distances = _distances(points).numpy()
    reference = [scipy_mst(distances[b]).sum() for b in range(3)]
    np.testing.assert_allclose(mst_edge_lengths(points, eps=0.0).sum(1).numpy(), reference, rtol=0, atol=1e-10)


def test_duplicate_points_give_a_spanning_tree_of_the_right_length():
    # scipy reads a zero distance as a missing edge (a dense input masks values within atol=1e-8 of 0), so the
    # reference gets a small constant on every off-diagonal: that keeps its tree and adds C - 1 times the constant.
    base = _points(2, 4, 3, seed=3)
    points = torch.cat([base, base[:, :2], base[:, :1]], dim=1)  # (2, 7, 3): nodes 4-6 repeat nodes 0, 1, 0
    collapsed = base[:1, :1].expand(1, 7, 3)  # every concept of the sample the same point
    tiny = 1e-6
    for sample in torch.cat([points, collapsed]):
        distances = _distances(sample[None])
        child, parent = minimum_spanning_tree(distances)
        edges = _edges(child, parent)[0]
        assert _is_spanning_tree(edges, 7)
        shifted = (distances[0] + tiny * (1 - torch.eye(7, dtype=distances.dtype))).numpy()
        reference = scipy_mst(shifted).sum() - 6 * tiny  # its 6 edges each carry the tiny length
        length = tree_edge_lengths(sample[None], child, parent, eps=0.0).sum().item()
        assert length == pytest.approx(reference, rel=0, abs=1e-8)


def test_tree_choice_carries_no_gradient():
    points = _points(2, 6, 3).requires_grad_()
    child, parent = minimum_spanning_tree(_distances(points))
    assert not child.requires_grad and child.dtype == torch.long
    assert mst_edge_lengths(points).requires_grad


def test_lengths_pass_gradcheck_away_from_ties():
    points = _points(2, 6, 3, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: mst_edge_lengths(p, eps=0.0), (points,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicate_points_give_finite_gradients(dtype):
    base = _points(1, 3, 4, seed=5).to(dtype)
    points = torch.cat([base, base, base[:, :1].expand(1, 3, 4)], dim=1).requires_grad_()  # (1, 9, 4)
    lengths = mst_edge_lengths(points)
    lengths.sum().backward()
    assert torch.isfinite(lengths).all() and torch.isfinite(points.grad).all()
    assert points.grad.abs().sum() > 0  # the non-zero edges still pull
