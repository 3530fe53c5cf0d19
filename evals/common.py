"""Shared pieces of the evaluation CLIs: checking and loading an exported model, encoding text the way
pretraining saw it, argument types, seeds, and writing results (JSON + markdown) with the versions that
produced them.

Only exported HF folders are read (never training internals). Their code runs (`trust_remote_code`) only when
`trust_remote_code()` says so: a folder megaconcept.export wrote, or any folder when the user passes
--trust-remote-code. Every problem the user can fix is an EvalError: `error: <one line>` on stderr, exit 2. A
bad value of one argument fails earlier, in its argparse type: `<prog>: error: argument --x: ...`, exit 2.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
from dataclasses import dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from megaconcept.model import ConceptModelConfig

EXPORT_FILES = ("config.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Below this an input holds next to nothing once its separators are in (a pair spends 2 on separator tokens).
MIN_LENGTH = 16
MAX_SEED = 2**32 - 1  # numpy's seeding, which transformers.set_seed calls, takes nothing larger
_HINT_WORDS = {int: "an integer", float: "a number", str: "text", bool: "true or false", Optional[int]: "an integer"}


class EvalError(ValueError):
    """A problem the user fixes from the one-line message (missing model, task or data)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (for messages about wrong field types)."""
    kinds = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "text"), (list, "an array"),
             (dict, "an object"))
    return "null" if value is None else next((name for kind, name in kinds if isinstance(value, kind)), "a value")


# ------------------------------------------------------------------------------------- argument types


def _integer(text: str, low: int, what: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}{what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, row caps, step counts)."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warmup steps, thread counts where 0 means the default)."""
    return _integer(text, 0)


def sequence_length(text: str) -> int:
    """argparse type: tokens per input, at least MIN_LENGTH."""
    return _integer(text, MIN_LENGTH, " tokens (room for text and its document separators)")


def finite_positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, epochs, memory caps); nan and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def output_dir(text: str) -> str:
    """argparse type: a results folder; refused up front when it names a file, not after the whole run."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return str(path)


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists (local data)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return str(path)


# ------------------------------------------------------------------------------------- model folders


def read_config(folder: Path) -> dict[str, Any]:
    """`folder/config.json` as a dict, or an EvalError naming the file and what is wrong with it."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise EvalError(f"{path} cannot be read ({exc.strerror or one_line(exc)})") from None
    except UnicodeDecodeError as exc:
        raise EvalError(f"{path} is not UTF-8 text (byte {exc.start + 1}); re-export the folder") from None
    except ValueError as exc:
        raise EvalError(f"{path} is not valid JSON ({one_line(exc)}); re-export the folder") from None
    if not isinstance(config, dict):
        raise EvalError(f"{path} holds {json_kind(config)}, not a JSON object of config fields")
    return config


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value suits a config field's type hint (int for float; an object for a nested section)."""
    kinds = [k for k in (get_args(hint) or (hint,)) if k is not type(None)]
    if isinstance(value, bool):  # JSON true is no number
        return bool in kinds
    # A parameterized hint (dict[str, Any]: decoder_options, bottleneck_options) checks against its origin type.
    kinds = [get_origin(k) or k for k in kinds]
    return any(isinstance(value, dict) if is_dataclass(k) else isinstance(value, (int, float) if k is float else k)
               for k in kinds)


def model_config(folder: Path) -> ConceptModelConfig:
    """The architecture in `folder/config.json`; a field of the wrong type is named (the model would fail somewhere
    deep inside its constructor otherwise)."""
    from megaconcept.model import ConceptModelConfig
    from megaconcept.model.hf_configuration import MegaconceptConfig

    config = read_config(folder)
    for name, hint in get_type_hints(ConceptModelConfig).items():
        if config.get(name) is not None and not _fits(config[name], hint):
            raise EvalError(f"{folder / 'config.json'}: {name} is {json_kind(config[name])} ({config[name]!r}), "
                            f"expected {_HINT_WORDS.get(hint, 'an object of its fields')}")
    try:
        return MegaconceptConfig.from_pretrained(str(folder)).to_model_config()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise EvalError(f"{folder / 'config.json'} is not a megaconcept model config ({one_line(exc)})") from None


