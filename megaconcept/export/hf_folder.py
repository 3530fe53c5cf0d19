"""Write a Hugging Face folder: safetensors weights, config.json with auto_map, tokenizer, model code, card.

The folder loads with `AutoModelForMaskedLM.from_pretrained(dir, trust_remote_code=True)` and works with
`pipeline("fill-mask", ...)`; the model code is copied flat from megaconcept/model (relative imports only).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .. import model as model_package
from ..model import ConceptModelConfig
from ..model.hf_configuration import MegaconceptConfig
from ..model.hf_modeling import MegaconceptForMaskedLM
from .card import public_path
from .checkpoint import CheckpointInfo, ExportError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
AUTO_MAP = {
    "AutoConfig": "hf_configuration.MegaconceptConfig",
    "AutoModel": "hf_modeling.MegaconceptModel",
    "AutoModelForMaskedLM": "hf_modeling.MegaconceptForMaskedLM",
    "AutoModelForSequenceClassification": "hf_modeling.MegaconceptForSequenceClassification",
    "AutoModelForQuestionAnswering": "hf_modeling.MegaconceptForQuestionAnswering",
}


def _public_config(cfg: ConceptModelConfig) -> ConceptModelConfig:
    """config.json is pushed with the weights: a warm-start source given as a local path keeps only its name
    (it is provenance; loading never reads it, the weights are in the folder)."""
    backbone = cfg.backbone
    if backbone is None or not backbone.init_from:
        return cfg
    return dataclasses.replace(cfg, backbone=dataclasses.replace(backbone, init_from=public_path(backbone.init_from)))


def build_hf_model(cfg: ConceptModelConfig, weights: dict[str, torch.Tensor], dtype: str) -> MegaconceptForMaskedLM:
    """The HF model holding exactly `weights` (same keys as the native model, so a strict load)."""
    config = MegaconceptConfig.from_model_config(_public_config(cfg), auto_map=dict(AUTO_MAP))
    with torch.device("meta"):  # the weights are assigned below; random init would only cost time
        model = MegaconceptForMaskedLM(config)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.to(DTYPES[dtype]).eval()


def load_tokenizer(info: CheckpointInfo, vocab_size: int) -> PreTrainedTokenizerBase:
    """The tokenizer the run trained with; fill-mask needs its mask token and ids must fit the embedding."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(info.tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{info.tokenizer_dir} is not a loadable tokenizer folder ({exc})") from None
    if tokenizer.mask_token is None:
        raise ExportError(f"{info.tokenizer_dir} has no mask token; fill-mask needs one")
    if len(tokenizer) > vocab_size:
        raise ExportError(f"{info.tokenizer_dir} has {len(tokenizer)} tokens but the embedding only {vocab_size} rows")
    return tokenizer


def copy_model_code(out: Path) -> list[str]:
    """Copy every megaconcept/model/*.py except __init__.py flat into `out` (trust_remote_code sources)."""
    names = []
    for source in sorted(Path(model_package.__file__).parent.glob("*.py")):
        if source.name != "__init__.py":
            shutil.copy2(source, out / source.name)
            names.append(source.name)
    return names


def saved_tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape over every *.safetensors file in `folder` (read from headers, no tensor data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def verify_saved(folder: Path, expected: dict[str, torch.Tensor]) -> None:
    """What landed on disk must be the native key set with the native shapes, no tensor empty."""
    saved = saved_tensor_shapes(folder)
    wrong = sorted(set(saved) ^ set(expected)) + sorted(
        k for k in set(saved) & set(expected) if saved[k] != tuple(expected[k].shape) or 0 in saved[k]
    )
    if wrong:
        raise ExportError(f"save_pretrained wrote weights that differ from the native model at: {', '.join(wrong)}")


def write_hf_folder(
    out: Path, model: MegaconceptForMaskedLM, tokenizer: PreTrainedTokenizerBase, weights: dict[str, torch.Tensor]
) -> list[str]:
    """Fill the (empty) folder `out`; returns the names written."""
    model.save_pretrained(str(out))
    verify_saved(out, weights)
    tokenizer.save_pretrained(str(out))
    copy_model_code(out)
    return sorted(p.name for p in out.iterdir())
