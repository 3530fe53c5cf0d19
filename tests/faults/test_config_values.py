"""Every numeric config value is range-checked: one row per bad value, each a one-line `invalid config: ...`
error naming the key, its value and the allowed range; all violations together; never a traceback."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from megaconcept.config import ConfigError, RunConfig, load_config
from megaconcept.config.ranges import CHECKED_BY_RULES, RANGES

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = "model.backbone.num_layers=2"  # the backbone's head rules only run with a backbone

# (overrides, the key they break, fragment the message must contain)
ROWS: list[tuple[list[str], str, str]] = [
    (["seed=-1"], "seed", "seed=-1 must be in [0, 2**63)"),
    (["model.vocab_size=0"], "model.vocab_size", "model.vocab_size=0 must be positive (or null)"),
    (["model.num_concepts=0"], "model.num_concepts", "model.num_concepts=0 must be positive"),
    (["model.concept_dim=0"], "model.concept_dim", "model.concept_dim=0 must be positive"),
    (["model.num_layers=0"], "model.num_layers", "model.num_layers=0 must be positive"),
    (["model.num_heads=0"], "model.num_heads", "model.num_heads=0 must be positive"),
    (["model.mlp_ratio=-1"], "model.mlp_ratio", "model.mlp_ratio=-1.0 must be finite and > 0"),
    (["model.mlp_ratio=nan"], "model.mlp_ratio", "model.mlp_ratio=nan must be finite and > 0"),
    (["model.decoder_layers=0"], "model.decoder_layers", "model.decoder_layers=0 must be positive"),
    (["model.slot_iterations=0"], "model.slot_iterations", "model.slot_iterations=0 must be positive"),
    (["model.max_position_embeddings=0"], "model.max_position_embeddings",
     "model.max_position_embeddings=0 must be positive"),
    (["model.dropout=-0.1"], "model.dropout", "model.dropout=-0.1 must be in [0, 1)"),
    (["model.dropout=nan"], "model.dropout", "model.dropout=nan must be in [0, 1)"),
    (["model.norm_eps=0"], "model.norm_eps", "model.norm_eps=0.0 must be finite and > 0"),
    (["model.init_std=-0.1"], "model.init_std", "model.init_std=-0.1 must be finite and > 0"),
    (["model.init_std=inf"], "model.init_std", "model.init_std=inf must be finite and > 0"),
    (["model.concept_init_std=0"], "model.concept_init_std", "model.concept_init_std=0.0 must be finite and > 0"),
    (["model.config_version=3"], "model.config_version", "model.config_version=3 must be 2"),
    (["model.backbone.num_layers=-1"], "model.backbone.num_layers", "model.backbone.num_layers=-1 must be >= 0"),
    ([BACKBONE, "model.backbone.hidden_size=0"], "model.backbone.hidden_size",
     "model.backbone.hidden_size=0 must be positive"),
    ([BACKBONE, "model.backbone.num_heads=0"], "model.backbone.num_heads",
     "model.backbone.num_heads=0 must be positive"),
    ([BACKBONE, "model.backbone.num_kv_heads=0"], "model.backbone.num_kv_heads",
     "model.backbone.num_kv_heads=0 must be positive"),
    (["model.backbone.intermediate_size=0"], "model.backbone.intermediate_size",
     "model.backbone.intermediate_size=0 must be positive"),
    (["model.backbone.rope_theta=nan"], "model.backbone.rope_theta", "model.backbone.rope_theta=nan must be finite"),
    (["model.backbone.norm_eps=-1"], "model.backbone.norm_eps", "model.backbone.norm_eps=-1.0 must be finite and > 0"),
    (["model.backbone.num_layers=1", "model.backbone.num_heads=8", "model.backbone.num_kv_heads=4",
      "model.backbone.source_layers=[-1]"], "model.backbone.source_layers",
     "model.backbone.source_layers=[-1] must be a list of layer indices >= 0"),
    (["objective.ce_chunk_size=0"], "objective.ce_chunk_size", "objective.ce_chunk_size=0 must be positive"),
    (["objective.masking.rate=0"], "objective.masking.rate", "objective.masking.rate=0.0 must be in (0, 1)"),
    (["objective.masking.rate=nan"], "objective.masking.rate", "objective.masking.rate=nan must be in (0, 1)"),
    (["objective.masking.mask_prob=-0.1"], "objective.masking.mask_prob",
     "objective.masking.mask_prob=-0.1 must be in [0, 1]"),
    (["objective.masking.random_prob=nan"], "objective.masking.random_prob",
     "objective.masking.random_prob=nan must be in [0, 1]"),
    (["objective.masking.schedule=linear", "objective.masking.final_rate=1"], "objective.masking.final_rate",
     "objective.masking.final_rate=1.0 must be in (0, 1) (or null)"),
    (["objective.masking.schedule_steps=-1"], "objective.masking.schedule_steps",
     "objective.masking.schedule_steps=-1 must be >= 0"),
    (["objective.terms.mlm={weight: .nan}"], "objective.terms", "objective.terms.mlm.weight=nan must be finite"),
    (["objective.weighting.scheme=uncertainty", "objective.weighting.options={init_log_var: .inf}"],
     "objective.weighting.options", "objective.weighting.options.init_log_var=inf must be finite"),
    (["objective.masking.strategy=span", "objective.masking.options={p: .nan}"], "objective.masking.options",
     "objective.masking.options.p=nan must be finite"),
    (["data.num_workers=-1"], "data.num_workers", "data.num_workers=-1 must be >= 0"),
    (["train.max_steps=0"], "train.max_steps", "train.max_steps=0 must be positive"),
    (["train.micro_batch_size=0"], "train.micro_batch_size", "train.micro_batch_size=0 must be positive"),
    (["train.grad_accum_steps=0"], "train.grad_accum_steps", "train.grad_accum_steps=0 must be positive"),
    (["train.lr=nan"], "train.lr", "train.lr=nan must be finite and > 0"),
    (["train.lr=inf"], "train.lr", "train.lr=inf must be finite and > 0"),
    (["train.lr=0"], "train.lr", "train.lr=0.0 must be finite and > 0"),
    (["train.min_lr_ratio=1.5"], "train.min_lr_ratio", "train.min_lr_ratio=1.5 must be in [0, 1]"),
    (["train.min_lr_ratio=nan"], "train.min_lr_ratio", "train.min_lr_ratio=nan must be in [0, 1]"),
    (["train.warmup_steps=-1"], "train.warmup_steps", "train.warmup_steps=-1 must be >= 0"),
    (["train.weight_decay=nan"], "train.weight_decay", "train.weight_decay=nan must be finite and >= 0"),
    (["train.weight_decay=-0.01"], "train.weight_decay", "train.weight_decay=-0.01 must be finite and >= 0"),
    (["train.betas=[0.9,1.0]"], "train.betas", "train.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
    (["train.betas=[0.9,.nan]"], "train.betas", "train.betas=[0.9, nan] must be two numbers in [0, 1)"),
    (["train.grad_clip=nan"], "train.grad_clip", "train.grad_clip=nan must be finite and >= 0"),
    (["train.grad_clip=-1"], "train.grad_clip", "train.grad_clip=-1.0 must be finite and >= 0"),
    (["train.log_interval=0"], "train.log_interval", "train.log_interval=0 must be positive"),
    (["train.backbone_lr_mult=inf"], "train.backbone_lr_mult", "train.backbone_lr_mult=inf must be finite and > 0"),
    (["train.backbone_freeze_steps=-1"], "train.backbone_freeze_steps", "train.backbone_freeze_steps=-1 must be >= 0"),
    (["train.peak_tflops=nan"], "train.peak_tflops", "train.peak_tflops=nan must be finite and >= 0"),
    (["guard.max_consecutive_skips=-1"], "guard.max_consecutive_skips", "guard.max_consecutive_skips=-1 must be >= 0"),
    (["guard.max_total_skips=-1"], "guard.max_total_skips", "guard.max_total_skips=-1 must be >= 0"),
    (["guard.spike_factor=1"], "guard.spike_factor", "guard.spike_factor=1.0 must be 0 (off) or finite and > 1"),
    (["guard.spike_factor=nan"], "guard.spike_factor", "guard.spike_factor=nan must be 0 (off) or finite and > 1"),
    (["guard.spike_factor=-2"], "guard.spike_factor", "guard.spike_factor=-2.0 must be 0 (off) or finite and > 1"),
    (["guard.spike_window=0"], "guard.spike_window", "guard.spike_window=0 must be positive"),
    (["parallel.tensor=0"], "parallel.tensor", "parallel.tensor=0 must be positive"),
    (["parallel.pipeline=0"], "parallel.pipeline", "parallel.pipeline=0 must be positive"),
    (["analysis.unigram_tokens=-1"], "analysis.unigram_tokens", "analysis.unigram_tokens=-1 must be >= 0"),
    (["parallel.vocab_multiple=0"], "parallel.vocab_multiple", "parallel.vocab_multiple=0 must be positive"),
    (["checkpoint.interval=0"], "checkpoint.interval", "checkpoint.interval=0 must be positive"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last", "checkpoint.keep_last=0 must be positive"),
    # analysis.* keep the one message a CLI test pins (validate._analysis): "must be" once, then each range.
    (["analysis.interval=-1"], "analysis.interval", "analysis.interval=-1 must be >= 0 (0 = off)"),
    (["analysis.samples=1"], "analysis.samples", "analysis.samples=1 >= 2"),
    (["analysis.collapse_fraction=nan"], "analysis.collapse_fraction", "analysis.collapse_fraction=nan in [0, 1]"),
]


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


@pytest.mark.parametrize("overrides, key, fragment", ROWS, ids=[" ".join(r[0]) for r in ROWS])
def test_bad_value_is_one_line_naming_key_value_and_range(overrides: list[str], key: str, fragment: str) -> None:
    msg = _error(overrides)
    assert msg.startswith("invalid config: ") and "\n" not in msg, msg
    assert fragment in msg and key in msg, msg
    assert ";" not in msg, msg  # one bad value, one problem: the rules reading it were skipped


def test_all_violations_are_reported_together() -> None:
    msg = _error(["model.num_heads=0", "train.lr=nan", BACKBONE, "model.backbone.num_kv_heads=0",
                  "guard.spike_window=0"])
    for fragment in ("model.num_heads=0 must be positive", "train.lr=nan must be finite and > 0",
                     "model.backbone.num_kv_heads=0 must be positive", "guard.spike_window=0 must be positive"):
        assert fragment in msg, msg
    assert msg.count(";") == 3 and "\n" not in msg, msg


def _numeric_keys(schema: type, prefix: str = "") -> set[str]:
    """Dotted keys of every int/float field (also Optional and list of them; bool is not a number here)."""
    keys: set[str] = set()
    for f in fields(schema):
        hint: Any = get_type_hints(schema)[f.name]
        if is_dataclass(hint):
            keys |= _numeric_keys(hint, f"{prefix}{f.name}.")
            continue
        if get_origin(hint) is Union:
            hint = next(a for a in get_args(hint) if a is not type(None))
        if get_origin(hint) is list:
            hint = get_args(hint)[0]
        if hint in (int, float):
            keys.add(prefix + f.name)
    return keys


def test_every_numeric_field_has_a_range_and_a_row() -> None:
    numeric = _numeric_keys(RunConfig)
    assert numeric - set(RANGES) - CHECKED_BY_RULES == set(), "numeric fields without a range"
    assert set(RANGES) - numeric == set(), "ranges for keys that are not numeric fields"
    assert numeric - {key for _, key, _ in ROWS} == set(), "ranged keys without a bad-value row here"


def test_defaults_and_edges_are_accepted() -> None:
    load_config(None, ["guard.spike_factor=0", "guard.max_consecutive_skips=0", "model.backbone.num_layers=0",
                       "train.grad_clip=0", "train.betas=[0,0.999]", "objective.masking.mask_prob=1",
                       "objective.masking.random_prob=0", "train.min_lr_ratio=1", "data.num_workers=0"])


@pytest.mark.parametrize("overrides, fragments", [
    (["model.num_heads=0"], ["model.num_heads=0 must be positive"]),
    (["train.lr=nan", "guard.spike_factor=0.5"], ["train.lr=nan must be finite", "guard.spike_factor=0.5 must be 0"]),
    ([BACKBONE, "model.backbone.num_kv_heads=0"], ["model.backbone.num_kv_heads=0 must be positive"]),
])
def test_cli_refuses_before_writing_anything(tmp_path: Path, overrides: list[str], fragments: list[str]) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "launchers" / "pretrain.py"), f"run_dir={run_dir}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert all(f in errors[0] for f in fragments), errors[0]
    assert not run_dir.exists()