def check_model_dir(model: str) -> Path:
    """An exported HF folder (a megaconcept config, tokenizer files), or an EvalError naming the folder and what is
    missing or broken. The weights are `check_weights`' job: some checks of the config come first."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EvalError(f"--model {model!r} is not a directory; pass an exported folder (python -m megaconcept.export)")
    missing = [name for name in EXPORT_FILES if not (path / name).is_file()]
    if missing:
        raise EvalError(f"--model {model!r} lacks {', '.join(missing)}; pass a folder written by megaconcept.export")
    exported_config(path)
    return path


def check_weights(model_dir: Path) -> None:
    """An EvalError unless the folder holds a weights file, so a folder without one fails before any data loads."""
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise EvalError(f"--model {str(model_dir)!r} lacks a weights file ({' or '.join(WEIGHT_FILES[::2])}); pass a "
                        f"folder written by megaconcept.export")


def exported_config(folder: Path) -> ConceptModelConfig:
    """`model_config` of a folder whose config.json declares the project's model_type (another model's config
    would be read as a concept encoder with default fields)."""
    from megaconcept.model.hf_configuration import MegaconceptConfig

    model_type = read_config(folder).get("model_type")
    if model_type != MegaconceptConfig.model_type:
        raise EvalError(f"{folder / 'config.json'} has model_type {model_type!r}, not "
                        f"{MegaconceptConfig.model_type!r}; the evals score concept encoders megaconcept.export writes")
    return model_config(folder)


def is_project_export(folder: Path) -> bool:
    """True when config.json says megaconcept.export wrote the folder: the project's model_type, and an auto_map
    naming only the project's own classes, each from a module file shipped in the folder itself (an auto_map
    entry may otherwise point at a hub repository's code, `user/repo--module.Class`)."""
    from megaconcept.export.hf_folder import AUTO_MAP
    from megaconcept.model.hf_configuration import MegaconceptConfig

    try:
        config = read_config(folder)
    except EvalError:
        return False
    auto_map = config.get("auto_map")
    if config.get("model_type") != MegaconceptConfig.model_type or not isinstance(auto_map, dict) or not auto_map:
        return False
    return all(AUTO_MAP.get(key) == ref and (folder / f"{ref.split('.')[0]}.py").is_file()
               for key, ref in auto_map.items())


def trust_remote_code(model: str | Path, allowed: bool) -> bool:
    """Whether loading `model` may run the code it ships: always with --trust-remote-code (`allowed`), else only
    for a local folder this project exported. A hub id runs someone else's code, so it needs the flag."""
    if allowed:
        return True
    folder = Path(model).expanduser()
    return folder.is_dir() and is_project_export(folder)


def check_length(model_dir: Path, max_length: int, pooling: str) -> None:
    """Learned positions (no backbone) and decoder pooling with learned position queries cap the input length
    (the model config's own `encoder_max_length` / `max_length`)."""
    cfg = model_config(model_dir)
    limit = cfg.max_length if pooling == "decoder" else cfg.encoder_max_length
    if limit is not None and max_length > limit:
        why = ("the model has learned positions" if cfg.encoder_max_length is not None else
               "decoding every position (decoder pooling, qasper's span head) uses learned position queries")
        raise EvalError(f"--max-length {max_length} exceeds the model's max_position_embeddings {limit} ({why}); "
                        f"use --max-length {limit}")


def load_tokenizer(model_dir: Path, trust: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust)
    except Exception as exc:  # json, tokenizers' Rust core, sentencepiece: a damaged file fails with unrelated types
        why = one_line(exc)
        raise EvalError(f"{model_dir}: its tokenizer cannot be loaded ({why}); re-export the folder") from None
    from megaconcept.data.vocab import document_separator

    found = document_separator(tokenizer)
    if found is None:
        raise EvalError(f"{model_dir}: the tokenizer has no document separator (no eos, no sep, none recorded); "
                        "pretraining ended documents with one: export a checkpoint trained on data_prep shards")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or found[0]  # what pretraining's tokenizer setup does too
    return tokenizer


