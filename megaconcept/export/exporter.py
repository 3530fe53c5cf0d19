"""Checkpoint -> HF folder, atomically: everything is written to a temp dir beside OUT_DIR and renamed at
the end, so a failed export never leaves a folder that looks valid."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .card import model_card
from .checkpoint import ExportError, read_checkpoint_info, resolve_tag_dir
from .gather import check_against_native, consolidate, drop_vocab_padding, model_config_for
from .hf_folder import DTYPES, build_hf_model, load_tokenizer, write_hf_folder


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty OUT_DIR (or a file) unless overwriting was asked for."""
    if out_dir.is_file():
        raise ExportError(f"output {out_dir} is a file; pass a directory path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"output dir {out_dir} is not empty; choose another path or pass --overwrite")


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temp dir into place; an old OUT_DIR is removed only after the swap."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old)


def export_checkpoint(
    checkpoint: str, out_dir: str, dtype: str = "fp32", overwrite: bool = False, hub_repo: Optional[str] = None
) -> Path:
    """Export the checkpoint at `checkpoint` (tag, checkpoints or run dir) to the HF folder `out_dir`.

    `hub_repo`, when the folder will be pushed, is what the model card's usage snippet loads from.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out_dir).expanduser().resolve()
    check_out_dir(out, overwrite)
    info = read_checkpoint_info(resolve_tag_dir(checkpoint))
    weights = drop_vocab_padding(consolidate(info), info)
    cfg = model_config_for(info, weights)
    check_against_native(weights, cfg)
    tokenizer = load_tokenizer(info, cfg.vocab_size)
    model = build_hf_model(cfg, weights, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its 0700 mode would survive the rename; mkdir applies the user's umask like any folder.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        written = write_hf_folder(tmp, model, tokenizer, weights)
        num_params = sum(t.numel() for t in weights.values())
        model_card(cfg, num_params, info.trainer_state, info.run_config, hub_repo or str(out)).save(tmp / "README.md")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {info.tag_dir} (step {info.trainer_state.get('step', '?')}, {num_params:,} parameters, "
          f"{dtype}) -> {out}: {', '.join(sorted({*written, 'README.md'}))}", flush=True)
    return out
