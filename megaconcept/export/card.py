"""The model card (README.md) of an exported folder: architecture, training (objectives and weights, layout,
counters), held-out loss and concept health at export time, data and its license, tokenizer, usage.

Everything in it is public: local paths keep only their last component (public_path), and the usage snippet
loads from the hub repo (or the folder's own name), so it runs as written from the folder's parent directory.
"""
from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelCardData
from transformers import PreTrainedTokenizerBase

from ..model import ConceptModelConfig
from .card_facts import heldout_record, parallel_layout, shard_manifest
from .checkpoint import CheckpointInfo

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
        ("concept layer", cfg.concept_layer if cfg.concept_layer != "slot"
         else f"slot ({cfg.slot_iterations} iterations, {cfg.slot_update} update)"),
        ("attention heads", str(cfg.num_heads)),
        ("gated-MLP hidden size", str(cfg.mlp_dim)),
        ("decoder", f"{cfg.decoder}, {cfg.decoder_layers} layer(s)"),
        ("max sequence length", "no limit (RoPE backbone, sinusoidal decoder queries)" if cfg.max_length is None
         else str(cfg.max_length)),
        ("LM head tied to token embedding", "yes" if cfg.tie_word_embeddings else "no"),
    ]
    return "\n".join(f"| {name} | {value} |" for name, value in rows)


def _reads(cfg: ConceptModelConfig) -> str:
    if cfg.concept_layer == "slot":
        return "compete for the N token states (slot attention: each token's softmax over the concepts)"
    return "cross-attend to the N token states"


def _term_rows(run_config: dict[str, Any]) -> str:
    """One table row per objective term: kind, weight, and how the weight moves (objectives.base.TermConfig)."""
    terms = run_config.get("objective", {}).get("terms", {}) or {}
    rows = []
    for name, values in terms.items():
        if values is None:
            continue
        values = values if isinstance(values, dict) else {}
        warmup, schedule = values.get("warmup_steps", 0), values.get("schedule", "linear")
        moves = ("constant" if schedule == "linear" and not warmup else
                 f"linear warm-up over {warmup} steps" if schedule == "linear" else schedule)
        rows.append(f"| `{name}` | {values.get('kind', name)} | {values.get('weight', 1.0)} | {moves} |")
    return "\n".join(rows) or "| `mlm` | mlm | 1.0 | constant |"


def _training_text(info: CheckpointInfo, stage: int) -> str:
    run_config, state = info.run_config, info.trainer_state
    objective = run_config.get("objective", {}) or {}
    masking = objective.get("masking", {}) or {}
    scheme = (objective.get("weighting", {}) or {}).get("scheme", "fixed")
    precision = (run_config.get("train", {}) or {}).get("precision", "auto")
    return f"""{state.get("step", 0):,} optimizer steps, {state.get("tokens_seen", 0):,} tokens seen \
({state.get("samples_seen", 0):,} samples), exported from a megaconcept DeepSpeed checkpoint (weights consolidated
to fp32). Parallel layout: {parallel_layout(info, stage)}; precision `{precision}`.

{_objective_text(run_config)} Weighting: `{scheme}`; masking: `{masking.get("strategy", "bert")}` at rate \
{masking.get("rate", 0.15)}.

| term | kind | weight | weight schedule |
|---|---|---|---|
{_term_rows(run_config)}"""


_HEALTH = (("effective rank (entropy, per sample)", "effective_rank"), ("participation ratio", "participation_ratio"),
           ("mean pairwise cosine", "mean_pairwise_cosine"), ("uniformity (0 = collapsed, -4 = orthogonal)",
                                                              "uniformity"), ("collapsed dimensions", "collapsed_dims"))


def _heldout_text(info: CheckpointInfo, num_concepts: int) -> str:
    """The run's last held-out measurement at or before the exported step (megaconcept.train.analysis)."""
    record = heldout_record(info)
    if record is None:
        return ("No held-out measurement was logged beside this checkpoint (RUN_DIR/metrics.jsonl; "
                "`analysis.interval=0` turns the measurement off, and a checkpoint copied away from its run leaves "
                "the log behind).")
    analysis = info.run_config.get("analysis", {}) or {}
    rows = [("held-out loss (the MLM term, else the whole objective, on a fixed masking)",
             f"{record['heldout_loss']:.4f}")]
    if isinstance(record.get("heldout_mlm15"), (int, float)):
        rows.append(("held-out MLM loss at 15% masking (comparable across runs)", f"{record['heldout_mlm15']:.4f}"))
    for label, key in _HEALTH:
        value = record.get(f"concepts/{key}")
        if isinstance(value, (int, float)):
            shown = {"effective_rank": f"{value:.2f} / {num_concepts}", "collapsed_dims": f"{value:.0f}"}
            rows.append((label, shown.get(key, f"{value:.3f}")))
    if record.get("concepts/collapse_alarm"):
        rows.append(("collapse alarm", "raised: the concepts are becoming copies of few directions"))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (f"Measured at step {record.get('step', '?')} on the held-out batch (`analysis.heldout="
            f"{analysis.get('heldout', 'last_shard')}`, {analysis.get('samples', '?')} samples), the last measurement "
            f"at or before the exported step:\n\n| | |\n|---|---|\n{table}")