def separator_id(tokenizer: Any) -> int:
    """The id pretraining ended every document with (eos, BERT's [SEP], or the shards' --separator-token, which
    the exported tokenizer records); pair inputs put it after each segment."""
    from megaconcept.data.vocab import document_separator

    found = document_separator(tokenizer)
    if found is None:
        raise EvalError(f"{tokenizer.name_or_path}: the tokenizer has no document separator (no eos, no sep, none "
                        "recorded); load it with evals.common.load_tokenizer")
    return found[1]


def load_model(auto_class: str, model_dir: Path, trust: bool, **kwargs: Any) -> Any:
    """`transformers.<auto_class>.from_pretrained(model_dir, ...)`; a folder that does not load is one EvalError."""
    import transformers
    from safetensors import SafetensorError

    try:
        return getattr(transformers, auto_class).from_pretrained(str(model_dir), trust_remote_code=trust, **kwargs)
    except (OSError, ValueError, RuntimeError, ImportError, SafetensorError) as exc:
        if not trust and "trust_remote_code" in str(exc):
            message = (f"{model_dir} was not exported by megaconcept (its config.json does not map to the project's "
                       f"code shipped in the folder); pass --trust-remote-code to run its code")
        else:
            message = f"{model_dir}: {auto_class} cannot load it ({one_line(exc)}); re-export the folder"
        raise EvalError(message) from None


def encode(tokenizer: Any, first: str, second: Optional[str], max_length: int) -> dict[str, list[int]]:
    """Text as pretraining saw it: each segment's tokens (no special tokens) followed by one separator (eos, or
    BERT's [SEP]: `separator_id`), which is how packed shards separated documents. Pairs are two segments
    (`a <sep> b <sep>`); the longer one is cut first to fit."""
    sep = separator_id(tokenizer)
    a = tokenizer(first, add_special_tokens=False)["input_ids"]
    b = tokenizer(second, add_special_tokens=False)["input_ids"] if second is not None else None
    budget = max_length - (2 if b is not None else 1)
    if b is None:
        ids = a[:budget] + [sep]
    else:
        if len(a) + len(b) > budget:  # longest-first: the shorter keeps up to half, the longer the rest
            keep_short = min(len(a), len(b), budget // 2)
            a, b = (a[:budget - keep_short], b[:keep_short]) if len(a) >= len(b) else (a[:keep_short], b[:budget - keep_short])
        ids = a + [sep] + b + [sep]
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
    """`1,2,3` -> distinct seeds in 1..MAX_SEED (a repeated seed would count one run twice in the median)."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--seeds {text!r} must be comma-separated integers, e.g. 1,2,3") from None
    if not seeds:
        raise EvalError("--seeds is empty; e.g. --seeds 1,2,3")
    bad = [s for s in seeds if not 1 <= s <= MAX_SEED]
    if bad:
        raise EvalError(f"--seeds {text!r}: seed {bad[0]} is outside 1..{MAX_SEED}")
    repeated = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    if repeated:
        raise EvalError(f"--seeds {text!r} repeats seed {repeated[0]}; each seed is one run")
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


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model and --trust-remote-code, for every CLI that loads an exported model."""
    p.add_argument("--model", required=True, help="exported HF folder (python -m megaconcept.export)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the code a model folder ships even when megaconcept.export did not write it "
                        "(a project export's own code runs without this flag)")


def add_source_arguments(p: argparse.ArgumentParser, benchmark: str, local_layout: str, limit_help: str) -> None:
    """The arguments every benchmark CLI shares: model, results folder, data source, row cap."""
    add_model_arguments(p)
    p.add_argument("--out", type=output_dir, help=f"results folder (default evals_results/{benchmark}-<model name>)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=existing_dir, help=f"local {benchmark} data: {local_layout}")
    source.add_argument("--stand-in", action="store_true", help="offline stand-ins derived from real data at run time")
    p.add_argument("--limit", type=positive_int, help=limit_help)


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
