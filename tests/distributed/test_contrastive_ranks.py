"""The contrastive term across data-parallel ranks equals the single-process term on the whole batch: loss and
gradients (the gather carries exact gradients; the loss is normalised by the global number of pairs)."""
import sys
from pathlib import Path

import pytest
import torch

from _launch import run

SCRIPT = str(Path(__file__).with_name("_contrastive_check.py"))


@pytest.mark.parametrize("nproc, tensor", [(2, 1), (4, 2)], ids=["dp2", "tp2xdp2"])
def test_contrastive_over_ranks_is_the_single_process_term(tmp_path, nproc, tensor):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT,
         str(tmp_path), str(tensor)])
    for rank in range(nproc):
        got = torch.load(tmp_path / f"rank_{rank}.pt")
        assert got["world"] == nproc // tensor and got["valid"] == 7  # sample 7 has only short documents
        torch.testing.assert_close(got["loss"], got["ref_loss"], rtol=1e-5, atol=1e-6)
        for name, grad in got["grads"].items():
            torch.testing.assert_close(grad, got["ref_grads"][name], rtol=1e-4, atol=1e-6)
        if got["embed_grad"] is not None:  # through the encoder too (without tensor parallelism)
            torch.testing.assert_close(got["embed_grad"], got["ref_embed_grad"], rtol=1e-4, atol=1e-6)
