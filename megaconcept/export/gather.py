"""Consolidate a DeepSpeed checkpoint (ZeRO stage 0-3, any number of ranks) into one fp32 state dict on CPU,
and refuse anything that is not exactly the native model's parameters.

ZeRO-1/2/3 keep the fp32 master weights partitioned across the ranks' optimizer files; DeepSpeed's own
`zero_to_fp32` reassembles them without a distributed run. Stage 0 keeps whole weights in the model file.
Empty tensors (a ZeRO-3 parameter saved without being gathered) and renamed keys are the known ways an
export goes silently wrong, so both fail loudly here with the offending names.
"""
from __future__ import annotations

import json
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..model import ConceptMLM, ConceptModelConfig
from ..checkpoint_format import (PIPELINE_LAYERS, UnsafeCheckpointFile, deepspeed_files, load_deepspeed_file,
                                 split_trained_names)
from ..model.sharding import tensor_parallel_plan, vocabulary_parameters
from .checkpoint import CheckpointInfo, ExportError

# Wrappers that rename parameters: DeepSpeed/DDP prefix the whole model with `module.`; torch.compile
# inserts `_orig_mod.` at the level of whatever (sub)module it compiled.
_LEADING_MODULE = re.compile(r"^(?:module\.)+")
_ORIG_MOD = re.compile(r"(?:^|(?<=\.))_orig_mod\.")
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError)


def _load(path: Path) -> dict[str, Any]:
    """A DeepSpeed checkpoint file, unpickling nothing but tensors and DeepSpeed's bookkeeping."""
    try:
        return load_deepspeed_file(path)
    except UnsafeCheckpointFile as exc:
        raise ExportError(str(exc)) from None
    except _UNREADABLE as exc:
        raise ExportError(f"{path} cannot be read ({_first_line(exc)}); the checkpoint is damaged") from None


