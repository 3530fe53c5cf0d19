"""Map SLURM's per-task environment to torch.distributed's, for `srun python launchers/pretrain.py`
(one SLURM task per device). Launches through torchrun or deepspeed already set RANK and are untouched.
"""
from __future__ import annotations

import re
from typing import Mapping

DEFAULT_PORT_BASE = 20000


def first_host(nodelist: str) -> str:
    """First hostname of a SLURM node list: `gpu[003-010,012],cpu1` -> `gpu003`; `node7` -> `node7`.

    Written by hand because `scontrol show hostnames` is not available inside every container, and only
    the first host (the rendezvous address) is needed.
    """
    match = re.match(r"([^,\[]*)(?:\[([^\]]+)\])?([^,]*)", nodelist.strip())
    if not match or not match.group(0):
        raise ValueError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges, suffix = match.groups()
    if ranges is None:
        return prefix + suffix
    first = ranges.split(",")[0].split("-")[0]  # zero padding is part of the name: keep it as written
    return f"{prefix}{first}{suffix}"


def _tasks_on_node(tasks_per_node: str) -> int:
    """SLURM_TASKS_PER_NODE is e.g. `4(x2),3`; the first entry is this job's per-node count on node 0."""
    return int(re.match(r"\d+", tasks_per_node).group(0))


def torch_env_from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT from a SLURM task's environment
    (values already set in `env` win). Empty when this is not a SLURM task."""
    if "SLURM_PROCID" not in env or "RANK" in env:
        return {}
    local_world = env.get("SLURM_NTASKS_PER_NODE") or _tasks_on_node(env.get("SLURM_TASKS_PER_NODE", "1"))
    mapped = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(local_world),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
        # Same port on every task of the job, different across jobs sharing a node.
        "MASTER_PORT": env.get("MASTER_PORT") or str(DEFAULT_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % 20000),
    }
    return mapped
