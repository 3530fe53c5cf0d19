"""Every decoder trains through the CLI, exports, and works in a fresh process with AutoModelForMaskedLM and
pipeline("fill-mask") from the folder's own code (hub offline, stdin closed)."""
import json
import os
import subprocess
import sys

import pytest

from megaconcept.model.decoders import DECODERS

from _launch import TINY, run, torchrun_cmd

FRESH = """
import sys, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
folder = sys.argv[1]
model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tok("The river flows through the city.", return_tensors="pt")
with torch.no_grad():
    logits = model(**ids).logits
assert logits.shape[:2] == ids["input_ids"].shape and torch.isfinite(logits).all()
fill = pipeline("fill-mask", model=folder, trust_remote_code=True)
out = fill(f"The river {tok.mask_token} the city.")
assert len(out) == 5 and all("token_str" in p for p in out)
print(type(model.decoder).__name__)
"""


@pytest.mark.parametrize("decoder", DECODERS.keys())
def test_decoder_trains_exports_and_fills_masks(tmp_path, tiny_shards, decoder):
    run_dir, out = tmp_path / "run", tmp_path / "hf"
    run(torchrun_cmd(1, "ds_configs/zero3.json", TINY + [f"data.shards={tiny_shards}", f"run_dir={run_dir}",
                                                         "train.max_steps=3", "analysis.interval=0",
                                                         f"model.decoder={decoder}"]))
    run([sys.executable, "-m", "megaconcept.export", str(run_dir), str(out)])
    assert json.loads((out / "config.json").read_text())["decoder"] == decoder
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(out)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == DECODERS[decoder].__name__  # the folder built this decoder