def check_pickles(tag_dir: Path) -> None:
    """Open every DeepSpeed file with `_load` before zero_to_fp32 reads it: DeepSpeed's own loader unpickles
    with weights_only=False, so this is what keeps a tampered file from running code during an export."""
    for path in deepspeed_files(tag_dir):
        _load(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def zero_stage(tag_dir: Path) -> int:
    """ZeRO stage of a tag dir: 3 if per-rank model files exist, else what the saved ds_config says."""
    if (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file():
        return 3
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise ExportError(f"{tag_dir} holds no DeepSpeed model states (mp_rank_00_model_states.pt or "
                          f"zero_pp_rank_0_mp_rank_00_model_states.pt); the checkpoint is damaged")
    ds_config = _load(model_file).get("ds_config")
    if not isinstance(ds_config, dict):
        return 0
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def check_rank_files(tag_dir: Path, stage: int, data: int, tensor: int = 1) -> None:
    """Every rank's shard must be present: zero_to_fp32 would otherwise merge a partial set silently."""
    expected = [f"mp_rank_{t:02d}_model_states.pt" for t in range(tensor)] if stage < 3 else []
    for t in range(tensor):
        if stage >= 1:
            expected += [f"zero_pp_rank_{r}_mp_rank_{t:02d}_optim_states.pt" for r in range(data)]
        if stage == 3:
            expected += [f"zero_pp_rank_{r}_mp_rank_{t:02d}_model_states.pt" for r in range(data)]
    # bf16 runs prefix the optimizer shards with `bf16_`.
    missing = [n for n in expected if not (tag_dir / n).is_file() and not (tag_dir / f"bf16_{n}").is_file()]
    if missing:
        raise ExportError(f"{tag_dir} was written by {data * tensor} ranks (tensor {tensor} x data {data}) but "
                          f"lacks {', '.join(missing)}; the checkpoint is incomplete or damaged")
    # torch.save writes zip archives whose index sits at the end: a truncated copy fails this cheap check,
    # which names the file, instead of failing deep inside DeepSpeed's loader.
    broken = sorted(p.name for p in tag_dir.glob("*_states.pt") if not zipfile.is_zipfile(p))
    if broken:
        raise ExportError(f"{tag_dir}: {', '.join(broken)} truncated or corrupt (not a complete torch.save "
                          f"archive); the checkpoint is damaged")


def _zero_fp32_weights(tag_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except (*_UNREADABLE, AssertionError, IndexError) as exc:
        raise ExportError(f"{tag_dir}: DeepSpeed could not consolidate the ZeRO shards "
                          f"({_first_line(exc)}); the checkpoint is damaged") from None


def _stage0_weights(tag_dir: Path) -> dict[str, torch.Tensor]:
    module = _load(tag_dir / "mp_rank_00_model_states.pt").get("module")
    if not isinstance(module, dict):
        raise ExportError(f"{tag_dir / 'mp_rank_00_model_states.pt'} has no `module` weights; the checkpoint is damaged")
    low = sorted({str(t.dtype) for t in module.values() if t.is_floating_point() and t.dtype != torch.float32})
    if low:
        print(f"note: ZeRO-0 keeps no fp32 master copy in its model file; exporting the {', '.join(low)} weights")
    return module


def _rank_view(tag_dir: Path, tensor_rank: int, scratch: Path) -> Path:
    """A tag dir holding only one tensor-parallel rank's files, renamed as rank 0's: DeepSpeed's consolidation
    reads every *_states.pt it finds and knows nothing about tensor parallelism."""
    view = scratch / f"mp{tensor_rank}" / tag_dir.name
    view.mkdir(parents=True)
    mine = f"mp_rank_{tensor_rank:02d}_"
    for path in tag_dir.glob(f"*{mine}*_states.pt"):
        (view / path.name.replace(mine, "mp_rank_00_")).symlink_to(path.resolve())
    return view


def _weights(tag_dir: Path, stage: int) -> dict[str, torch.Tensor]:
    return strip_wrapper_prefixes(_stage0_weights(tag_dir) if stage == 0 else _zero_fp32_weights(tag_dir))


def merge_tensor_parallel(shards: list[dict[str, torch.Tensor]], plan: dict[str, int]) -> dict[str, torch.Tensor]:
    """Concatenate each split parameter along the dimension the model's plan cut it (megaconcept.model.sharding);
    replicated ones are taken from rank 0 after checking the ranks agree on the key set."""
    keys = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != keys:
            raise ExportError(f"tensor-parallel rank {rank} holds other parameters than rank 0: "
                              f"{sorted(set(shard) ^ keys)[:5]}; the checkpoint is damaged")
    merged = {}
    for name, tensor in shards[0].items():
        dim = plan.get(name)
        merged[name] = tensor if dim is None else torch.cat([s[name] for s in shards], dim=dim)
    return merged


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`module.encoder.x` / `_orig_mod.encoder.x` -> `encoder.x` (canonical names only, DESIGN habit 9)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = _ORIG_MOD.sub("", _LEADING_MODULE.sub("", key))
        if name in out:
            raise ExportError(f"checkpoint holds both {key!r} and another key that also canonicalizes to {name!r}")
        out[name] = tensor
    return out


_LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")


def _pipeline_weights(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """Per-layer files of a pipeline checkpoint, renamed to plain names and merged across tensor ranks.

    DeepSpeed's pipeline engine saves each layer's whole weights (ZeRO-1 partitions only optimizer state).
    """
    names = {int(k): v for k, v in json.loads((info.tag_dir / PIPELINE_LAYERS).read_text()).items()}
    files = {(int(m[1]), int(m[2])): p for p in info.tag_dir.iterdir() if (m := _LAYER_FILE.match(p.name))}
    missing = [f"layer_{i:02d}-model_{t:02d}-model_states.pt" for i in sorted(names) for t in range(info.tensor)
               if (i, t) not in files]
    if missing:
        raise ExportError(f"{info.tag_dir} lacks {', '.join(missing)}; the checkpoint is incomplete or damaged")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(info.tensor)]
    for (index, tensor_rank), path in sorted(files.items()):
        for key, value in _load(path).items():
            if key not in names.get(index, {}):
                raise ExportError(f"{path.name} holds {key!r}, which {PIPELINE_LAYERS} does not name; the checkpoint is damaged")
            shards[tensor_rank][names[index][key]] = value
    low = sorted({str(t.dtype) for t in shards[0].values() if t.is_floating_point() and t.dtype != torch.float32})
    if low:
        print(f"note: pipeline layer files hold the {', '.join(low)} training weights; exporting those")
    model_shards = [_model_part(s) for s in shards]
    return model_shards[0] if info.tensor == 1 else merge_tensor_parallel(model_shards, split_plan(info))


def _model_config(info: CheckpointInfo) -> ConceptModelConfig:
    """The checkpoint's architecture for structure only (names, plans): the vocabulary size is a placeholder."""
    section = {**info.model_section, "vocab_size": info.model_section.get("vocab_size") or 1}
    try:
        return ConceptModelConfig.from_dict(section)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{info.tag_dir / 'config.yaml'}: model section does not fit this exporter ({exc})") from None


def split_plan(info: CheckpointInfo) -> dict[str, int]:
    """The tensor-parallel plan of the checkpoint's architecture (shapes do not matter: built on meta)."""
    with torch.device("meta"):
        return tensor_parallel_plan(ConceptMLM(_model_config(info)))


def _model_part(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights under canonical names; objective-owned state (objectives.*) is dropped by rule."""
    model, dropped = split_trained_names(weights)
    if dropped:
        print(f"note: not exported (objective state, training only): {', '.join(dropped)}")
    return model


def consolidate(info: CheckpointInfo, stage: Optional[int] = None) -> dict[str, torch.Tensor]:
    """The checkpoint's full model weights: canonical names -> contiguous fp32 CPU tensors. `stage`: the ZeRO
    stage when the caller already read it (zero_stage; below stage 3 that reads the rank-0 model file)."""
    stage = zero_stage(info.tag_dir) if stage is None else stage
    # A pipeline's stages save as further model-parallel ranks next to the tensor-parallel ones.
    check_rank_files(info.tag_dir, stage, info.data, info.tensor * info.pipeline)
    check_pickles(info.tag_dir)
    print(f"consolidating ZeRO-{stage} checkpoint {info.tag_dir} (tensor {info.tensor} x pipeline {info.pipeline} "
          f"x data {info.data})", flush=True)
    if info.pipeline > 1:
        weights = _pipeline_weights(info)
    elif info.tensor == 1:
        weights = _model_part(_weights(info.tag_dir, stage))
    else:
        with tempfile.TemporaryDirectory(prefix="megaconcept-export-") as scratch:
            weights = merge_tensor_parallel(
                [_model_part(_weights(_rank_view(info.tag_dir, t, Path(scratch)), stage)) for t in range(info.tensor)],
                split_plan(info))
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()}


def drop_vocab_padding(weights: dict[str, torch.Tensor], info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """Rows past the tokenizer that training padded on (model.vocab_size unset, parallel.vocab_multiple or
    tensor parallelism) are dropped: an exported model's vocabulary is its tokenizer's, so fill-mask can never
    predict an id the tokenizer cannot decode. A vocab_size the run set on purpose is kept."""
    if info.model_section.get("vocab_size") is not None:
        return weights
    from transformers import AutoTokenizer

    try:
        rows = len(AutoTokenizer.from_pretrained(str(info.tokenizer_dir)))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{info.tokenizer_dir} is not a loadable tokenizer folder ({exc})") from None
    with torch.device("meta"):
        names = vocabulary_parameters(ConceptMLM(_model_config(info)))
    return {k: (v[:rows] if k in names and v.shape[0] > rows else v) for k, v in weights.items()}


def check_finite(weights: dict[str, torch.Tensor]) -> None:
    """A diverged run's NaN/Inf weights would export and load fine and fail only in use: refuse them."""
    bad = {name: n for name, t in weights.items() if (n := t.numel() - int(torch.isfinite(t).sum()))}
    if bad:
        name, count = next(iter(bad.items()))
        raise ExportError(f"consolidated weight {name} holds {count:,} NaN/Inf of {weights[name].numel():,} values "
                          f"({len(bad)} of {len(weights)} parameters are non-finite); the run diverged before this "
                          f"checkpoint: export an earlier one")


def model_config_for(info: CheckpointInfo, weights: dict[str, torch.Tensor]) -> ConceptModelConfig:
    """The run's architecture, with the vocabulary size read off the consolidated embedding (the truth)."""
    embed = weights.get("encoder.token_embed.weight")
    if embed is None or embed.ndim != 2:
        raise ExportError(f"{info.tag_dir}: no 2-D encoder.token_embed.weight among the consolidated weights")
    try:
        return ConceptModelConfig.from_dict({**info.model_section, "vocab_size": int(embed.shape[0])})
    except TypeError as exc:
        raise ExportError(f"{info.tag_dir / 'config.yaml'}: model section does not fit this exporter ({exc})") from None


def check_against_native(weights: dict[str, torch.Tensor], cfg: ConceptModelConfig) -> None:
    """Keys and shapes must equal `ConceptMLM(cfg).state_dict()` exactly, and no tensor may be empty."""
    with torch.device("meta"):  # shapes only: no memory, no init cost for large vocabularies
        native = {k: v.shape for k, v in ConceptMLM(cfg).state_dict().items()}
    problems = []
    empty = sorted(k for k, v in weights.items() if v.numel() == 0)
    if empty:
        problems.append(f"empty tensors (ZeRO-3 parameters saved without gathering): {', '.join(empty)}")
    missing, unexpected = sorted(native.keys() - weights.keys()), sorted(weights.keys() - native.keys())
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    shapes = sorted(f"{k} {tuple(weights[k].shape)} != {tuple(s)}" for k, s in native.items()
                    if k in weights and weights[k].numel() and weights[k].shape != s)
    if shapes:
        problems.append(f"shape mismatches (checkpoint != config.yaml model): {', '.join(shapes)}")
    if problems:
        raise ExportError("consolidated weights do not match the native model: " + "; ".join(problems))