def _sources(manifest: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    sources = (manifest or {}).get("sources") or []
    return [s for s in sources if isinstance(s, dict)]


def hub_datasets(manifest: Optional[dict[str, Any]]) -> list[str]:
    """Hub dataset ids the shards were made from (the card's `datasets:` metadata)."""
    return [str(s["hub"]) for s in _sources(manifest) if s.get("hub")]


def _source_text(source: dict[str, Any]) -> str:
    if source.get("hub"):
        config = f"config `{source['config']}`, " if source.get("config") else ""
        return (f"the hub dataset [`{source['hub']}`](https://huggingface.co/datasets/{source['hub']}) "
                f"({config}split `{source.get('split')}`)")
    return f"the local file `{public_path(str(source.get('path', '?')))}` ({source.get('format', '?')})"


def _license_text(shards: str, manifest: Optional[dict[str, Any]]) -> str:
    sources = _sources(manifest)
    local = [str(s.get("path", "")) for s in sources if not s.get("hub")]
    if shards.rstrip("/").endswith(DEMO_SHARDS) or any("hotpotqa" in PurePath(p).name.lower() for p in local):
        return ("These are megaconcept's embedded demo corpus: Wikipedia paragraphs derived at run time from the "
                "HotpotQA dev set (CC BY-SA 4.0, Yang et al., 2018); the weights carry that attribution.")
    if sources and not local:
        return ("Data license: that of the dataset(s) above (see their dataset cards); the weights carry their terms.")
    return ("Data license: not recorded by the shards (local files); whoever publishes these weights must state the "
            "terms of that text. (megaconcept's embedded demo corpus, when used, is HotpotQA, CC BY-SA 4.0.)")


def _data_text(run_config: dict[str, Any], manifest: Optional[dict[str, Any]]) -> str:
    shards = str(run_config.get("data", {}).get("shards", "unknown"))
    text = f"Trained on the token shards at `{public_path(shards)}` (written by `python -m data_prep.shard`)"
    if manifest is None:
        text += "; their manifest was not found at export time."
    else:
        made = "; ".join(_source_text(s) for s in _sources(manifest)) or "unrecorded sources"
        text += (f", made from {made}: {manifest.get('documents', 0):,} documents, {manifest.get('tokens', 0):,} "
                 f"tokens in samples of {manifest.get('seq_len', '?')}.")
    return text + "\n\n" + _license_text(shards, manifest)


def _tokenizer_text(tokenizer: PreTrainedTokenizerBase, manifest: Optional[dict[str, Any]]) -> str:
    recorded = (manifest or {}).get("tokenizer") or {}
    origin = (f"`{public_path(str(recorded['spec']))}` (sha256 {str(recorded.get('sha256', ''))[:16]}), "
              if recorded.get("spec") else "")
    separator = (manifest or {}).get("separator_token")
    ends = f"; documents end with `{separator}`" if separator else ""
    return (f"{origin}`{type(tokenizer).__name__}`, {len(tokenizer):,} tokens including the mask token "
            f"`{tokenizer.mask_token}`{ends}. The folder holds it (tokenizer.json, tokenizer_config.json).")


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
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline

# transformers 5's AutoTokenizer reads config.json first, and this model's config class ships in the repo:
# without trust_remote_code it stops to ask before falling back to the tokenizer files.
tokenizer = AutoTokenizer.from_pretrained("{repo_or_dir}", trust_remote_code=True)
model = AutoModelForMaskedLM.from_pretrained("{repo_or_dir}", trust_remote_code=True)
fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)
print(fill(f"The capital of France is {{tokenizer.mask_token}}."))

# Concept vectors (B, C, D) instead of token logits:
encoder = AutoModel.from_pretrained("{repo_or_dir}", trust_remote_code=True)
print(encoder(**tokenizer("The capital of France is Paris.", return_tensors="pt")).last_hidden_state.shape)
```
Fine-tuning heads load the same weights: `AutoModelForSequenceClassification` and `AutoModelForQuestionAnswering`
(new head weights are reported as newly initialized).'''


def model_card(cfg: ConceptModelConfig, num_params: int, info: CheckpointInfo, tokenizer: PreTrainedTokenizerBase,
               zero_stage: int, repo_or_dir: str) -> ModelCard:
    """A model card for this export; `repo_or_dir` (a hub repo or the folder's name, never a local path: the
    card is pushed) is what the usage snippet loads from."""
    manifest = shard_manifest(info.run_config)
    data = ModelCardData(license="apache-2.0", library_name="transformers", pipeline_tag="fill-mask",
                         tags=["megaconcept", "concept-encoder", "masked-lm", "custom_code"],
                         datasets=hub_datasets(manifest) or None)
    content = f"""---
{data.to_yaml()}
---

# megaconcept concept encoder (MLM)

A **concept encoder**: {cfg.num_concepts} learned concept vectors {_reads(cfg)} and
self-attend among themselves, so the costly part scales as O(C·N) instead of O(N²). The `{cfg.decoder}`
decoder reconstructs the tokens from the concepts.

## Architecture

| | |
|---|---|
{_architecture_rows(cfg, num_params)}

## Training

{_training_text(info, zero_stage)}

## Held-out loss and concept health at export time

{_heldout_text(info, cfg.num_concepts)}

## Data

{_data_text(info.run_config, manifest)}

## Tokenizer

{_tokenizer_text(tokenizer, manifest)}

## Usage

The modeling code ships in this folder, so loading the model needs `trust_remote_code=True`:

{_usage(repo_or_dir)}

## License

Code: Apache-2.0. The weights carry the data terms above.
"""
    return ModelCard(content)
