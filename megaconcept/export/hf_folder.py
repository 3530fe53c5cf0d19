"""Write a Hugging Face folder: safetensors weights, config.json with auto_map, tokenizer, model code, card.

The folder loads with `AutoModelForMaskedLM.from_pretrained(dir, trust_remote_code=True)` (and the other
auto_map classes) and works with `pipeline("fill-mask", ...)`; the model code is copied flat from
megaconcept/model: the modules the auto_map names and their imports, nothing else (model_code.py).

model.safetensors holds the native parameter names (the project's canonical names: `train.init_from` reads an
export by them and tests pin them). In memory the HF classes keep the base model's parts under
`base_model_prefix` (`megaconcept.encoder.*`); transformers adds or strips that prefix per key when it loads,
so every class reads the file, and a user's own `save_pretrained` (prefixed names) loads the same way.
"""
from __future__ import annotations

import dataclasses
import json
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
from .model_code import code_closure

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


def hf_names(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Native names -> the HF model's: a base-model part moves under `base_model_prefix`; head parts keep theirs."""
    prefix, own = model.base_model_prefix, set(model.state_dict())
    return {f"{prefix}.{k}" if f"{prefix}.{k}" in own else k: v for k, v in weights.items()}


def native_names(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The HF model's names -> native: the base model's prefix dropped (the inverse of hf_names)."""
    return {k[len(prefix) + 1:] if k.startswith(prefix + ".") else k: v for k, v in state.items()}


def build_hf_model(cfg: ConceptModelConfig, weights: dict[str, torch.Tensor], dtype: str) -> MegaconceptForMaskedLM:
    """The HF model holding exactly `weights` (native names; a strict load after hf_names)."""
    config = MegaconceptConfig.from_model_config(_public_config(cfg), auto_map=dict(AUTO_MAP))
    with torch.device("meta"):  # the weights are assigned below; random init would only cost time
        model = MegaconceptForMaskedLM(config)
    model.load_state_dict(hf_names(weights, model), strict=True, assign=True)
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


def shipped_code() -> list[str]:
    """The megaconcept/model files an export carries: the auto_map's modules and what they import."""
    modules = {reference.split(".")[0] for reference in AUTO_MAP.values()}
    return code_closure(Path(model_package.__file__).parent, modules)


def copy_model_code(out: Path) -> list[str]:
    """Copy shipped_code() flat into `out` (the trust_remote_code sources); returns the names."""
    package = Path(model_package.__file__).parent
    names = shipped_code()
    for name in names:
        shutil.copy2(package / name, out / name)
    return names


def portable_tokenizer_class(out: Path) -> None:
    """transformers 5 saves a plain fast tokenizer as `TokenizersBackend`, a class transformers 4 lacks (its
    AutoTokenizer then fails). `PreTrainedTokenizerFast` names the same class in 5 (an alias) and exists in 4,
    whose AutoTokenizer, given a class here, never reads config.json and so never asks to run the folder's code.
    Specialised classes (BertTokenizer, ...) are kept as saved."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    """Fill the (empty) folder `out` (weights under their native names, see the module docstring); returns the
    names written."""
    model.save_pretrained(str(out), state_dict=native_names(model.state_dict(), model.base_model_prefix))
    verify_saved(out, weights)
    tokenizer.save_pretrained(str(out))
    portable_tokenizer_class(out)
    copy_model_code(out)
    return sorted(p.name for p in out.iterdir())
