"""The container and launch scripts stay in step with the Makefile (they cannot be built or run here)."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_installs_what_the_makefile_installs():
    make, docker = (ROOT / "Makefile").read_text(), (ROOT / "Dockerfile").read_text()
    assets = re.search(r"^ASSETS := (.+)$", make, re.M).group(1).split()
    assert all(a in docker for a in assets), assets
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\S+-py3$", docker, re.M)
    # The demo shards the default recipe reads are built into the image with the Makefile's settings.
    shard_cmd = re.search(r"data_prep\.shard (.+)$", make, re.M).group(1)
    for flag in ("--tokenizer smollm2", "--seq-len 256", "--samples-per-shard 2048"):
        assert flag in shard_cmd and flag in docker.replace("\\\n", " ").replace("  ", " ")


def test_launch_scripts_parse():
    subprocess.run(["bash", "-n", str(ROOT / "launchers/slurm/pretrain.sbatch")], check=True)
    hosts = [line for line in (ROOT / "launchers/hostfile.example").read_text().splitlines()
             if line and not line.startswith("#")]
    assert hosts and all(re.fullmatch(r"\S+ slots=\d+", h) for h in hosts)
