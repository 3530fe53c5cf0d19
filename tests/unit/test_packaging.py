"""Packaging: the container and launch scripts stay in step with the Makefile (they cannot be built or run here),
exports ship exactly the code their classes import, and hub downloads use hf_transfer when it is installed."""
import os
import re
import subprocess
from pathlib import Path

import pytest

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


def test_exports_ship_exactly_the_code_their_classes_import(tmp_path):
    """The files an export carries are the import closure of the auto_map's modules, the same set transformers
    copies itself when a model loaded with trust_remote_code is saved or pushed (so a user's push_to_hub of a
    fine-tuned head carries what the export carried); training-only modules are not in it."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from megaconcept.export.hf_folder import AUTO_MAP, shipped_code
    from megaconcept.export.model_code import code_closure

    model_dir = ROOT / "megaconcept" / "model"
    shipped = shipped_code()
    entries = {ref.split(".")[0] for ref in AUTO_MAP.values()}
    assert entries == {"hf_configuration", "hf_modeling"}
    by_transformers = {Path(f).name for e in entries for f in [model_dir / f"{e}.py", *get_relative_import_files(
        str(model_dir / f"{e}.py"))]}
    assert set(shipped) == by_transformers
    assert {"hf_modeling.py", "hf_configuration.py", "config.py", "encoder.py", "decoders.py"} <= set(shipped)
    assert not {"warmstart.py", "sharding.py", "lm_loss.py", "__init__.py"} & set(shipped)
    # A sibling imported only inside a function is found too, and a module outside the package is refused.
    (tmp_path / "a.py").write_text("def f():\n    from .b import x\n")
    (tmp_path / "b.py").write_text("from . import c\n")
    (tmp_path / "c.py").write_text("import torch\n")
    (tmp_path / "d.py").write_text("from ..train import loop\n")
    assert code_closure(tmp_path, ["a"]) == ["a.py", "b.py", "c.py"]
    with pytest.raises(ValueError, match=r"d.py imports \.\.train"):
        code_closure(tmp_path, ["d"])


@pytest.mark.parametrize("installed, hub_reads_it, user_value, expected_env, expected", [
    (False, True, None, None, False),  # no hf_transfer: nothing is switched on
    (True, True, None, "1", True),
    (True, True, "0", "0", False),  # the user's own setting wins
    (True, False, None, None, False),  # huggingface_hub >= 1.0 downloads with hf_xet and ignores the variable
], ids=["not-installed", "installed", "user-said-no", "hub-without-hf-transfer"])
def test_hf_transfer_is_switched_on_when_installed(installed, hub_reads_it, user_value, expected_env, expected,
                                                   monkeypatch):
    import importlib.util
    import sys
    import types

    from megaconcept import hub_env

    constants = types.ModuleType("huggingface_hub.constants")
    if hub_reads_it:
        constants.HF_HUB_ENABLE_HF_TRANSFER = False  # what it read when first imported
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", constants)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if installed else None)
                        if name == "hf_transfer" else real_find_spec(name, *a))
    monkeypatch.delenv(hub_env.HF_TRANSFER_ENV, raising=False)
    if user_value is not None:
        monkeypatch.setenv(hub_env.HF_TRANSFER_ENV, user_value)
    assert hub_env.enable_fast_downloads() is expected
    assert os.environ.get(hub_env.HF_TRANSFER_ENV) == expected_env
    # An already imported huggingface_hub sees the switch too (it read the variable at import).
    assert getattr(constants, hub_env.HF_TRANSFER_ENV, None) is (expected if hub_reads_it else None)
