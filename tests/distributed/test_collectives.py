"""gather_with_grad over the data-parallel group: exact single-process gradients, only data-parallel replicas."""
import sys
from pathlib import Path

import pytest
import torch

from _launch import run

SCRIPT = str(Path(__file__).with_name("_gather_check.py"))


@pytest.mark.parametrize("nproc, tensor", [(2, 1), (4, 2)], ids=["dp2", "tp2xdp2"])
def test_gather_with_grad_gives_the_single_process_gradient(tmp_path, nproc, tensor):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT,
         str(tmp_path), str(tensor)])
    for rank in range(nproc):
        got = torch.load(tmp_path / f"rank_{rank}.pt")
        # Gathered over the data group only: tensor-parallel peers hold the same samples, never extra negatives.
        assert got["world"] == nproc // tensor and got["rows"] == 8 and got["me"] == got["data_rank"]
        torch.testing.assert_close(got["grad"], got["ref"], rtol=1e-5, atol=1e-6)
