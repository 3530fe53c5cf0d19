"""Shared pieces of the evaluation CLIs: loading an exported model, encoding text the way pretraining saw it,
seeds, and writing results (JSON + markdown) with the versions that produced them.

Only exported HF folders are read (never training internals): `AutoModel*` with `trust_remote_code=True`.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

EXPORT_FILES = ("config.json", "tokenizer_config.json")


class EvalError(ValueError):
    """A problem the user fixes from the one-line message (missing model, task or data)."""


def check_model_dir(model: str) -> Path:
    """An exported HF folder (config + tokenizer), or an EvalError naming what is missing."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EvalError(f"--model {model!r} is not a directory; pass an exported folder (python -m megaconcept.export)")
    missing = [name for name in EXPORT_FILES if not (path / name).is_file()]
    if missing:
        raise EvalError(f"--model {model!r} lacks {', '.join(missing)}; pass a folder written by megaconcept.export")
    return path


def check_length(model_dir: Path, max_length: int, pooling: str) -> None:
    """Learned positions (no backbone) and decoder pooling with learned position queries cap the input length
    (the model config's own `encoder_max_length` / `max_length`)."""
    from megaconcept.model.hf_configuration import MegaconceptConfig

    cfg = MegaconceptConfig.from_pretrained(str(model_dir)).to_model_config()
    limit = cfg.max_length if pooling == "decoder" else cfg.encoder_max_length
    if limit is not None and max_length > limit:
        why = ("the model has learned positions" if cfg.encoder_max_length is not None else
               "decoding every position (decoder pooling, qasper's span head) uses learned position queries")
        raise EvalError(f"--max-length {max_length} exceeds the model's max_position_embeddings {limit} ({why}); "
                        f"use --max-length {limit}")


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    # The exported config names its own classes (auto_map); the model is the one the user asked to score.
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    if tokenizer.eos_token_id is None:
        raise EvalError(f"{model_dir}: the tokenizer has no eos token; pretraining separated documents with it")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # what pretraining's tokenizer setup does too
    return tokenizer


def encode(tokenizer: Any, first: str, second: Optional[str], max_length: int) -> dict[str, list[int]]:
    """Text as pretraining saw it: each segment's tokens (no special tokens) followed by one eos, which is how
    packed shards separated documents. Pairs are two segments; the longer one is cut first to fit."""
    eos = tokenizer.eos_token_id
    a = tokenizer(first, add_special_tokens=False)["input_ids"]
    b = tokenizer(second, add_special_tokens=False)["input_ids"] if second is not None else None
    budget = max_length - (2 if b is not None else 1)
    if b is None:
        ids = a[:budget] + [eos]
    else:
        if len(a) + len(b) > budget:  # longest-first: the shorter keeps up to half, the longer the rest
            keep_short = min(len(a), len(b), budget // 2)
            a, b = (a[:budget - keep_short], b[:keep_short]) if len(a) >= len(b) else (a[:keep_short], b[:budget - keep_short])
        ids = a + [eos] + b + [eos]
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}


def parse_list(text: Optional[str], valid: Sequence[str], what: str) -> Optional[list[str]]:
    """`a,b,c` -> names, each checked against `valid` (None stays None = the default)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise EvalError(f"unknown {what} {', '.join(unknown) or '(none given)'}; valid: {', '.join(valid)}")
    return names


def parse_seeds(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--seeds {text!r} must be comma-separated integers, e.g. 1,2,3") from None
    if not seeds:
        raise EvalError("--seeds is empty; e.g. --seeds 1,2,3")
    return seeds


def versions(model_dir: Path) -> dict[str, str]:
    """What produced a result: library versions, the project commit, the model folder and the time."""
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "megaconcept_commit": commit or "unknown", "model": str(model_dir.resolve()),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


@dataclass
class Report:
    """A results file pair: `<out>/results.json` and `<out>/results.md` (markdown table + notes)."""

    out_dir: Path

    def write(self, payload: dict[str, Any], header: list[str], rows: list[list[str]], notes: list[str]) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "results.json").write_text(json.dumps(payload, indent=2))
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table += ["| " + " | ".join(row) + " |" for row in rows]
        (self.out_dir / "results.md").write_text("\n".join(table + [""] + [f"- {n}" for n in notes]) + "\n")
        return self.out_dir / "results.json"


def fmt(value: Optional[float], scale: float = 100.0) -> str:
    return "-" if value is None else f"{value * scale:.1f}"


def add_source_arguments(p: argparse.ArgumentParser, benchmark: str, local_layout: str, limit_help: str) -> None:
    """The arguments every evaluation CLI shares: model, results folder, data source, row cap."""
    p.add_argument("--model", required=True, help="exported HF folder (python -m megaconcept.export)")
    p.add_argument("--out", help=f"results folder (default evals_results/{benchmark}-<model name>)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir", help=f"local {benchmark} data: {local_layout}")
    source.add_argument("--stand-in", action="store_true", help="offline stand-ins derived from real data at run time")
    p.add_argument("--limit", type=int, help=limit_help)


def results_dir(args: argparse.Namespace, benchmark: str, model_dir: Path) -> Path:
    return Path(args.out or f"evals_results/{benchmark}-{model_dir.name}" + ("-standin" if args.stand_in else ""))


def run_header(benchmark: str, stand_in: bool, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The first keys of every results.json: what was scored, on which data, by which versions."""
    return {"benchmark": benchmark + (" (STAND-IN data)" if stand_in else ""), "versions": versions(model_dir),
            "args": vars(args)}


def standin_notes(stand_in: bool) -> list[str]:
    if not stand_in:
        return []
    from .standin_sources import STANDIN_NOTE

    return [STANDIN_NOTE]
