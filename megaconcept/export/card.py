"""The model card (README.md) of an exported folder: architecture, training counters, data, usage."""
from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..model import ConceptModelConfig

# The default `data.shards` of the embedded demo recipe (megaconcept/config/schema.py).
DEMO_SHARDS = "data/shards/demo"


def public_path(text: str) -> str:
    """A path as it may appear in a pushed folder: an absolute (or ~) local path keeps only its final
    component, `<local>/name`; relative paths and hub ids are kept as given."""
    if not os.path.isabs(os.path.expanduser(text)):
        return text
    return f"<local>/{PurePath(text).name}"


def _architecture_rows(cfg: ConceptModelConfig, num_params: int) -> str:
    rows = [
        ("parameters", f"{num_params:,}"),
        ("vocabulary (incl. mask token)", f"{cfg.vocab_size:,}"),
        ("concepts C x concept_dim D", f"{cfg.num_concepts} x {cfg.concept_dim}"),
        ("encoder layers (cross-attn to tokens, concept self-attn, gated MLP)", str(cfg.num_layers)),
        ("attention heads", str(cfg.num_heads)),
        ("gated-MLP hidden size", str(cfg.mlp_dim)),
        ("decoder", f"{cfg.decoder}, {cfg.decoder_layers} layer(s)"),
        ("max sequence length", "no limit (RoPE backbone, sinusoidal decoder queries)" if cfg.max_length is None
         else str(cfg.max_length)),
        ("LM head tied to token embedding", "yes" if cfg.tie_word_embeddings else "no"),
    ]
    return "\n".join(f"| {name} | {value} |" for name, value in rows)


def _data_text(run_config: dict[str, Any]) -> str:
    shards = str(run_config.get("data", {}).get("shards", "unknown"))
    text = f"Trained on the token shards at `{public_path(shards)}` (written by `python -m data_prep.shard`)."
    if shards.rstrip("/").endswith(DEMO_SHARDS):
        return text + (" These are megaconcept's embedded demo corpus: Wikipedia paragraphs derived at run time "
                       "from the HotpotQA dev set (CC BY-SA 4.0, Yang et al., 2018); the weights carry that "
                       "attribution.")
    return text + (" (megaconcept's embedded demo corpus, when used, is derived from HotpotQA, CC BY-SA 4.0; "
                   "see the shards' manifest for the source of these.)")


def _objective_text(run_config: dict[str, Any]) -> str:
    """The run's objective terms; an MLSM term names its dictionary and the teacher it distilled (read from the
    dictionary's metadata when the folder is still there)."""
    import json

    terms = run_config.get("objective", {}).get("terms", {}) or {}
    parts = []
    for name, values in terms.items():
        if values is None:
            continue
        kind = values.get("kind", name) if isinstance(values, dict) else name
        if kind != "mlsm":
            parts.append(f"`{name}`")
            continue
        folder = str(values.get("dictionary", ""))
        text = f"`{name}` (masked latent semantic modeling: sparse codes of dictionary `{public_path(folder)}`"
        try:
            with open(os.path.join(folder, "mlsm_dictionary.json"), encoding="utf-8") as handle:
                meta = json.load(handle)
            teacher = meta["teacher"]
            text += (f", {meta['atoms']} atoms, lambda {meta['lambda']}, teacher `{public_path(teacher['source'])}` "
                     f"to layer {meta['layer']}, weights sha256 {teacher['weights_sha256'][:16]}")
        except (OSError, ValueError, KeyError, TypeError):
            text += "; its metadata was not found at export time"
        parts.append(text + ")")
    return "Objective terms: " + (", ".join(parts) if parts else "`mlm`") + "."


def _usage(repo_or_dir: str) -> str:
    return f'''```python
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

# The tokenizer reads config.json too, whose classes live in this folder: it also needs trust_remote_code.
tokenizer = AutoTokenizer.from_pretrained("{repo_or_dir}", trust_remote_code=True)
model = AutoModelForMaskedLM.from_pretrained("{repo_or_dir}", trust_remote_code=True)
fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)
print(fill(f"The capital of France is {{tokenizer.mask_token}}."))

# Concept vectors (B, C, D) instead of token logits:
from transformers import AutoModel
encoder = AutoModel.from_pretrained("{repo_or_dir}", trust_remote_code=True)
```'''


def model_card(
    cfg: ConceptModelConfig,
    num_params: int,
    trainer_state: dict[str, int],
    run_config: dict[str, Any],
    repo_or_dir: str,
) -> ModelCard:
    """A model card for this export; `repo_or_dir` (a hub repo or the folder's name, never a local path: the
    card is pushed) is what the usage snippet loads from."""
    data = ModelCardData(license="apache-2.0", library_name="transformers", pipeline_tag="fill-mask",
                         tags=["megaconcept", "concept-encoder", "masked-lm", "custom_code"])
    step, tokens = trainer_state.get("step", 0), trainer_state.get("tokens_seen", 0)
    content = f"""---
{data.to_yaml()}
---

# megaconcept concept encoder (MLM)

A **concept encoder**: {cfg.num_concepts} learned concept vectors cross-attend to the N token states and
self-attend among themselves, so the costly part scales as O(C·N) instead of O(N²). A Perceiver-style
decoder reconstructs tokens from the concepts only (its queries carry positions, never tokens).

## Architecture

| | |
|---|---|
{_architecture_rows(cfg, num_params)}

## Training

{step:,} optimizer steps, {tokens:,} tokens seen ({trainer_state.get("samples_seen", 0):,} samples),
exported from a megaconcept DeepSpeed checkpoint (weights consolidated to fp32).
{_objective_text(run_config)}

## Data

{_data_text(run_config)}

## Usage

The modeling code ships in this folder, so loading needs `trust_remote_code=True`:

{_usage(repo_or_dir)}

## License

Code: Apache-2.0. Check the data terms above before redistributing the weights.
"""
    return ModelCard(content)
