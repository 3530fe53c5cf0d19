"""Checkpoint -> HF folder, safely: OUT_DIR is checked before anything is read (out_dir.py: never a run,
checkpoint or shard dir, never a non-empty folder that is not a previous export), the checkpoint is verified
against its COMPLETE record, and everything is written to a staging folder beside OUT_DIR and renamed at the
end, so a failed export never leaves a folder that looks valid."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..model.diffusion_decoder import with_mask_token
from .card import model_card
from .checkpoint import ExportError, read_checkpoint_info, resolve_tag_dir
from .gather import (check_against_native, check_finite, consolidate, drop_vocab_padding, model_config_for,
                     zero_stage)
from .hf_folder import DTYPES, build_hf_model, load_tokenizer, write_hf_folder
from .out_dir import check_apart, check_out_dir, publish, staged, write_marker


def export_checkpoint(
    checkpoint: str, out_dir: str, dtype: str = "fp32", overwrite: bool = False, hub_repo: Optional[str] = None
) -> Path:
    """Export the checkpoint at `checkpoint` (tag, checkpoints or run dir) to the HF folder `out_dir`.

    `hub_repo`, when the folder will be pushed, is what the model card's usage snippet loads from (else the
    folder's name: the card must not carry a local path).
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out_dir).expanduser().resolve()
    check_out_dir(out, overwrite)
    tag_dir = resolve_tag_dir(checkpoint)
    for source in (Path(checkpoint), tag_dir):
        check_apart(out, source)
    info = read_checkpoint_info(tag_dir)
    stage = zero_stage(info.tag_dir)
    weights = drop_vocab_padding(consolidate(info, stage), info)
    check_finite(weights)
    cfg = model_config_for(info, weights)
    check_against_native(weights, cfg)
    tokenizer = load_tokenizer(info, cfg.vocab_size)
    cfg = with_mask_token(cfg, tokenizer.mask_token_id)  # a time-conditioned decoder reads t off mask tokens
    model = build_hf_model(cfg, weights, dtype)
    num_params = sum(t.numel() for t in weights.values())
    card = model_card(cfg, num_params, info, tokenizer, stage, hub_repo or out.name)
    try:
        with staged(out) as folder:
            written = write_hf_folder(folder, model, tokenizer, weights)
            card.save(folder / "README.md")
            write_marker(folder, info.tag_dir.name, info.trainer_state.get("step"))
            publish(folder, out, overwrite)
    except OSError as exc:
        raise ExportError(f"cannot write the export to {out} ({exc.strerror or exc}); check that its parent "
                          f"folder is writable and has free space") from None
    print(f"exported {info.tag_dir} (step {info.trainer_state.get('step', '?')}, {num_params:,} parameters, "
          f"{dtype}) -> {out}: {', '.join(sorted({*written, 'README.md'}))}", flush=True)
    return out
