"""Generate or infill text with an exported model by iterative unmasking (masked diffusion).

    python -m megaconcept.generate --model HF_DIR --prompt "The river" --length 32 [--steps 32] [--seed 0]
    python -m megaconcept.generate --model HF_DIR --text "Paris is the [MASK] of [MASK]."   # infill

--prompt/--length appends `length` mask tokens to the prompt; --text fills every mask token it contains (the
tokenizer's own mask string). Both run MegaconceptForMaskedLM.infill (megaconcept.model.sampling): the same seed
gives the same text. Models trained with the diffusion objective (objective.terms.diffusion) are what this is
for; an MLM-trained model runs too, but was never trained to fill long masked runs.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from .model.sampling import REMASKING, InfillOptions


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megaconcept.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="exported model folder (python -m megaconcept.export)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text to continue with --length generated tokens")
    source.add_argument("--text", help="text whose mask tokens are filled in place")
    p.add_argument("--length", type=int, default=32, help="tokens to generate after --prompt (default 32)")
    p.add_argument("--steps", type=int, default=None, help="unmasking rounds (default: one per generated token)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = argmax (default); > 0 = sampling")
    p.add_argument("--block-length", type=int, default=None, help="fill left to right in blocks of this size")
    p.add_argument("--remasking", choices=REMASKING, default="low_confidence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="samples drawn in one batch (seeded together)")
    return p.parse_args(argv)


def load_inputs(model_dir: str):
    """(tokenizer, the model's max_length) from an exported folder, before the weights: bad requests fail fast."""
    from transformers import AutoConfig, AutoTokenizer

    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"{model_dir} has no config.json; pass a folder written by python -m megaconcept.export")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the tokenizer in {model_dir} has no mask token; generation fills mask tokens")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    return tokenizer, config.to_model_config().max_length


def input_ids(tokenizer, args: argparse.Namespace, max_length: Optional[int]) -> torch.Tensor:
    """(num_samples, N) ids: the prompt plus --length masks, or --text with its masks."""
    if args.prompt is not None:
        if args.length < 1:
            raise ValueError(f"--length={args.length} must be >= 1")
        ids = tokenizer(args.prompt, add_special_tokens=False)["input_ids"] + [tokenizer.mask_token_id] * args.length
    else:
        ids = tokenizer(args.text, add_special_tokens=False)["input_ids"]
        if tokenizer.mask_token_id not in ids:
            raise ValueError(f"--text contains no mask token; write {tokenizer.mask_token!r} where text is to be filled")
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"{len(ids)} tokens exceed the model's {max_length} positions; shorten the prompt or --length")
    return torch.tensor([ids] * args.num_samples)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        tokenizer, max_length = load_inputs(args.model)
        ids = input_ids(tokenizer, args, max_length)
        masked = int((ids[0] == tokenizer.mask_token_id).sum())
        options = InfillOptions(steps=masked if args.steps is None else args.steps, temperature=args.temperature,
                                block_length=args.block_length, remasking=args.remasking, seed=args.seed)
        from transformers import AutoModelForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(args.model, trust_remote_code=True).eval()
        out = model.infill(ids, tokenizer.mask_token_id, forbidden_ids=tokenizer.all_special_ids, **asdict(options))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in out:
        print(tokenizer.decode(row.tolist(), skip_special_tokens=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
