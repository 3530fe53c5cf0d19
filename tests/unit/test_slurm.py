"""SLURM environment -> torch.distributed environment."""
import pytest

from megaconcept.parallel.slurm import first_host, torch_env_from_slurm


@pytest.mark.parametrize("nodelist, host", [
    ("node7", "node7"), ("gpu[003-010,012]", "gpu003"), ("gpu[3-4],cpu1", "gpu3"), ("a-[01-02]-ib", "a-01-ib"),
    ("n1,n2", "n1"),
])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_task_environment_is_mapped():
    env = {"SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3", "SLURM_TASKS_PER_NODE": "8(x2)",
           "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_JOB_ID": "123456"}
    assert torch_env_from_slurm(env) == {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8",
                                         "MASTER_ADDR": "gpu017", "MASTER_PORT": str(20000 + 123456 % 20000)}


def test_launcher_and_user_settings_win():
    assert torch_env_from_slurm({"SLURM_PROCID": "0", "RANK": "5"}) == {}  # torchrun/deepspeed under srun
    assert torch_env_from_slurm({}) == {}  # not a SLURM task
    mapped = torch_env_from_slurm({"SLURM_PROCID": "0", "SLURM_NTASKS_PER_NODE": "4", "MASTER_ADDR": "head",
                                   "MASTER_PORT": "29500"})
    assert (mapped["LOCAL_WORLD_SIZE"], mapped["MASTER_ADDR"], mapped["MASTER_PORT"]) == ("4", "head", "29500")
